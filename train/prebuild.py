"""Build, once per environment and run shape, what a CPU run's first step would otherwise wait for.

A fresh environment's first training run on CPU would otherwise compile, before its first step,
DeepSpeed's shared-memory collective op (JIT, into TORCH_EXTENSIONS_DIR) and inductor's fused CPU
kernels (model/cpu_kernels, into inductor's cache). The op does not depend on the run; the kernels'
cache entries do: inductor keys them on the thread count each rank runs with and, for the bf16
attention backward, on the tensor shapes (micro batch, heads, sequence length, head size). So the
prebuild takes the run's own settings and rank count and compiles one forward and backward exactly as
a rank of that run will; `make prebuild` does it for the demo's run, beside the curation in
`make demo` and before `make test`. The trainer's start-up line says how many kernels its first step
still compiled. On a GPU there is nothing to build ahead: the step uses NCCL and PyTorch's own kernels.

    python -m train.prebuild [--ranks-per-node N] [pretraining overrides, as for python -m train]
    python -m train.prebuild --ranks-per-node 2 model=tiny mixture=demo
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import time
from typing import Any

import torch

from model.gpt import GPT
from train.distributed import put_environments_ninja_first, threads_per_rank
from train.ds_config import resolve_precision
from train.settings import PretrainLoopSettings, model_config_for
from train.typed_settings import pretrain_settings


def build_shm_comm_op() -> None:
    """DeepSpeed's shared-memory all-reduce, the CPU collectives of train/cpu_shm_collectives.py."""
    os.environ.setdefault("DS_ACCELERATOR", "cpu")
    put_environments_ninja_first()
    from deepspeed.comm.torch import build_shm_op

    if build_shm_op() is None:
        print("prebuild: DeepSpeed's shared-memory op cannot be built here; training uses gloo alone")


def compile_cpu_kernels(model_settings: Any, loop: PretrainLoopSettings, precision: str) -> None:
    """One forward and backward of the run's model (one layer and a small vocabulary are enough: the
    kernels are per layer and not in the head) on one micro batch of the run's sequence length, in this
    process's current thread count."""
    config = dataclasses.replace(model_config_for(model_settings, None, 64), n_layer=1, vocab_size=64)
    model = GPT(config).to(torch.bfloat16 if precision == "bf16" else torch.float32)
    tokens = torch.randint(0, config.vocab_size, (loop.micro_batch_size, loop.seq_len))
    model(tokens).float().mean().backward()


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m train.prebuild", description=__doc__.split("\n\n")[0])
    parser.add_argument("--ranks-per-node", type=int, default=1,
                        help="training ranks on each node (the CPUs are shared among them, as in the run)")
    parser.add_argument("overrides", nargs="*", help="the run's settings, as given to `python -m train`")
    args = parser.parse_args(argv)
    if torch.cuda.is_available() or os.environ.get("DS_ACCELERATOR", "cpu") != "cpu":
        print("prebuild: a GPU run builds nothing ahead")
        return
    start = time.perf_counter()
    build_shm_comm_op()
    settings = pretrain_settings(args.overrides)
    precision = resolve_precision(settings.precision)
    threads = threads_per_rank(settings.train.threads_per_rank, args.ranks_per_node)
    torch.set_num_threads(threads)
    compile_cpu_kernels(settings.model, settings.train, precision)
    print(f"prebuild: DeepSpeed's shared-memory op and the {precision} CPU kernels for micro batches of "
          f"{settings.train.micro_batch_size} x {settings.train.seq_len} tokens at {threads} thread(s) per rank are built "
          f"({time.perf_counter() - start:.0f} s)")


if __name__ == "__main__":
    main()
