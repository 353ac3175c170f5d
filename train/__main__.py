"""`python -m train [overrides]`: pretraining with the Hydra config tree in conf/ (root: pretrain.yaml)."""

from __future__ import annotations

import os
import sys

import hydra
from omegaconf import DictConfig


def _strip_launcher_args() -> None:
    """The `deepspeed` launcher appends `--local_rank=N`, which Hydra would reject as an override."""
    for arg in list(sys.argv[1:]):
        if arg.startswith("--local_rank"):
            sys.argv.remove(arg)
            os.environ.setdefault("LOCAL_RANK", arg.split("=", 1)[1] if "=" in arg else "0")


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
    _strip_launcher_args()
    main()
