"""`python -m train [overrides]`: pretraining with the Hydra config tree in conf/ (root: pretrain.yaml)."""

from __future__ import annotations

import sys

import hydra
from omegaconf import DictConfig

from train.distributed import strip_launcher_args


@hydra.main(config_path="../conf", config_name="pretrain", version_base=None)
def main(cfg: DictConfig) -> None:
    from train.data import DataError
    from train.ds_config import ConfigError
    from train.loop import run

    try:
        code = run(cfg)
    except (ConfigError, DataError) as refusal:
        print(f"train: {refusal}", file=sys.stderr)
        sys.exit(2)
    if code:
        sys.exit(code)


if __name__ == "__main__":
    strip_launcher_args()
    main()
