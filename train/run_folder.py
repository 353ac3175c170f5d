"""One run per run_dir: the lock, a fresh start's refusal, a sweep job's own folder, and a metrics log
that reads as one run.

Everything here runs before torch is imported (train/preflight.py), so a refusal comes at once. The
checkpoints inside the folder are train/checkpointing/'s.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

from data_contract.atomic_files import write_atomic
from data_contract.lock import hold_lock
from data_contract.refusal import Refusal
from train.checkpointing.layout import CHECKPOINTS, newest_state

METRICS = "metrics.jsonl"
LOCK_FILE = ".trainer.lock"
# Left in the run dir beside exit code 75 (train/signals.py), for launchers that see only their own status.
REQUEUE_MARKER = "REQUEUE"
DEEPSPEED_LOG = "deepspeed.log"  # what DeepSpeed prints and logs for itself, kept off the console
# What a fresh start (`train.resume=never train.overwrite=true`) removes; Slurm logs stay.
RUN_OUTPUTS = (CHECKPOINTS, METRICS, "config.yaml", "wandb", REQUEUE_MARKER, DEEPSPEED_LOG)


def sweep_job_run_dir(run_dir: str, override_dirname: str | None) -> str:
    """In a Hydra multirun each job trains in `<run_dir>/<its overrides>`: one shared folder would make
    job 2 resume job 1's finished run."""
    if override_dirname is None:
        return run_dir
    return str(Path(run_dir) / (override_dirname or "default"))


def claim(run_dir: Path, rank: int) -> None:
    """Rank 0 locks the run dir for the job's lifetime; a second trainer is refused naming the holder.
    A requeued job of the same Slurm job id waits a minute for its previous incarnation to let go."""
    if rank != 0:
        return
    job = os.environ.get("SLURM_JOB_ID")
    hold_lock(run_dir / LOCK_FILE,
              f"run_dir={run_dir} is in use by the trainer {{holder}}; wait for it to end, stop it, or use "
              "another run_dir", wait_for=f"(slurm job {job})" if job else None)


def fresh_start(run_dir: Path, overwrite: bool, rank: int) -> None:
    """`train.resume=never` in a run dir that holds checkpoints would mix two runs: refused unless
    `train.overwrite=true`, which clears the earlier run's outputs first."""
    found = newest_state(run_dir)
    if found is None and not (run_dir / METRICS).exists():
        return
    if not overwrite:
        what = f"checkpoints up to {found[0].name}" if found else METRICS
        raise Refusal(f"train.resume=never but run_dir={run_dir} holds a run ({what}); train.resume=auto "
                      "continues it, train.overwrite=true replaces it, or use another run_dir")
    if rank == 0:
        for name in RUN_OUTPUTS:
            target = run_dir / name
            if target.is_dir():
                shutil.rmtree(target)
            elif target.exists():
                target.unlink()


def rewind_metrics(run_dir: Path, step: int) -> int:
    """Drop the rows logged after `step` (the step resumed from): steps run again after a fallback to an
    older checkpoint, or past the last checkpoint of a killed job, are logged once. Returns the count."""
    path = run_dir / METRICS
    if not path.is_file():
        return 0
    lines = path.read_text().splitlines()
    kept = [line for line in lines if _row_step(line) <= step]
    if len(kept) != len(lines):
        write_atomic(path, "".join(line + "\n" for line in kept))
    return len(lines) - len(kept)


def _row_step(line: str) -> int | float:
    try:
        return int(json.loads(line)["step"])
    except (ValueError, KeyError, TypeError):
        return float("inf")  # a torn last line of a killed job goes too
