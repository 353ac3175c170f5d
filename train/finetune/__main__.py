"""Fine-tuning: `python -m train.finetune task=reuters init=runs/tiny-demo [overrides]`.

    deepspeed --num_gpus 2 --module train.finetune task=next_sentence init=... train.epochs=3

Runs the fine-tuning stage (train/finetune/task.py) on the trainer (train/trainer.py); config:
conf/finetune.yaml and a task from conf/task/. A refusal is one line on stderr and exit code 2.
"""

from __future__ import annotations

from train.command import training_command
from train.launch_env import strip_launcher_args


def fine_tuning() -> type:
    from train.finetune.task import FineTuning

    return FineTuning


if __name__ == "__main__":
    strip_launcher_args()
    training_command("finetune", "finetune", fine_tuning)()
