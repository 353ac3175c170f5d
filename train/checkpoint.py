"""Checkpoints that are either complete or invisible.

`<run_dir>/checkpoints/<tag>/` holds the DeepSpeed checkpoint (sharded ZeRO state of every rank),
`model/` (consolidated weights, written by the task: train/pretrain.py, train/finetune/task.py) and
`trainer_state.json`. Everything is written under `<tag>.tmp/`, `trainer_state.json` last, then the
folder is renamed and only then the `latest` pointer replaced, so a job killed at any moment leaves
the previous checkpoint in use.

Also here: every process's RNG state (saved per rank, restored on an exact resume) and the roll-back
to the last checkpoint after repeated loss spikes (train/skip_step.py).
"""

from __future__ import annotations

import base64
import json
import logging
import random
import shutil
import subprocess
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
from omegaconf import DictConfig, OmegaConf

from data_contract import replace_folder, write_atomic

STATE_FILE = "trainer_state.json"
LATEST_FILE = "latest"
TMP_SUFFIX = ".tmp"

log = logging.getLogger("train")


def tag_for(step: int) -> str:
    return f"step{step:08d}"


def _barrier() -> None:
    if dist.is_initialized():
        dist.barrier()


def read_state(checkpoint: Path) -> dict[str, Any]:
    return json.loads((checkpoint / STATE_FILE).read_text())


def complete_checkpoints(checkpoints_dir: Path) -> list[Path]:
    """Finished checkpoints, oldest first (a folder counts only once its state file is in it)."""
    if not checkpoints_dir.is_dir():
        return []
    found = [p for p in checkpoints_dir.iterdir()
             if p.is_dir() and not p.name.endswith(TMP_SUFFIX) and (p / STATE_FILE).is_file()]
    return sorted(found, key=lambda p: read_state(p)["step"])


def find_resume_checkpoint(checkpoints_dir: Path) -> Path | None:
    """The checkpoint `latest` names if it is complete, else the newest complete one."""
    latest = checkpoints_dir / LATEST_FILE
    if latest.is_file():
        named = checkpoints_dir / latest.read_text().strip()
        if (named / STATE_FILE).is_file():
            return named
    complete = complete_checkpoints(checkpoints_dir)
    return complete[-1] if complete else None


def consolidated_state_dict(engine: Any) -> dict[str, torch.Tensor] | None:
    """Full fp32 weights on rank 0 (None elsewhere); every rank must call it (ZeRO-3 all-gathers)."""
    import deepspeed

    module = engine.module
    rank = dist.get_rank() if dist.is_initialized() else 0
    state: dict[str, torch.Tensor] = {}
    for name, param in module.named_parameters(remove_duplicate=False):
        with deepspeed.zero.GatheredParameters([param], modifier_rank=None, enabled=hasattr(param, "ds_id")):
            if rank == 0:
                state[name] = param.detach().float().cpu().clone()
    if rank == 0:
        state.update({name: buf.detach().cpu().clone() for name, buf in module.named_buffers()})
    return state if rank == 0 else None


def save(engine: Any, checkpoints_dir: Path, step: int, trainer_state: dict[str, Any], keep_last: int,
         export: Callable[[dict[str, torch.Tensor], Path], None] | None) -> Path:
    """Write the checkpoint of `step` (collective: every rank calls it).

    `export(weights, folder)`, when given, writes the consolidated weights as a loadable model
    into `<tag>/model/` on rank 0.
    """
    rank = dist.get_rank() if dist.is_initialized() else 0
    tag = tag_for(step)
    final, tmp = checkpoints_dir / tag, checkpoints_dir / (tag + TMP_SUFFIX)
    if rank == 0:
        shutil.rmtree(tmp, ignore_errors=True)
        checkpoints_dir.mkdir(parents=True, exist_ok=True)
    _barrier()
    engine.save_checkpoint(str(checkpoints_dir), tag=tmp.name, save_latest=False)
    weights = consolidated_state_dict(engine) if export is not None else None
    if rank == 0:
        if weights is not None and export is not None:
            export(weights, tmp / "model")
        write_atomic(tmp / STATE_FILE, json.dumps(trainer_state, indent=1))
        # files and folders fsynced before the rename; a checkpoint of the same step saved again (e.g. at
        # a signal right after a periodic save) is replaced
        replace_folder(tmp, final)
        write_atomic(checkpoints_dir / LATEST_FILE, tag + "\n")
        for old in complete_checkpoints(checkpoints_dir)[:-keep_last] if keep_last > 0 else []:
            shutil.rmtree(old, ignore_errors=True)
    _barrier()
    return final


