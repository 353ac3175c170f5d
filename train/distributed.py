"""Process-group setup that works the same under every launcher.

The trainer runs as one process, under the `deepspeed` launcher, under `torchrun`, and under
Slurm's `srun`. The first three export RANK/WORLD_SIZE/LOCAL_RANK/MASTER_*; `srun` exports only
SLURM_* variables, so they are translated here before DeepSpeed reads the usual names.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist

from train import cpu_shm_collectives


@dataclass(frozen=True)
class DistEnv:
    rank: int
    world_size: int
    local_rank: int
    master_addr: str
    master_port: int


def _first_host(nodelist: str) -> str:
    result = subprocess.run(["scontrol", "show", "hostnames", nodelist], capture_output=True, text=True)
    hosts = result.stdout.split()
    if result.returncode != 0 or not hosts:
        raise RuntimeError(f"cannot expand SLURM_JOB_NODELIST={nodelist!r} with scontrol: {result.stderr.strip()}")
    return hosts[0]


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def resolve_env(environ: dict[str, str] | None = None) -> DistEnv:
    """Rank, world size and rendezvous from the launcher's environment (launcher names win over Slurm's).

    Under srun without a launcher, the port derives from the job id so that two jobs sharing a node
    do not collide.
    """
    env = os.environ if environ is None else environ
    if "RANK" in env and "WORLD_SIZE" in env:
        rank, world_size = int(env["RANK"]), int(env["WORLD_SIZE"])
        local_rank = int(env.get("LOCAL_RANK", rank))
    elif "SLURM_PROCID" in env and "SLURM_NTASKS" in env:
        rank, world_size = int(env["SLURM_PROCID"]), int(env["SLURM_NTASKS"])
        local_rank = int(env.get("SLURM_LOCALID", 0))
    else:
        rank, world_size, local_rank = 0, 1, 0
    if "MASTER_ADDR" in env:
        master_addr = env["MASTER_ADDR"]
    elif "SLURM_JOB_NODELIST" in env and world_size > 1:
        master_addr = _first_host(env["SLURM_JOB_NODELIST"])
    else:
        master_addr = "127.0.0.1"
    if "MASTER_PORT" in env:
        master_port = int(env["MASTER_PORT"])
    elif "SLURM_JOB_ID" in env and world_size > 1:
        master_port = 20000 + int(env["SLURM_JOB_ID"]) % 20000
    elif world_size == 1:
        master_port = _free_port()  # a lone process needs no agreed port; a fixed one may be taken
    else:
        master_port = 29500
    return DistEnv(rank, world_size, local_rank, master_addr, master_port)


def strip_launcher_args() -> None:
    """The `deepspeed` launcher appends `--local_rank=N`, which Hydra would reject as an override."""
    for arg in list(sys.argv[1:]):
        if arg.startswith("--local_rank"):
            sys.argv.remove(arg)
            os.environ.setdefault("LOCAL_RANK", arg.split("=", 1)[1] if "=" in arg else "0")


def init_distributed() -> DistEnv:
    """Export the resolved names and start DeepSpeed's process group: NCCL on GPUs, gloo on CPU.

    On CPU with every rank on one machine, ZeRO-3's reduce-scatter and all-gather then go through
    DeepSpeed's shared-memory kernel instead of gloo (train/cpu_shm_collectives.py). GPUs get
    plain NCCL.
    """
    dist_env = resolve_env()
    os.environ.update(
        RANK=str(dist_env.rank),
        WORLD_SIZE=str(dist_env.world_size),
        LOCAL_RANK=str(dist_env.local_rank),
        MASTER_ADDR=dist_env.master_addr,
        MASTER_PORT=str(dist_env.master_port),
    )
    on_cpu = not torch.cuda.is_available()
    if on_cpu:
        os.environ.setdefault("DS_ACCELERATOR", "cpu")
        if cpu_shm_collectives.ranks_share_one_machine(dist_env.world_size):
            os.environ.setdefault("LOCAL_SIZE", str(dist_env.world_size))  # starts DeepSpeed's shm kernel
    import deepspeed
    from deepspeed.comm import comm as ds_comm

    if not on_cpu:
        torch.cuda.set_device(dist_env.local_rank)
    deepspeed.init_distributed(dist_backend="gloo" if on_cpu else "nccl", auto_mpi_discovery=False)
    if on_cpu:
        cpu_shm_collectives.install(ds_comm.cdb)
    return dist_env


def gather_objects(obj: Any, world_size: int) -> list[Any]:
    """Every rank's `obj`, in rank order, on every rank (collective)."""
    if world_size == 1:
        return [obj]
    out: list[Any] = [None] * world_size
    dist.all_gather_object(out, obj)
    return out


def accelerator() -> torch.device:
    """Where this rank computes, and so where its collectives' tensors live: its GPU under NCCL, else the CPU."""
    return torch.device("cuda", torch.cuda.current_device()) if torch.cuda.is_available() else torch.device("cpu")


def mean_across_ranks(values: torch.Tensor) -> torch.Tensor:
    """The mean of a per-rank tensor, on every rank (collective), so all ranks take the same decisions.

    Stays on the device: nothing waits for the result until someone reads it.
    """
    values = values.to(accelerator(), torch.float64, copy=True)  # the caller's tensor is left alone
    if dist.is_initialized():
        dist.all_reduce(values)
        values /= dist.get_world_size()
    return values


def threads_per_rank(cfg: Any, world_size: int) -> int:
    """`train.threads_per_rank`, or this process's CPUs shared among the ranks on its node."""
    if cfg.train.threads_per_rank:
        return int(cfg.train.threads_per_rank)
    local_ranks = int(os.environ.get("LOCAL_WORLD_SIZE") or os.environ.get("SLURM_NTASKS_PER_NODE") or world_size)
    return max(1, len(os.sched_getaffinity(0)) // max(local_ranks, 1))
