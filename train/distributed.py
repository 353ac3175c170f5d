"""Process-group setup that works the same under every launcher (names from train/launch_env.py)."""

from __future__ import annotations

import contextlib
import io
import logging
import os
import socket
import sysconfig
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist

from train import cpu_shm_collectives
from train.launch_env import DistEnv, resolve_env


def init_distributed(timeout_s: float = 1800.0, deepspeed_log: Path | None = None) -> DistEnv:
    """Export the resolved names and start DeepSpeed's process group: NCCL on GPUs, gloo on CPU.

    On CPU with every rank on one machine, ZeRO-3's reduce-scatter and all-gather then go through
    DeepSpeed's shared-memory kernel instead of gloo (train/cpu_shm_collectives.py). GPUs get
    plain NCCL. With `deepspeed_log`, what DeepSpeed prints and logs for itself (a line per rank as its
    op loads, warnings about the optimizer) goes to that file rather than the console.
    """
    dist_env = resolve_env()
    put_environments_ninja_first()
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
        # where each task sees only its own GPU (srun --gpus-per-task=1), that GPU is device 0 for DeepSpeed too
        device = cuda_device_index(dist_env.local_rank, torch.cuda.device_count())
        os.environ["LOCAL_RANK"] = str(device)
        torch.cuda.set_device(device)
    with _deepspeed_output(deepspeed_log, dist_env.rank):
        deepspeed.init_distributed(dist_backend="gloo" if on_cpu else "nccl", auto_mpi_discovery=False,
                                   timeout=timedelta(seconds=timeout_s))
    global _collectives
    _collectives = "nccl" if not on_cpu else (
        "shared memory (DeepSpeed's kernel) for ZeRO-3's reduce-scatter and all-gather, gloo otherwise"
        if cpu_shm_collectives.install(ds_comm.cdb) else "gloo")
    return dist_env


_collectives = "none: one process"


@contextlib.contextmanager
def _deepspeed_output(log_file: Path | None, rank: int) -> Iterator[None]:
    """DeepSpeed's logger, from now on, and its prints inside this block, into `log_file` (appended, each line
    marked with the rank); nothing changes without a file."""
    if log_file is None:
        yield
        return
    from deepspeed.utils import logger as deepspeed_logger

    log_file.parent.mkdir(parents=True, exist_ok=True)
    handler = logging.FileHandler(log_file)
    handler.setFormatter(logging.Formatter(f"%(asctime)s [rank{rank}] %(levelname)s %(message)s"))
    for old in list(deepspeed_logger.handlers):
        deepspeed_logger.removeHandler(old)
    deepspeed_logger.addHandler(handler)
    printed = io.StringIO()
    try:
        with contextlib.redirect_stdout(printed):
            yield
    finally:
        with open(log_file, "a") as log:
            log.writelines(f"[rank{rank}] {line}\n" for line in printed.getvalue().splitlines())


def cuda_device_index(local_rank: int, visible_devices: int) -> int:
    """The GPU of a rank among those its process sees: its local rank where the node's GPUs are all visible,
    the one it sees where Slurm gave each task its own."""
    return local_rank % max(visible_devices, 1)


def put_environments_ninja_first() -> None:
    """Put this environment's scripts folder, with the ninja it pins, first on PATH, for DeepSpeed's JIT ops.

    torch's extension loader runs the first `ninja` on PATH against one build log per op in
    TORCH_EXTENSIONS_DIR. A venv's python started without activating the venv (the Makefile, tests,
    `srun .venv/bin/python`) finds the system's ninja, where there is one, or none; an activated one
    (slurm/pretrain.sh) finds the pinned one. Two ninja versions hash build commands differently, so
    each reads the other's log as changed commands and rebuilds the op in front of the first step.
    """
    scripts = sysconfig.get_path("scripts")
    path = os.environ.get("PATH", "")
    if os.path.exists(os.path.join(scripts, "ninja")) and path.split(os.pathsep)[0] != scripts:
        os.environ["PATH"] = os.pathsep.join([scripts, path]) if path else scripts


def collectives() -> str:
    """What the process group's collectives run on, for the log (the shared-memory kernel only when every
    rank is on this machine)."""
    return _collectives


def rank_hosts(world_size: int) -> str:
    """`rank@host` of every rank (collective), e.g. `0@node1, 1@node2`."""
    return ", ".join(f"{rank}@{host}" for rank, host in enumerate(gather_objects(socket.gethostname(), world_size)))


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


def engine_device(engine: Any) -> torch.device:
    """Where an engine's module computes, so where its inputs go: DeepSpeed's `engine.forward` passes them on
    unmoved, so a host batch would reach a GPU model as it is."""
    device = getattr(engine, "device", None)
    return torch.device(device) if device is not None else accelerator()


def on_any_rank(flag: bool) -> bool:
    """True on every rank if `flag` is true on any (collective): a decision all ranks take alike."""
    if not dist.is_initialized():
        return flag
    found = torch.tensor([float(flag)], device=accelerator())
    dist.all_reduce(found, op=dist.ReduceOp.MAX)
    return bool(found.item())


def mean_across_ranks(values: torch.Tensor) -> torch.Tensor:
    """The mean of a per-rank tensor, on every rank (collective), so all ranks take the same decisions.

    Stays on the device: nothing waits for the result until someone reads it.
    """
    values = values.to(accelerator(), torch.float64, copy=True)  # the caller's tensor is left alone
    if dist.is_initialized():
        dist.all_reduce(values)
        values /= dist.get_world_size()
    return values


def threads_per_rank(setting: int | None, world_size: int) -> int:
    """`train.threads_per_rank` (`setting`), or this process's CPUs shared among the ranks on its node."""
    if setting:
        return int(setting)
    local_ranks = int(os.environ.get("LOCAL_WORLD_SIZE") or os.environ.get("SLURM_NTASKS_PER_NODE") or world_size)
    return max(1, len(os.sched_getaffinity(0)) // max(local_ranks, 1))