def rng_state() -> dict[str, Any]:
    """This process's Python, NumPy and torch generator states, as JSON."""
    version, mt_state, gauss = random.getstate()
    name, keys, pos, has_gauss, cached = np.random.get_state()
    return {"python": [version, list(mt_state), gauss],
            "numpy": [name, keys.tolist(), pos, has_gauss, cached],
            "torch": base64.b64encode(torch.get_rng_state().numpy().tobytes()).decode()}


def restore_rng(state: dict[str, Any]) -> None:
    """Undo `rng_state`: dropout and any other sampling continue as if the job had never stopped."""
    version, mt_state, gauss = state["python"]
    random.setstate((version, tuple(mt_state), gauss))
    name, keys, pos, has_gauss, cached = state["numpy"]
    np.random.set_state((name, np.array(keys, dtype=np.uint32), pos, has_gauss, cached))
    torch.set_rng_state(torch.frombuffer(bytearray(base64.b64decode(state["torch"])), dtype=torch.uint8))


def roll_back(engine: Any, checkpoints_dir: Path) -> Path | None:
    """Load the weights and optimizer state of the newest complete checkpoint into `engine` (collective).

    The data position is not rewound: the trainer carries on after the batches that caused the
    spikes. None, with the engine untouched, when there is no checkpoint yet.
    """
    last = find_resume_checkpoint(checkpoints_dir)
    if last is not None:
        engine.load_checkpoint(str(checkpoints_dir), tag=last.name, load_lr_scheduler_states=False)
    return last


def universal_copy(checkpoint: Path) -> Path:
    """Convert a ZeRO checkpoint to DeepSpeed's universal format (rank-count independent), once.

    Returns the folder to pass as load_dir with the same tag; rank 0 converts, others wait.
    """
    universal_root = checkpoint.parent / "universal"
    target = universal_root / checkpoint.name
    rank = dist.get_rank() if dist.is_initialized() else 0
    if rank == 0 and not (target / ".complete").is_file():
        shutil.rmtree(target, ignore_errors=True)
        result = subprocess.run(
            [sys.executable, "-m", "deepspeed.checkpoint.ds_to_universal", "--input_folder", str(checkpoint),
             "--output_folder", str(target), "--num_extract_workers", "1", "--num_merge_workers", "1"],
            capture_output=True, text=True)
        if result.returncode != 0:
            raise RuntimeError(f"ds_to_universal failed for {checkpoint}: {result.stderr.strip()[-2000:]}")
        (target / ".complete").write_text("ok\n")
    _barrier()
    return universal_root


@dataclass(frozen=True)
class Resume:
    """Where a (re)started job continues from; `universal` when the rank count changed since the save."""

    checkpoint: Path
    state: dict[str, Any]
    universal: bool


def plan_resume(checkpoints_dir: Path, mode: str, world_size: int) -> Resume | None:
    """`train.resume=auto`: the newest complete checkpoint, if any. Decided before deepspeed.initialize,
    since loading a universal checkpoint needs `checkpoint.load_universal` in the DeepSpeed config."""
    found = find_resume_checkpoint(checkpoints_dir) if mode == "auto" else None
    if found is None:
        return None
    state = read_state(found)
    return Resume(found, state, state["world_size"] != world_size)


def load(engine: Any, resume: Resume) -> None:
    """Load the DeepSpeed state of `resume` into `engine` (collective), converting it first if needed."""
    load_dir = universal_copy(resume.checkpoint) if resume.universal else resume.checkpoint.parent
    engine.load_checkpoint(str(load_dir), tag=resume.checkpoint.name, load_lr_scheduler_states=False)


def start_run(run_dir: Path, cfg: DictConfig, rank: int, step: int, total_steps: int) -> bool:
    """False when the run already reached `total_steps` (a rerun of a finished job does nothing);
    otherwise rank 0 writes the resolved config.yaml, so the run dir says what it was started with."""
    if step >= total_steps:
        log.info("%s is complete (%d of %d steps); nothing to do", run_dir, step, total_steps)
        return False
    if rank == 0:
        run_dir.mkdir(parents=True, exist_ok=True)
        (run_dir / "config.yaml").write_text(OmegaConf.to_yaml(cfg, resolve=True))
    return True
