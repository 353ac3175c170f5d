"""The Hydra entry point of a training command: settings checked first, then the trainer runs the stage.

`python -m train` (train/__main__.py) and `python -m train.finetune` (train/finetune/__main__.py) are
each this, with their config and stage. A refusal is one `<command>: ...` line on stderr and exit code 2;
the checks (train/preflight.py) run before torch, DeepSpeed or the data are touched.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Callable

import hydra
from hydra.core.hydra_config import HydraConfig
from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.types import RunMode
from omegaconf import DictConfig

from data_contract.refusal import Refusal
from train.launch_env import resolve_env
from train.preflight import prepare
from train.typed_settings import CONF_DIR


def training_command(name: str, config_name: str, stage_class: Callable[[], type]) -> Callable[[], None]:
    """The Hydra app of a training command: `conf/<config_name>.yaml`, checked (`prepare`), then the trainer
    runs the stage that `stage_class()` imports (only now: a refusal comes before torch is loaded)."""
    @hydra.main(config_path=str(CONF_DIR), config_name=config_name, version_base=None)
    def main(cfg: DictConfig) -> None:
        def start() -> int:
            settings, identity = prepare(cfg, config_name, _sweep_override_dirname())
            from train.trainer import set_up, train

            return train(set_up(settings, stage_class(), identity))

        exit_after(name, start)

    return main


def _sweep_override_dirname() -> str | None:
    """In a Hydra multirun, this job's values of the swept keys (e.g. `optim.lr=0.001`); else None."""
    hydra_cfg = HydraConfig.get()
    if hydra_cfg.mode != RunMode.MULTIRUN:
        return None
    parser = OverridesParser.create()
    given = parser.parse_overrides([arg for arg in sys.argv[1:] if not arg.startswith("-")])
    swept = {override.key_or_group for override in given if override.is_sweep_override()}
    job = parser.parse_overrides(list(hydra_cfg.overrides.task))
    return ",".join(f"{o.key_or_group}={o.value()}".replace("/", "_") for o in job if o.key_or_group in swept)


def exit_after(command: str, run: Callable[[], int]) -> None:
    """The end of an entry point: a refusal is one `<command>: ...` line on stderr (from rank 0) and exit 2
    (no traceback: the message already names the key or file and the fix); a nonzero result is the exit code."""
    try:
        code = run()
    except Refusal as refusal:
        if resolve_env(dict(os.environ)).rank == 0:
            print(f"{command}: {refusal}", file=sys.stderr)
        sys.exit(2)
    if code:
        sys.exit(code)
