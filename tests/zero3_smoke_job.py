"""A few ZeRO-3 steps of a small module on every rank, then a checkpoint: the cluster smoke job.

Run under `srun` by tests/test_slurm_zero3.py; each rank writes `rank<r>.done` with its final loss.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import torch

from train.distributed import init_distributed


def main(out_dir: Path, steps: int = 4) -> None:
    dist_env = init_distributed()
    import deepspeed

    torch.manual_seed(0)
    module = torch.nn.Sequential(torch.nn.Linear(32, 64), torch.nn.GELU(), torch.nn.Linear(64, 1))
    config = {
        "train_micro_batch_size_per_gpu": 4,
        "gradient_accumulation_steps": 1,
        "zero_optimization": {"stage": 3},
        "zero_allow_untested_optimizer": True,
        "steps_per_print": 10**9,
    }
    # torch's AdamW as the client optimizer, as the trainer passes its own (train/ds_config.py): DeepSpeed's
    # "AdamW" type would JIT-build its CPU Adam op, which nothing else uses, inside the job.
    optimizer = torch.optim.AdamW(module.parameters(), lr=1e-2)
    engine, *_ = deepspeed.initialize(model=module, optimizer=optimizer, config=config)
    generator = torch.Generator().manual_seed(dist_env.rank)
    loss = torch.tensor(0.0)
    for _ in range(steps):
        x = torch.randn(4, 32, generator=generator)
        loss = (engine(x) - x.sum(dim=1, keepdim=True)).pow(2).mean()
        engine.backward(loss)
        engine.step()
    engine.save_checkpoint(str(out_dir / "checkpoints"), tag=f"step{steps}")
    (out_dir / f"rank{dist_env.rank}.done").write_text(
        json.dumps({"rank": dist_env.rank, "world_size": dist_env.world_size, "loss": loss.item()}))


if __name__ == "__main__":
    main(Path(sys.argv[1]))
