"""The one place tests find the repository (and its sample corpus) and run the project's command-line entries.

Every command runs as a user would start it: a fresh Python process, `python -m <module>`, with
CPU DeepSpeed and offline wandb. A test that needs the output checks `returncode` itself, or
passes `check=True` to fail with the command's last lines.
"""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
# the real sample corpus `make data` fetches (python -m curation.sample_data dest=data/raw)
SAMPLE_CORPUS = Path(os.environ.get("GPTPIPE_RAW_ROOT", REPO / "data" / "raw"))
# DeepSpeed on CPU unless the caller chose its accelerator (`make gpu-check` sets cuda)
TEST_ENV = {"DS_ACCELERATOR": os.environ.get("DS_ACCELERATOR", "cpu"), "WANDB_MODE": "offline", "WANDB_SILENT": "true"}


def command_env(extra: Mapping[str, str] | None = None) -> dict[str, str]:
    """This process's environment with the test settings, the repository importable from any cwd."""
    path = os.pathsep.join(p for p in (str(REPO), os.environ.get("PYTHONPATH", "")) if p)
    return {**os.environ, **TEST_ENV, "PYTHONPATH": path, **(extra or {})}


def run_command(command: Sequence[str], *, cwd: Path = REPO, env: Mapping[str, str] | None = None,
                timeout: float = 600, check: bool = False) -> subprocess.CompletedProcess[str]:
    """Run `command` to its end; with `check`, a non-zero exit fails the test with its output's tail."""
    result = subprocess.run(list(command), cwd=cwd, env=command_env(env), capture_output=True, text=True,
                            timeout=timeout)
    if check and result.returncode != 0:
        raise AssertionError(f"{' '.join(command)} exited {result.returncode}:\n"
                             f"{result.stdout[-3000:]}\n{result.stderr[-3000:]}")
    return result


def run_module(module: str, *args: str, **kwargs) -> subprocess.CompletedProcess[str]:
    """`python -m module args...`, as `run_command` runs it."""
    return run_command([sys.executable, "-m", module, *args], **kwargs)


def in_ci() -> bool:
    return os.environ.get("CI", "").lower() in {"1", "true", "yes"}


def require(available: bool, what: str) -> None:
    """Skip the test when a prerequisite is missing, but fail it under CI=true: CI never passes by skipping."""
    if available:
        return
    if in_ci():
        pytest.fail(f"{what} (CI=true: a missing prerequisite fails the run)")
    pytest.skip(what)
