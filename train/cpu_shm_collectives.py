"""CPU only: ZeRO-3's gradient reduce-scatter and parameter all-gather over shared memory, when all ranks share one machine.

On CPU, DeepSpeed runs its collectives over gloo, whose loopback TCP is slow for the large flat
buffers ZeRO-3 moves, while DeepSpeed's own shared-memory all-reduce kernel (built on CPU for
`inference_all_reduce`) sums a whole buffer in a fraction of that time (bench/train.py measures
the trainer with it). A reduce-scatter is then that all-reduce followed by taking this rank's
chunk, and an all-gather is an all-reduce of a buffer that is zero outside this rank's chunk
(x + 0 is exact). Everything else, and every case the kernel cannot take (another device, a
subgroup, a dtype or reduce op it lacks, ranks on several machines), stays on the process group.
On GPUs none of this is installed: ZeRO-3 uses NCCL as it is (train/distributed.py).

Plugged in the way DeepSpeed plugs its own ROCm SDMA all-gather in: by replacing the two methods on
its communication backend, so ZeRO-3's code paths are unchanged.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist

# The kernel reduces fp32 with AVX2 (level 1) and bf16/fp16 with AVX512-BW (level 2), as its
# `vector_kernel_level()` reports.
_KERNEL_LEVEL_FOR = {torch.float32: 1, torch.bfloat16: 2, torch.float16: 2}


def ranks_share_one_machine(world_size: int, environ: dict[str, str] | None = None) -> bool:
    """Whether the launcher placed every rank on this node (DeepSpeed, torchrun or Slurm's own names)."""
    env = os.environ if environ is None else environ
    for name in ("LOCAL_SIZE", "LOCAL_WORLD_SIZE", "SLURM_NTASKS_PER_NODE"):
        if env.get(name, "").isdigit():
            return int(env[name]) == world_size
    return env.get("SLURM_JOB_NUM_NODES") == "1" or world_size == 1


class _Completed:
    """The handle of a collective that has already finished: DeepSpeed waits on the all-gathers it launches."""

    def wait(self, *args: Any, **kwargs: Any) -> bool:
        return True

    def is_completed(self) -> bool:
        return True


def unlink_kernel_buffer() -> None:
    """Remove this rank's shared-memory segment name once every rank has mapped every segment.

    DeepSpeed's kernel creates /dev/shm/deepspeed_allreduce_buffer_<uid>_<addr>_<port>_<rank> (~50 MB)
    and never unlinks it, so each run on a node left its buffers behind until /dev/shm filled.
    Unlinked, the mappings live on and the memory is freed when the ranks exit, however they exit.
    """
    name = Path("/dev/shm") / "_".join(("deepspeed_allreduce_buffer", str(os.getuid()), os.environ.get("MASTER_ADDR", ""),
                                        os.environ.get("MASTER_PORT", ""), str(dist.get_rank())))
    if _kernel_started():
        dist.barrier()  # every rank has returned from the kernel's setup, which maps all the segments
        name.unlink(missing_ok=True)


def install(backend: Any) -> bool:
    """Route `backend`'s reduce_scatter_tensor and all_gather_into_tensor through the shared-memory all-reduce.

    `backend` is DeepSpeed's communication backend (`deepspeed.comm.comm.cdb`) after
    `deepspeed.init_distributed`, which starts the kernel when LOCAL_SIZE equals the world size.
    Returns whether it did; when the kernel is missing it leaves the backend alone.
    """
    unlink_kernel_buffer()
    kernel = getattr(backend, "shm_comm_op", None)
    all_reduce = getattr(getattr(torch.ops, "deepspeed", None), "inference_all_reduce_", None)
    world_size = dist.get_world_size()
    if kernel is None or all_reduce is None or world_size < 2 or not _kernel_started():
        return False
    level, rank = kernel.vector_kernel_level(), dist.get_rank()
    group_reduce_scatter, group_all_gather = backend.reduce_scatter_tensor, backend.all_gather_into_tensor

    def kernel_takes(tensor: torch.Tensor, group: Any) -> bool:
        return (
            tensor.device.type == "cpu"
            and tensor.is_contiguous()
            and level >= _KERNEL_LEVEL_FOR.get(tensor.dtype, 99)
            and dist.get_world_size(group) == world_size
        )

    def own_chunk(full: torch.Tensor) -> torch.Tensor:
        chunk = full.numel() // world_size
        return full.view(-1).narrow(0, rank * chunk, chunk)

    def reduce_scatter_tensor(output_tensor: torch.Tensor, input_tensor: torch.Tensor, op: Any = dist.ReduceOp.SUM,
                              group: Any = None, async_op: bool = False) -> Any:
        if not (kernel_takes(input_tensor, group) and _is_sum(backend, op)):
            return group_reduce_scatter(output_tensor, input_tensor, op=op, group=group, async_op=async_op)
        chunk = own_chunk(input_tensor)
        if output_tensor.data_ptr() == chunk.data_ptr():  # ZeRO-3 scatters a bucket into its own chunk
            all_reduce(input_tensor)
        else:
            summed = input_tensor.clone()
            all_reduce(summed)
            output_tensor.view(-1).copy_(own_chunk(summed))
        return _Completed() if async_op else None

    def all_gather_into_tensor(output_tensor: torch.Tensor, input_tensor: torch.Tensor, group: Any = None,
                               async_op: bool = False) -> Any:
        if not (kernel_takes(output_tensor, group) and input_tensor.dtype == output_tensor.dtype):
            return group_all_gather(output_tensor, input_tensor, group=group, async_op=async_op)
        flat, chunk = output_tensor.view(-1), own_chunk(output_tensor)
        if input_tensor.data_ptr() != chunk.data_ptr():
            chunk.copy_(input_tensor.reshape(-1))
        start, end = rank * chunk.numel(), (rank + 1) * chunk.numel()
        flat[:start].zero_()
        flat[end:].zero_()
        all_reduce(output_tensor)
        return _Completed() if async_op else None

    backend.reduce_scatter_tensor = reduce_scatter_tensor
    backend.all_gather_into_tensor = all_gather_into_tensor
    return True


def _kernel_started() -> bool:
    """DeepSpeed's own test when it sets the kernel up: it runs only when LOCAL_SIZE is the world size;
    called without it, it faults."""
    return os.environ.get("LOCAL_SIZE") == str(dist.get_world_size())


def _is_sum(backend: Any, op: Any) -> bool:
    return backend._reduce_op(op) == dist.ReduceOp.SUM  # DeepSpeed's ReduceOp, as torch's
