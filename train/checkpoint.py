"""Checkpoints that are either complete or invisible.

`<run_dir>/checkpoints/<tag>/` holds the DeepSpeed checkpoint (sharded ZeRO state of every rank),
`model/` (consolidated weights, written by the task: train/pretrain.py, train/finetune/task.py) and
`trainer_state.json`. Everything is written under `<tag>.tmp/`, `trainer_state.json` last, then files
and folder are fsynced, the folder renamed and only then the `latest` pointer replaced, so a job
killed at any moment (or a power loss) leaves the previous checkpoint in use.

`trainer_state.json` lists every other file of the checkpoint with its size and SHA-256 (the ranks
hash a share each). A resume verifies the newest checkpoint against that list and, if a file is
missing, truncated or altered, says so in one line and takes the previous checkpoint that verifies:
a damaged checkpoint is never resumed from. Checkpoints are ordered by the step in their folder
name, so rotation never has to read (possibly damaged) state files.

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

from data_contract import Refusal, replace_folder, sha256_file, write_atomic
from train.distributed import gather_objects
from train.run_dir import STATE_FILE, TAG_PREFIX, complete_checkpoints, readable_state

LATEST_FILE = "latest"
TMP_SUFFIX = ".tmp"

log = logging.getLogger("train")


def tag_for(step: int) -> str:
    return f"{TAG_PREFIX}{step:08d}"


def _barrier() -> None:
    if dist.is_initialized():
        dist.barrier()


def checkpoint_files(folder: Path) -> list[str]:
    """Every file of a checkpoint folder but the state file, relative and sorted (the same list on every rank)."""
    return sorted(p.relative_to(folder).as_posix() for p in folder.rglob("*")
                  if p.is_file() and p.name != STATE_FILE)


def file_entries(folder: Path, names: list[str]) -> dict[str, list[Any]]:
    """`name: [size, sha256]` for the given files of `folder`."""
    return {name: [(folder / name).stat().st_size, sha256_file(folder / name)] for name in names}


def problems_in(checkpoint: Path, state: dict[str, Any], names: list[str]) -> list[str]:
    """What is wrong with the files `names` of the state's list. A checkpoint written before the list
    existed has no `files` key and is taken unverified; an empty or malformed list is damage."""
    if "files" not in state:
        return []
    listed = state["files"]
    if not isinstance(listed, dict) or not listed:
        return [f"{STATE_FILE} lists no files"]
    problems = []
    for name in names:
        size, digest = listed[name]
        path = checkpoint / name
        if not path.is_file():
            problems.append(f"{name} is missing")
        elif path.stat().st_size != size:
            problems.append(f"{name} is {path.stat().st_size} bytes, {size} were written")
        elif sha256_file(path) != digest:
            problems.append(f"{name} does not match its checksum")
    return problems


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
    if rank == 0 and weights is not None and export is not None:
        export(weights, tmp / "model")
    _barrier()
    names = checkpoint_files(tmp)
    world_size = dist.get_world_size() if dist.is_initialized() else 1
    shares = gather_objects(file_entries(tmp, names[rank::world_size]), world_size)
    if rank == 0:
        files = {name: entry for share in shares for name, entry in share.items()}
        write_atomic(tmp / STATE_FILE, json.dumps({**trainer_state, "files": dict(sorted(files.items()))}, indent=1))
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
    """Load the weights and optimizer state of the newest verified checkpoint into `engine` (collective).

    The data position is not rewound: the trainer carries on after the batches that caused the
    spikes. None, with the engine untouched, when there is no checkpoint yet.
    """
    last = newest_verified(complete_checkpoints(checkpoints_dir))
    if last is not None:
        engine.load_checkpoint(str(checkpoints_dir), tag=last[0].name, load_lr_scheduler_states=False)
    return last[0] if last is not None else None


def newest_verified(candidates: list[Path]) -> tuple[Path, dict[str, Any]] | None:
    """The newest of `candidates` (oldest first) whose files match its state's list, with its state
    (collective: each rank checks a share of the files). Each damaged one is reported in one line."""
    rank = dist.get_rank() if dist.is_initialized() else 0
    world_size = dist.get_world_size() if dist.is_initialized() else 1
    for candidate in reversed(candidates):
        state = readable_state(candidate)
        problems = [f"{STATE_FILE} is not readable"] if state is None else []
        if state is not None:
            names = sorted(state.get("files") or {})
            problems = [p for share in gather_objects(problems_in(candidate, state, names[rank::world_size]),
                                                      world_size) for p in share]
        if not problems:
            return candidate, state  # type: ignore[return-value]
        if rank == 0:
            log.warning("checkpoint %s is damaged (%s); not resuming from it", candidate, "; ".join(problems[:3]))
    return None


def universal_copy(checkpoint: Path, universal_root: Path) -> Path:
    """Convert a ZeRO checkpoint to DeepSpeed's universal format (rank-count independent), once.

    Returns the folder to pass as load_dir with the same tag; rank 0 converts, others wait.
    """
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


def plan_resume(checkpoints_dir: Path, request: str | Path, world_size: int) -> Resume | None:
    """The verified checkpoint a job continues from (collective), or None to start fresh.

    `request` is `auto` (this run's newest verified checkpoint), `never`, or a checkpoint path: that
    checkpoint while this run has none of its own yet (once it has, a requeued job continues from its
    own, as with auto). Decided before deepspeed.initialize, since loading a universal checkpoint
    needs `checkpoint.load_universal` in the DeepSpeed config.
    """
    if request == "never":
        return None
    own = complete_checkpoints(checkpoints_dir)
    if isinstance(request, Path) and not own:
        found = newest_verified([request])
        if found is None:
            raise Refusal(f"train.resume={request} is damaged (see the line above); pick another checkpoint")
    else:
        found = newest_verified(own)
        if found is None and own:
            log.warning("no checkpoint in %s verifies; starting from scratch", checkpoints_dir)
    if found is None:
        return None
    checkpoint, state = found
    return Resume(checkpoint, state, state["world_size"] != world_size)


def load(engine: Any, resume: Resume, checkpoints_dir: Path) -> None:
    """Load the DeepSpeed state of `resume` into `engine` (collective), converting it first if needed
    (the universal copy goes under this run's `checkpoints/universal/`)."""
    checkpoint = resume.checkpoint
    load_dir = universal_copy(checkpoint, checkpoints_dir / "universal") if resume.universal else checkpoint.parent
    engine.load_checkpoint(str(load_dir), tag=checkpoint.name, load_lr_scheduler_states=False)
