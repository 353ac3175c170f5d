"""Rank, world size and rendezvous under every launcher, read without importing torch.

The trainer runs as one process, under the `deepspeed` launcher, under `torchrun`, and under
Slurm's `srun`. The first three export RANK/WORLD_SIZE/LOCAL_RANK/MASTER_*; `srun` exports only
SLURM_* variables, so they are translated here before DeepSpeed reads the usual names. Kept free of
torch so that the checks before training (train/preflight.py) know which rank they run on at once.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from dataclasses import dataclass


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
