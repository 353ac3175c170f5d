"""Fine-tuning: `python -m train.finetune task=reuters init=runs/tiny-demo [overrides]`.

    deepspeed --num_gpus 2 --module train.finetune task=next_sentence init=... train.epochs=3

Runs the fine-tuning task (train/finetune/task.py) on the trainer (train/trainer.py); config:
conf/finetune.yaml and a task from conf/task/. A refusal is one line on stderr and exit code 2.
"""

from __future__ import annotations

import hydra
from omegaconf import DictConfig

from train.distributed import strip_launcher_args


@hydra.main(config_path="../../conf", config_name="finetune", version_base=None)
def main(cfg: DictConfig) -> None:
    from train import trainer
    from train.ds_config import ConfigError
    from train.finetune.examples import TaskError
    from train.finetune.task import FinetuneTask
    from train.preflight import exit_after

    exit_after("finetune", lambda: trainer.run(cfg, FinetuneTask), (ConfigError, TaskError))


if __name__ == "__main__":
    strip_launcher_args()
    main()
