"""`python -m train [overrides]`: pretraining with the Hydra config tree in conf/ (root: pretrain.yaml)."""

from __future__ import annotations

import hydra
from omegaconf import DictConfig

from train.distributed import strip_launcher_args


@hydra.main(config_path="../conf", config_name="pretrain", version_base=None)
def main(cfg: DictConfig) -> None:
    from train.data import DataError
    from train.ds_config import ConfigError
    from train.loop import run
    from train.preflight import exit_after

    exit_after("train", lambda: run(cfg), (ConfigError, DataError))


if __name__ == "__main__":
    strip_launcher_args()
    main()
