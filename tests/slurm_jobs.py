"""Submitting and watching jobs on the real (local) Slurm cluster from tests."""

from __future__ import annotations

import re
import subprocess
import time
from collections.abc import Callable
from pathlib import Path

# The trainer settings of the sbatch tests: a model that trains in seconds, fp32, no evaluations.
SMALL = ["model.n_layer=2", "model.n_embd=64", "model.n_head=2", "model.block_size=64", "train.seq_len=64",
         "train.micro_batch_size=4", "train.global_batch_size=8", "eval.every=0", "eval.sample_every=0",
         "precision=fp32"]
FINAL_STATES = {"COMPLETED", "FAILED", "CANCELLED", "TIMEOUT", "NODE_FAIL", "OUT_OF_MEMORY", "PREEMPTED",
                "BOOT_FAIL", "DEADLINE"}


def cluster_answers() -> bool:
    """Whether a Slurm cluster answers `sinfo` on this machine."""
    try:
        result = subprocess.run(["sinfo", "-h", "-o", "%t"], capture_output=True, text=True, timeout=20)
    except (OSError, subprocess.TimeoutExpired):
        return False
    return result.returncode == 0 and bool(result.stdout.strip())


def submit(script: Path | str, *args: str, sbatch_options: tuple[str, ...] = (), cwd: Path | None = None) -> str:
    result = subprocess.run(["sbatch", "--parsable", *sbatch_options, str(script), *args],
                            capture_output=True, text=True, cwd=cwd, check=False)
    if result.returncode != 0:
        raise RuntimeError(f"sbatch {script} failed: {result.stderr.strip()}")
    return result.stdout.strip().split(";")[0]


def job_field(job_id: str, field: str) -> str | None:
    result = subprocess.run(["scontrol", "show", "job", job_id], capture_output=True, text=True)
    match = re.search(rf"\b{field}=(\S+)", result.stdout)
    return match.group(1) if match else None


def wait_for(job_id: str, timeout_s: float, states: set[str] = FINAL_STATES) -> str:
    """Poll until the job reaches one of `states`; returns that state."""
    deadline = time.monotonic() + timeout_s
    state = None
    while time.monotonic() < deadline:
        state = job_field(job_id, "JobState")
        if state in states:
            return state
        time.sleep(1)
    subprocess.run(["scancel", job_id], check=False)
    raise TimeoutError(f"job {job_id} still {state} after {timeout_s:.0f}s (cancelled)")


def wait_until(condition: Callable[[], bool], timeout_s: float, what: str, poll_s: float = 0.2) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if condition():
            return
        time.sleep(poll_s)
    raise TimeoutError(f"timed out after {timeout_s:.0f}s waiting for {what}")


def job_log(run_dir: Path) -> str:
    return "\n".join(p.read_text() for p in sorted((run_dir / "logs").glob("*.out")))
