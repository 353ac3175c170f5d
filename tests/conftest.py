"""Shared test setup: CPU DeepSpeed, offline wandb, the sample corpus, and the `slurm` marker policy.

A `slurm` test needs the local cluster (`slurm/local-cluster.sh up`, done by `make test`). Without
one it is skipped with the reason; with CI=true a missing cluster fails the run instead, so CI can
never pass by skipping the real thing. A `gpu` test skips without CUDA devices (CI has none;
`make gpu-check` runs them where there are).
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from tests.commands import SAMPLE_CORPUS, require
from tests.slurm_jobs import cluster_answers

os.environ.setdefault("DS_ACCELERATOR", "cpu")
os.environ.setdefault("WANDB_MODE", "offline")
os.environ.setdefault("WANDB_SILENT", "true")


def pytest_runtest_setup(item: pytest.Item) -> None:
    if item.get_closest_marker("slurm"):
        require(cluster_answers(), "no Slurm cluster answers `sinfo`: run `make cluster` (slurm/local-cluster.sh up)")
    gpu = item.get_closest_marker("gpu")
    if gpu:
        import torch

        needed = gpu.kwargs.get("devices", 1)
        if torch.cuda.device_count() < needed:
            pytest.skip(f"needs {needed} CUDA device(s), this machine has {torch.cuda.device_count()}")


@pytest.fixture(scope="session")
def sample_corpus() -> Path:
    """The real sample corpus fetched by `make data` (python -m curation.sample_data dest=data/raw)."""
    require((SAMPLE_CORPUS / ".complete").exists(),
             f"sample corpus missing at {SAMPLE_CORPUS}: run `make data`")
    return SAMPLE_CORPUS
