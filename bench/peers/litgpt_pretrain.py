"""litgpt's `pretrain` on the trainer's plan samples; bench/litgpt_race.py runs it with the peer environment's python.

    bench/.venv-litgpt/bin/python bench/peers/litgpt_pretrain.py SPEC.json

Everything after the Fabric launch is `litgpt.pretrain.main`: its weight init, torch.compile, AdamW,
warmup-cosine schedule, gradient clipping, loop and final checkpoint. Ours are the lines of
`litgpt.pretrain.setup` before it, because setup picks FSDP for more than one device and Lightning refuses
FSDP without a GPU: here Fabric runs 2 CPU processes with DDP. The data module is ours too
(bench/peers/plan_samples.py): rows of token ids that the race exported from the trainer's mixture plan.

SPEC.json is the one argument because litgpt's checkpoint saving re-parses sys.argv as setup's command
line (litgpt.parser_config.save_hyperparameters): a lone positional parses as setup's `model_name`,
which is unused once a Config is given.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import lightning as L
from litgpt import Config
from litgpt.args import EvalArgs, TrainArgs
from litgpt.pretrain import main as pretrain
from plan_samples import PlanSamples


def main() -> None:
    spec = json.loads(Path(sys.argv[1]).read_text())
    fabric = L.Fabric(accelerator="cpu", devices=spec["devices"], strategy="ddp", precision=spec["precision"])
    fabric.launch()
    pretrain(
        fabric=fabric,
        devices=spec["devices"],
        seed=spec["seed"],
        initial_checkpoint_dir=None,
        resume=False,
        config=Config(**spec["config"]),
        data=PlanSamples(Path(spec["train_rows"]), Path(spec["val_rows"])),
        out_dir=Path(spec["out_dir"]),
        tokenizer_dir=None,
        tokenizer=None,
        train=TrainArgs(**spec["train"]),
        # litgpt always runs a 2-batch sanity validation first; its own evaluation stays off (interval past
        # the last step, no final pass): the race scores both models afterwards with one evaluator.
        eval=EvalArgs(interval=spec["steps"] + 1, max_iters=2, initial_validation=False, final_validation=False),
        optimizer=spec["optimizer"],
    )


if __name__ == "__main__":
    main()
