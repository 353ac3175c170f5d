"""Build, once per environment, what a CPU run's first step would otherwise wait for.

A fresh environment's first training run on CPU would otherwise compile, before its first step,
DeepSpeed's shared-memory collective op (JIT, into TORCH_EXTENSIONS_DIR) and inductor's fused CPU
kernels (model/cpu_kernels, into inductor's cache). Neither depends on the run, so `make prebuild`
(beside the curation in `make demo`, before `make test`) builds them once and every later launch
finds both built. On a GPU there is nothing to build ahead: the
step uses NCCL and PyTorch's own kernels.

    python -m train.prebuild
"""

from __future__ import annotations

import os
import time

import torch

from model.config import GPTConfig
from model.gpt import GPT
from train.ds_config import resolve_precision


def build_shm_comm_op() -> None:
    """DeepSpeed's shared-memory all-reduce, the CPU collectives of train/cpu_shm_collectives.py."""
    os.environ.setdefault("DS_ACCELERATOR", "cpu")
    from deepspeed.comm.torch import build_shm_op

    if build_shm_op() is None:
        print("prebuild: DeepSpeed's shared-memory op cannot be built here; training uses gloo alone")


def compile_cpu_kernels(precision: str) -> None:
    """One forward and backward of a small GPT at the size where the fused kernels take over, in the
    precision training picks here (bf16 also compiles the attention backward)."""
    config = GPTConfig(vocab_size=64, block_size=128, n_layer=1, n_head=2, n_embd=64)
    model = GPT(config).to(torch.bfloat16 if precision == "bf16" else torch.float32)
    tokens = torch.randint(0, config.vocab_size, (2, config.block_size))
    model(tokens).float().mean().backward()


def main() -> None:
    if torch.cuda.is_available() or os.environ.get("DS_ACCELERATOR", "cpu") != "cpu":
        print("prebuild: a GPU run builds nothing ahead")
        return
    start = time.perf_counter()
    build_shm_comm_op()
    precision = resolve_precision("auto")
    compile_cpu_kernels(precision)
    print(f"prebuild: DeepSpeed's shared-memory op and the {precision} CPU kernels are built "
          f"({time.perf_counter() - start:.0f} s)")


if __name__ == "__main__":
    main()
