"""Build a GPT the way a pretraining rank does, partitioned (zero.Init) or whole, and report host memory.

Run under torchrun by tests/test_train.py; each rank prints one JSON line: the growth of its peak resident
memory while building, the fp32 size of the whole model, and the parameters it holds.
"""

from __future__ import annotations

import json
import resource
import sys

import torch

from model import GPT, GPTConfig
from model.flops import parameter_count
from train.distributed import init_distributed
from train.ds_config import build_ds_config, partitioned_build
from train.settings import DeepSpeedSettings, LoopSettings

# ~300M parameters: 1.2 GB in fp32, far above the one module gathered at a time for its initialisation
CONFIG = GPTConfig(vocab_size=8192, block_size=256, n_layer=24, n_head=16, n_embd=1024)


def main(partitioned: bool) -> None:
    dist_env = init_distributed()
    torch.manual_seed(0)
    zero = DeepSpeedSettings()
    ds_config = build_ds_config(zero, LoopSettings(micro_batch_size=1, global_batch_size=dist_env.world_size), 1.0,
                                dist_env.world_size, "fp32")
    build = partitioned_build(zero, ds_config) if partitioned else None
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    with build() if build is not None else torch.no_grad():
        model = GPT(CONFIG)
    grown = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 - before
    held = sum(p.ds_tensor.numel() if hasattr(p, "ds_tensor") else p.numel() for p in model.parameters())
    print(json.dumps({"rank": dist_env.rank, "grown_gb": grown / 1e9, "model_gb": 4 * parameter_count(CONFIG) / 1e9,
                      "held_params": held}), flush=True)


if __name__ == "__main__":
    main(sys.argv[1] == "partitioned")
