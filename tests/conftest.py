"""Shared test setup: CPU DeepSpeed, offline wandb, the sample corpus, and the `slurm` marker policy.

A `slurm` test needs the local cluster (`slurm/local-cluster.sh up`, done by `make test`). Without
one it is skipped with the reason; with CI=true a missing cluster fails the run instead, so CI can
never pass by skipping the real thing. A `gpu` test skips without CUDA devices (CI has none;
`make gpu-check` runs them where there are).
"""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

from tests.commands import SAMPLE_CORPUS

os.environ.setdefault("DS_ACCELERATOR", "cpu")
os.environ.setdefault("WANDB_MODE", "offline")
os.environ.setdefault("WANDB_SILENT", "true")


def _in_ci() -> bool:
    return os.environ.get("CI", "").lower() in {"1", "true", "yes"}


def _cluster_answers() -> bool:
    try:
        result = subprocess.run(["sinfo", "-h", "-o", "%t"], capture_output=True, text=True, timeout=20)
    except (OSError, subprocess.TimeoutExpired):
        return False
    return result.returncode == 0 and bool(result.stdout.strip())


def _require(available: bool, what: str) -> None:
    if available:
        return
    if _in_ci():
        pytest.fail(f"{what} (CI=true: a missing prerequisite fails the run)")
    pytest.skip(what)


def pytest_runtest_setup(item: pytest.Item) -> None:
    if item.get_closest_marker("slurm"):
        _require(_cluster_answers(), "no Slurm cluster answers `sinfo`: run `make cluster` (slurm/local-cluster.sh up)")
    gpu = item.get_closest_marker("gpu")
    if gpu:
        import torch

        needed = gpu.kwargs.get("devices", 1)
        if torch.cuda.device_count() < needed:
            pytest.skip(f"needs {needed} CUDA device(s), this machine has {torch.cuda.device_count()}")


@pytest.fixture(scope="session")
def sample_corpus() -> Path:
    """The real sample corpus fetched by `make data` (python -m curation.sample_data dest=data/raw)."""
    _require((SAMPLE_CORPUS / ".complete").exists(),
             f"sample corpus missing at {SAMPLE_CORPUS}: run `make data`")
    return SAMPLE_CORPUS
