#!/usr/bin/env bash
# Submit a curation run from a login node:   sbatch slurm/curate.sh [hydra overrides]
#   sbatch slurm/curate.sh only=[commoncrawl] sources.commoncrawl.input='/data/cc/*.warc.gz'
# This small job only plans the run and submits it: datatrove then queues every stage as its own
# array job, chained by Slurm dependencies (conf/executor/slurm.yaml: partition, time, cpus, mem).
#SBATCH --job-name=curate-submit
#SBATCH --ntasks=1
#SBATCH --cpus-per-task=1
#SBATCH --mem=2G
#SBATCH --time=00:30:00
#SBATCH --output=slurm-curate-submit-%j.out
set -euo pipefail
cd "${SLURM_SUBMIT_DIR:-$(dirname "$0")/..}"
PYTHON=${GPTPIPE_PYTHON:-.venv/bin/python}
# The array jobs datatrove submits from here inherit this job's environment; Slurm's memory
# variables of this small job would clash with their own --mem-per-cpu (srun refuses both).
unset SLURM_MEM_PER_NODE SLURM_MEM_PER_CPU SLURM_MEM_PER_GPU
exec "$PYTHON" -m curation.run executor=slurm "$@"
