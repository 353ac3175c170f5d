"""`python -m train [overrides]`: pretraining with the Hydra config tree in conf/ (root: pretrain.yaml).

The trainer (train/trainer.py) runs the pretraining task (train/pretrain.py); a refusal of bad
settings or data is one line on stderr and exit code 2.
"""

from __future__ import annotations

import hydra
from omegaconf import DictConfig

from train.distributed import strip_launcher_args


@hydra.main(config_path="../conf", config_name="pretrain", version_base=None)
def main(cfg: DictConfig) -> None:
    from train import trainer
    from train.data import DataError
    from train.ds_config import ConfigError
    from train.preflight import exit_after
    from train.pretrain import PretrainTask

    exit_after("train", lambda: trainer.run(cfg, PretrainTask), (ConfigError, DataError))


if __name__ == "__main__":
    strip_launcher_args()
    main()
