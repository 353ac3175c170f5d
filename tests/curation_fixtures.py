"""Helpers shared by the curation tests: the Hydra config, the CLI, and reading outputs."""

from __future__ import annotations

import gzip
import json
import os
import subprocess
import sys
from pathlib import Path

from hydra import compose, initialize_config_dir
from omegaconf import DictConfig

REPO = Path(__file__).resolve().parents[1]
# A slice keeps the integration runs short: every demo source, Wikipedia's first 1500 extracts.
SLICE = ("sources.wikipedia.reader.limit=1500",)


def curate_config(*overrides: str) -> DictConfig:
    with initialize_config_dir(config_dir=str(REPO / "conf"), version_base="1.3"):
        return compose(config_name="curate", overrides=list(overrides))


def curate_command(data_root: Path, raw_root: Path, *overrides: str, module: str = "curation.run") -> list[str]:
    return [sys.executable, "-m", module, f"paths.data_root={data_root}", f"paths.raw_root={raw_root}",
            *SLICE, *overrides]


def run_curation(data_root: Path, raw_root: Path, *overrides: str, module: str = "curation.run") -> subprocess.CompletedProcess:
    result = subprocess.run(curate_command(data_root, raw_root, *overrides, module=module), cwd=REPO,
                            capture_output=True, text=True, env={**os.environ, "WANDB_MODE": "offline"})
    assert result.returncode == 0, result.stderr[-3000:]
    return result


def read_docs(folder: Path) -> list[dict]:
    return [json.loads(line) for path in sorted(folder.glob("*.jsonl.gz")) for line in gzip.open(path, "rt")]
