"""One run per run_dir: the lock, the resume request, a fresh start's refusal, a sweep's own folders,
and a metrics log that reads as one run.

Everything here runs before torch is imported (train/preflight.py), so a refusal comes at once.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf

from data_contract import Refusal, hold_lock, write_atomic

CHECKPOINTS = "checkpoints"
STATE_FILE = "trainer_state.json"  # written last into a checkpoint folder
TAG_PREFIX = "step"  # checkpoint folders are step<8 digits>
METRICS = "metrics.jsonl"
LOCK_FILE = ".trainer.lock"
# Left in the run dir beside exit code 75 (train/signals.py), for launchers that see only their own status.
REQUEUE_MARKER = "REQUEUE"
# What a fresh start (`train.resume=never train.overwrite=true`) removes; Slurm logs stay.
RUN_OUTPUTS = (CHECKPOINTS, METRICS, "config.yaml", "wandb", REQUEUE_MARKER)


def resume_request(cfg: DictConfig) -> str | Path:
    """`train.resume` as the trainer takes it: auto, never or an existing checkpoint folder."""
    value = str(cfg.train.resume)
    if value in ("auto", "never"):
        return value
    path = Path(value)
    if (path / STATE_FILE).is_file():
        return path.resolve()
    raise Refusal(f"train.resume={value} is not auto, never or a checkpoint folder (one holding "
                  f"{STATE_FILE}, e.g. runs/<run>/{CHECKPOINTS}/step00001000); fix the value")


def sweep_job_run_dir(cfg: DictConfig, override_dirname: str | None) -> None:
    """In a Hydra multirun each job trains in `<run_dir>/<its overrides>`: one shared folder would make
    job 2 resume job 1's finished run."""
    if override_dirname is not None:
        OmegaConf.update(cfg, "run_dir", str(Path(cfg.run_dir) / (override_dirname or "default")))


def claim(cfg: DictConfig, rank: int) -> None:
    """Rank 0 locks the run dir for the job's lifetime; a second trainer is refused naming the holder.
    A requeued job of the same Slurm job id waits a minute for its previous incarnation to let go."""
    if rank != 0:
        return
    run_dir = Path(cfg.run_dir)
    job = os.environ.get("SLURM_JOB_ID")
    hold_lock(run_dir / LOCK_FILE,
              f"run_dir={run_dir} is in use by the trainer {{holder}}; wait for it to end, stop it, or use "
              "another run_dir", wait_for=f"(slurm job {job})" if job else None)


def step_of(checkpoint: Path) -> int | None:
    """The step in a checkpoint folder's tag (`step00001000`), or None for any other folder."""
    number = checkpoint.name[len(TAG_PREFIX):]
    return int(number) if checkpoint.name.startswith(TAG_PREFIX) and number.isdigit() else None


def complete_checkpoints(checkpoints_dir: Path) -> list[Path]:
    """Renamed checkpoints (a folder counts once its state file is in it), oldest first by their tag's step."""
    if not checkpoints_dir.is_dir():
        return []
    found = [p for p in checkpoints_dir.iterdir()
             if p.is_dir() and step_of(p) is not None and (p / STATE_FILE).is_file()]
    return sorted(found, key=step_of)  # type: ignore[arg-type, return-value]


def readable_state(checkpoint: Path) -> dict[str, Any] | None:
    """The checkpoint's state, or None when the file is missing or not a whole JSON object (its files are
    verified by train/checkpoint.py)."""
    try:
        state = json.loads((checkpoint / STATE_FILE).read_text())
    except (OSError, ValueError):
        return None
    return state if isinstance(state, dict) else None


def newest_state(run_dir: Path) -> tuple[Path, dict[str, Any]] | None:
    """The newest checkpoint of the run whose state file reads, with that state."""
    for folder in reversed(complete_checkpoints(run_dir / CHECKPOINTS)):
        state = readable_state(folder)
        if state is not None:
            return folder, state
    return None


def fresh_start(cfg: DictConfig, rank: int) -> None:
    """`train.resume=never` in a run dir that holds checkpoints would mix two runs: refused unless
    `train.overwrite=true`, which clears the earlier run's outputs first."""
    run_dir = Path(cfg.run_dir)
    found = newest_state(run_dir)
    if found is None and not (run_dir / METRICS).exists():
        return
    if not cfg.train.overwrite:
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
