"""`python -m train [overrides]`: pretraining with the Hydra config tree in conf/ (root: pretrain.yaml).

The trainer (train/trainer.py) runs the pretraining stage (train/pretrain.py); a refusal of bad
settings or data is one line on stderr and exit code 2.
"""

from __future__ import annotations

from train.command import training_command
from train.launch_env import strip_launcher_args


def pretraining() -> type:
    from train.pretrain import Pretraining

    return Pretraining


if __name__ == "__main__":
    strip_launcher_args()
    training_command("train", "pretrain", pretraining)()
