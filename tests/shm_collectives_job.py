"""Each rank checks ZeRO-3's two collectives through train.cpu_shm_collectives against gloo's own results.

Run under `torchrun --nproc_per_node 2` by tests/test_train.py; each rank writes `rank<r>.json`.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import torch
import torch.distributed as dist

from train.distributed import init_distributed


def main(out_dir: Path) -> None:
    dist_env = init_distributed()
    from deepspeed import comm as ds_dist
    from deepspeed.comm import comm as ds_comm

    rank, world = dist_env.rank, dist_env.world_size
    installed = ds_comm.cdb.reduce_scatter_tensor.__module__ == "train.cpu_shm_collectives"
    mismatches = []
    for dtype in (torch.bfloat16, torch.float32):
        for numel in (world * 1000, world * 3_000_001):  # small, and larger than the kernel's buffer
            generator = torch.Generator().manual_seed(1000 * rank + numel)
            gradients = (torch.randn(numel, generator=generator) * 3).to(dtype)
            expected = torch.empty(numel // world, dtype=dtype)
            dist.reduce_scatter_tensor(expected, gradients.clone())  # gloo
            bucket = gradients.clone()  # ZeRO-3's in-place form: the output is this rank's chunk of the input
            ds_dist.reduce_scatter_fn(bucket.chunk(world)[rank], bucket)
            separate = torch.empty_like(expected)
            ds_dist.reduce_scatter_fn(separate, gradients.clone())
            shard = gradients[: numel // world].clone()
            expected_full = torch.empty(numel, dtype=dtype)
            dist.all_gather_into_tensor(expected_full, shard)  # gloo
            gathered = torch.full((numel,), float("nan"), dtype=dtype)
            gathered.chunk(world)[rank].copy_(shard)
            ds_dist.allgather_fn(gathered, gathered.chunk(world)[rank], async_op=True).wait()
            from_copy = torch.empty(numel, dtype=dtype)
            ds_dist.allgather_fn(from_copy, shard)
            for name, got, want in (("reduce_scatter in place", bucket.chunk(world)[rank], expected),
                                    ("reduce_scatter", separate, expected),
                                    ("all_gather in place", gathered, expected_full),
                                    ("all_gather", from_copy, expected_full)):
                if not torch.equal(got, want):
                    mismatches.append(f"{name} {dtype} {numel}: max diff {(got.float() - want.float()).abs().max()}")
    dist.barrier()  # every rank is past its setup
    leftovers = [path.name for path in Path("/dev/shm").glob(f"deepspeed_allreduce_buffer_*_{os.environ['MASTER_PORT']}_*")]
    (out_dir / f"rank{rank}.json").write_text(json.dumps({"installed": installed, "mismatches": mismatches, "leftovers": leftovers}))


if __name__ == "__main__":
    main(Path(sys.argv[1]))
