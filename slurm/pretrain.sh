#!/bin/bash
# Pretraining on Slurm:   sbatch slurm/pretrain.sh [hydra overrides]
#   e.g. sbatch --nodes=4 slurm/pretrain.sh model=gpt3-small mixture=gpt3 run_dir=/lustre/me/runs/gpt3-small
#
# What to edit for a real cluster (nothing else needs editing):
#   - partition / account: uncomment and fill the two lines below;
#   - GPUs: one rank per GPU. Give them on the command line or here:
#       sbatch --nodes=64 --ntasks-per-node=8 --gpus-per-node=8 --cpus-per-task=12 slurm/pretrain.sh ...
#     (--cpus-per-task: the node's cores over its GPUs). Each rank takes the GPU of its local rank, or the
#     one GPU it sees where Slurm gives each task its own (--gpus-per-task=1);
#   - --time and the USR1 grace period (seconds before the limit to checkpoint): one step plus one
#     checkpoint write; `python -m train.plan <the same overrides> cluster.nodes=...` prints both;
#   - the environment: GPTPIPE_VENV (default: .venv in the directory you submit from).
# Before spending the allocation: `python -m train.plan model=... cluster.nodes=N cluster.gpus_per_node=8
# cluster.gpu_memory_gb=80`; with cluster.gpu_memory_gb set, the trainer itself refuses a run that cannot fit.
#
# On GPU nodes this script sets TORCH_NCCL_ASYNC_ERROR_HANDLING=1 (a failed NCCL collective raises instead
# of hanging) and binds each rank to cores (--cpu-bind=cores). Site-specific NCCL settings belong in the
# environment you submit from, e.g. NCCL_SOCKET_IFNAME=<the fabric's interface> and NCCL_IB_HCA=<its HCAs>
# on InfiniBand clusters; NCCL_DEBUG=INFO shows the transport NCCL chose.
# The defaults run the demo configuration (model=tiny, mixture=demo) with 2 CPU ranks on the
# local one-node cluster (slurm/local-cluster.sh up).
#
# Preemption and time limits: Slurm sends SIGUSR1 <grace> seconds before the limit (and SIGTERM
# on preemption); every rank finishes its step, a checkpoint is written, the trainer exits 75 and
# this script requeues the job, which resumes from that checkpoint into the same wandb run.
# A job that dies hard is resubmitted with the same command and resumes from the newest
# complete checkpoint.
#
#SBATCH --job-name=gptpipe-pretrain
#SBATCH --nodes=1
#SBATCH --ntasks-per-node=2
#SBATCH --cpus-per-task=1
##SBATCH --gpus-per-node=8
##SBATCH --partition=YOUR_PARTITION
##SBATCH --account=YOUR_ACCOUNT
#SBATCH --time=24:00:00
#SBATCH --requeue
#SBATCH --signal=USR1@120
#SBATCH --open-mode=append
#SBATCH --output=%x-%j.out
set -uo pipefail

GPTPIPE_HOME=${GPTPIPE_HOME:-${SLURM_SUBMIT_DIR:-$PWD}}
cd "$GPTPIPE_HOME" || exit 1
# shellcheck disable=SC1091
source "${GPTPIPE_VENV:-$GPTPIPE_HOME/.venv}/bin/activate"

RUN_DIR=$(python -m train --cfg job --resolve "$@" | sed -n 's/^run_dir: //p')
[ -n "$RUN_DIR" ] || { echo "pretrain.sh: could not resolve run_dir from the overrides: $*" >&2; exit 2; }
mkdir -p "$RUN_DIR/logs"
echo "pretrain.sh: job $SLURM_JOB_ID (restart ${SLURM_RESTART_COUNT:-0}) logs to $RUN_DIR/logs/slurm-$SLURM_JOB_ID.out"
exec >>"$RUN_DIR/logs/slurm-$SLURM_JOB_ID.out" 2>&1
echo "=== $(date -Is) job $SLURM_JOB_ID restart ${SLURM_RESTART_COUNT:-0} on $SLURM_JOB_NODELIST: $*"

export MASTER_ADDR=${MASTER_ADDR:-$(scontrol show hostnames "$SLURM_JOB_NODELIST" | head -n1)}
export MASTER_PORT=${MASTER_PORT:-$((20000 + SLURM_JOB_ID % 20000))}
export OMP_NUM_THREADS=${SLURM_CPUS_PER_TASK:-1}
if command -v nvidia-smi >/dev/null 2>&1; then
    export TORCH_NCCL_ASYNC_ERROR_HANDLING=${TORCH_NCCL_ASYNC_ERROR_HANDLING:-1}
    CPU_BIND=${GPTPIPE_CPU_BIND:-cores}
else
    export DS_ACCELERATOR=cpu
    CPU_BIND=${GPTPIPE_CPU_BIND:-none}  # the local cluster's ranks share the machine's cores
fi
export WANDB_MODE=${WANDB_MODE:-offline}

# srun runs in the background so that a signal sent to this batch shell alone (scancel --batch)
# is forwarded to the ranks instead of killing the shell.
srun --kill-on-bad-exit=1 --cpu-bind="$CPU_BIND" python -m train "$@" &
SRUN_PID=$!
forward() { echo "pretrain.sh: got SIG$1, forwarding to the ranks"; kill -s "$1" "$SRUN_PID" 2>/dev/null; }
trap 'forward USR1' USR1
trap 'forward TERM' TERM
status=0
while true; do
    wait "$SRUN_PID"
    status=$?
    # wait returns >128 when a trapped signal interrupted it; the step is still running then.
    kill -0 "$SRUN_PID" 2>/dev/null || break
done
trap - USR1 TERM

# The trainer leaves REQUEUE in the run dir (and exits 75) when it stopped early for a signal;
# the marker matters because srun may report another status once it reaps the other ranks.
if [ "$status" -eq 75 ] || [ -f "$RUN_DIR/REQUEUE" ]; then
    rm -f "$RUN_DIR/REQUEUE"
    echo "pretrain.sh: checkpoint written before the stop; requeueing job $SLURM_JOB_ID"
    scontrol requeue "$SLURM_JOB_ID"
    exit 0
fi
echo "pretrain.sh: training exited with status $status"
exit "$status"
