"""The Checkpointer: a run's checkpoints, either complete or invisible, and every decision about them.

It plans the resume (the newest checkpoint that verifies, converted to DeepSpeed's universal format when
the rank count changed, refused when the run's identity changed), loads it, decides when a save is due,
saves, rotates and rolls back. What a checkpoint carries besides the DeepSpeed state it collects from
the parts registered with it (the run's position and its task's data position, the spike guard, the
time budget, every rank's RNG), each a `Stateful`, so the trainer never assembles the state itself.

A save writes everything under `<tag>.tmp/`, `trainer_state.json` last (with every other file's size and
SHA-256, each rank hashing the files it wrote), fsyncs files and folder, renames the folder and only then
replaces the `latest` pointer: a job killed at any moment (or a power loss) leaves the previous
checkpoint in use. A resume verifies the newest checkpoint against that list and, if a file is missing,
truncated or altered, says so in one line and takes the previous one that verifies: a damaged
checkpoint is never resumed from.
"""

from __future__ import annotations

import base64
import contextlib
import json
import logging
import os
import random
import shutil
import subprocess
import sys
import time
from collections.abc import Callable
from contextlib import AbstractContextManager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import torch
import torch.distributed as dist

from data_contract.atomic_files import replace_folder, write_atomic
from data_contract.refusal import Refusal
from train.checkpointing.identity import check_same_run
from train.checkpointing.layout import (
    CHECKPOINTS,
    LATEST_FILE,
    STATE_FILE,
    TMP_SUFFIX,
    UNIVERSAL,
    checkpoint_files,
    complete_checkpoints,
    file_entries,
    problems_in,
    readable_state,
    tag_for,
    writer_of,
)
from train.distributed import gather_objects, on_any_rank
from train.settings import CheckpointSettings

log = logging.getLogger("train")

Export = Callable[[dict[str, torch.Tensor], Path], None]  # (consolidated weights, folder): a loadable model


class Stateful(Protocol):
    def state_dict(self) -> dict[str, Any] | None:
        """What this part adds to `trainer_state.json` (None: nothing this time)."""
        ...

    def load_state_dict(self, state: dict[str, Any]) -> None:
        ...


@dataclass(frozen=True)
class Resume:
    """Where a (re)started job continues from; `universal` when the rank count changed since the save."""

    checkpoint: Path
    state: dict[str, Any]
    universal: bool


class Checkpointer:
    """Owns `<run_dir>/checkpoints/`. Collective methods are called by every rank."""

    def __init__(self, run_dir: Path, settings: CheckpointSettings, world_size: int) -> None:
        self.dir = run_dir / CHECKPOINTS
        self.settings = settings
        self.rank = dist.get_rank() if dist.is_initialized() else 0
        self.world_size = world_size
        self.parts: list[tuple[str | None, Stateful]] = []
        self.engine: Any = None
        self.export: Export | None = None
        self.resumed_from: Path | None = None  # the checkpoint `load` restored
        self.last_save = time.monotonic()
        # what a save or a load runs inside: the trainer lets the watchdog allow `checkpoint.timeout_s` for it
        self.long_operation: Callable[[], AbstractContextManager[Any]] = contextlib.nullcontext

    def register(self, key: str | None, part: Stateful) -> None:
        """Save `part`'s state under `key` of `trainer_state.json` (None: its keys at the top level)."""
        self.parts.append((key, part))

    def attach(self, engine: Any, export: Export | None) -> None:
        """The engine whose state is saved; `export` writes the consolidated weights as a loadable model
        into each checkpoint's `model/` (when `checkpoint.export_model`)."""
        self.engine = engine
        self.export = export if self.settings.export_model else None

    def plan_resume(self, request: str | Path, identity: dict[str, Any], accepted: list[str]) -> Resume | None:
        """The verified checkpoint a job continues from (collective), or None to start fresh.

        `request` is `auto` (this run's newest verified checkpoint), `never`, or a checkpoint path: that
        checkpoint while this run has none of its own yet (once it has, a requeued job continues from its
        own, as with auto). Decided before the task is built (a resumed task need not load its initial
        weights) and before deepspeed.initialize (loading a universal checkpoint is a config flag).
        """
        if request == "never":
            return None
        if self.rank == 0:  # what a job killed mid-save left behind
            for stale in self.dir.glob(f"*{TMP_SUFFIX}") if self.dir.is_dir() else []:
                shutil.rmtree(stale, ignore_errors=True)
        own = complete_checkpoints(self.dir)
        if isinstance(request, Path) and not own:
            found = newest_verified([request])
            if found is None:
                raise Refusal(f"train.resume={request} is damaged (see the line above); pick another checkpoint")
        else:
            found = newest_verified(own)
            if found is None and own:
                log.warning("no checkpoint in %s verifies; starting from scratch", self.dir)
        if found is None:
            return None
        checkpoint, state = found
        # the verified checkpoint may be older than the one the checks before training compared with
        for change in check_same_run(state.get("identity"), identity, accepted, checkpoint):
            log.warning("continuing %s with changed settings, as accepted: %s", checkpoint, change)
        return Resume(checkpoint, state, state["world_size"] != self.world_size)

    def load(self, resume: Resume) -> None:
        """Load the DeepSpeed state of `resume` (collective), converting it first when the rank count
        changed, then give each registered part its state back."""
        checkpoint, state = resume.checkpoint, dict(resume.state)
        with self.long_operation():
            load_dir = self.universal_copy(checkpoint) if resume.universal else checkpoint.parent
            self.engine.load_checkpoint(str(load_dir), tag=checkpoint.name, load_lr_scheduler_states=False)
        if checkpoint.parent != self.dir:  # another run's checkpoint (train.resume=<path>): a wandb run of its own
            state["wandb_run_id"] = None
        if resume.universal:  # another rank count means other ranks' streams
            state.pop("rng", None)
        self.resumed_from = checkpoint
        for key, part in self.parts:
            if key is None:
                part.load_state_dict(state)
            elif key in state:
                part.load_state_dict(state[key])

    def maybe_save(self, step: int, final: bool = False, stopping: bool = False) -> Path | None:
        """Save after the last step, at a stop, every `checkpoint.every` steps, or once `checkpoint.every_s`
        seconds have passed since the last save (collective: the ranks agree on the time)."""
        if final or stopping or (self.settings.every and step % self.settings.every == 0) or self.time_is_up():
            with self.long_operation():
                return self.save(step, final)
        return None

    def time_is_up(self) -> bool:
        """`checkpoint.every_s` has passed since the last save (or the start) on some rank."""
        if not self.settings.every_s:
            return False
        return on_any_rank(time.monotonic() - self.last_save >= self.settings.every_s)

    def save(self, step: int, final: bool = True) -> Path:
        """Write the checkpoint of `step` (collective) and keep the newest `checkpoint.keep_last`; the model
        export is left out of all but the final one with `checkpoint.export_final_only`."""
        began = time.perf_counter()
        state: dict[str, Any] = {}
        for key, part in self.parts:
            part_state = part.state_dict()
            if part_state is not None:
                state.update(part_state if key is None else {key: part_state})
        tag = tag_for(step)
        folder, tmp = self.dir / tag, self.dir / (tag + TMP_SUFFIX)
        if self.rank == 0:
            shutil.rmtree(tmp, ignore_errors=True)
            self.dir.mkdir(parents=True, exist_ok=True)
        _barrier()
        failure: Exception | None = None
        try:
            self.engine.save_checkpoint(str(self.dir), tag=tmp.name, save_latest=False)
            if self.export is not None and (final or not self.settings.export_final_only):
                weights = consolidated_state_dict(self.engine)
                if weights is not None:
                    self.export(weights, tmp / "model")
        except Exception as error:  # DeepSpeed's and safetensors' writers raise their own kinds
            failure = error
        if on_any_rank(failure is not None):  # every rank stops alike, none waits for one that failed
            self.refuse_if_disk_full(step, tmp, failure)
            raise failure or RuntimeError(f"checkpoint of step {step}: another rank could not write its part")
        mine = [name for name in checkpoint_files(tmp) if writer_of(name, self.world_size) == self.rank]
        shares = gather_objects(file_entries(tmp, mine), self.world_size)
        if self.rank == 0:
            files = {name: entry for share in shares for name, entry in share.items()}
            write_atomic(tmp / STATE_FILE, json.dumps({**state, "files": dict(sorted(files.items()))}, indent=1))
            # files and folders fsynced before the rename; a checkpoint of the same step saved again (e.g. at
            # a signal right after a periodic save) is replaced
            replace_folder(tmp, folder)
            write_atomic(self.dir / LATEST_FILE, tag + "\n")
            keep = self.settings.keep_last
            for old in complete_checkpoints(self.dir)[:-keep] if keep > 0 else []:
                shutil.rmtree(old, ignore_errors=True)
            # a checkpoint at this rank count exists now: the converted copy a resume read is not needed again
            shutil.rmtree(self.dir / UNIVERSAL, ignore_errors=True)
        _barrier()
        log.info("checkpoint %s written in %.1f s", folder, time.perf_counter() - began)
        self.last_save = time.monotonic()
        return folder

    def refuse_if_disk_full(self, step: int, tmp: Path, error: Exception | None) -> None:
        """A save that failed on a full disk ends the run in one line (DeepSpeed's writer says only "basic_ios"
        or "unexpected pos"); the half-written folder goes, the previous checkpoint stays the one to resume."""
        usage = shutil.disk_usage(self.dir)
        if usage.free > max(64 << 20, usage.total // 100):
            return
        shutil.rmtree(tmp, ignore_errors=True)
        previous = complete_checkpoints(self.dir)
        raise Refusal(f"checkpoint of step {step} not written: the disk of {self.dir} is full "
                      f"({usage.free >> 20} MB free{f'; {type(error).__name__}' if error else ''}); "
                      + (f"{previous[-1].name} is kept and a resubmission resumes from it" if previous
                         else "no earlier checkpoint") + "; free space (or lower checkpoint.keep_last) and resubmit")

    def roll_back(self) -> Path | None:
        """Load the weights and optimizer state of the newest verified checkpoint (collective).

        The data position is not rewound: the trainer carries on after the batches that caused the
        spikes. None, with the engine untouched, when there is no checkpoint yet.
        """
        last = newest_verified(complete_checkpoints(self.dir))
        if last is not None:
            self.engine.load_checkpoint(str(self.dir), tag=last[0].name, load_lr_scheduler_states=False)
        return last[0] if last is not None else None

    def universal_copy(self, checkpoint: Path) -> Path:
        """Convert a ZeRO checkpoint to DeepSpeed's universal format (rank-count independent), once, under
        this run's `checkpoints/universal/` (removed by the next save); returns the folder to load the same
        tag from. Rank 0 converts, the others wait."""
        root = self.dir / UNIVERSAL
        target = root / checkpoint.name
        if self.rank == 0 and not (target / ".complete").is_file():
            began = time.perf_counter()
            shutil.rmtree(target, ignore_errors=True)
            workers = str(len(os.sched_getaffinity(0)))  # the conversion is rank 0's alone: all its CPUs
            result = subprocess.run(
                [sys.executable, "-m", "deepspeed.checkpoint.ds_to_universal", "--input_folder", str(checkpoint),
                 "--output_folder", str(target), "--num_extract_workers", workers, "--num_merge_workers", workers],
                capture_output=True, text=True)
            if result.returncode != 0:
                raise RuntimeError(f"ds_to_universal failed for {checkpoint}: {result.stderr.strip()[-2000:]}")
            (target / ".complete").write_text("ok\n")
            log.info("converted %s to DeepSpeed's universal format in %s in %.1f s", checkpoint, target,
                     time.perf_counter() - began)
        _barrier()
        return root


class ProcessRng:
    """Every rank's Python, NumPy and torch generator states (saved per rank, restored on an exact resume),
    so dropout and any other sampling continue as if the job had never stopped."""

    def __init__(self, rank: int, world_size: int) -> None:
        self.rank, self.world_size = rank, world_size

    def state_dict(self) -> dict[str, Any]:
        version, mt_state, gauss = random.getstate()
        name, keys, pos, has_gauss, cached = np.random.get_state()
        mine = {"python": [version, list(mt_state), gauss],
                "numpy": [name, keys.tolist(), pos, has_gauss, cached],
                "torch": base64.b64encode(torch.get_rng_state().numpy().tobytes()).decode()}
        return gather_objects(mine, self.world_size)  # type: ignore[return-value]  # a list, one per rank

    def load_state_dict(self, state: Any) -> None:
        mine = state[self.rank]
        version, mt_state, gauss = mine["python"]
        random.setstate((version, tuple(mt_state), gauss))
        name, keys, pos, has_gauss, cached = mine["numpy"]
        np.random.set_state((name, np.array(keys, dtype=np.uint32), pos, has_gauss, cached))
        torch.set_rng_state(torch.frombuffer(bytearray(base64.b64decode(mine["torch"])), dtype=torch.uint8))


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
            shares = gather_objects(problems_in(candidate, state, names[rank::world_size]), world_size)
            problems = [problem for share in shares for problem in share]
        if not problems:
            return candidate, state  # type: ignore[return-value]
        if rank == 0:
            log.warning("checkpoint %s is damaged (%s); not resuming from it", candidate, "; ".join(problems[:3]))
    return None


def consolidated_state_dict(engine: Any) -> dict[str, torch.Tensor] | None:
    """Full fp32 weights on rank 0 (None elsewhere); every rank must call it (ZeRO-3 all-gathers).

    A trained parameter comes from the optimizer's fp32 master copy: in bf16 the module's own weights are
    the rounded working copy, and an export of those would not be the model that was trained.
    """
    import deepspeed
    from deepspeed.utils import safe_get_full_fp32_param

    module = engine.module
    rank = dist.get_rank() if dist.is_initialized() else 0
    state: dict[str, torch.Tensor] = {}
    for name, param in module.named_parameters(remove_duplicate=False):
        master = safe_get_full_fp32_param(param) if hasattr(param, "ds_id") and param.requires_grad else None
        if master is not None:
            if rank == 0:
                state[name] = master.detach().reshape(param.ds_shape).float().cpu().clone()
            continue
        with deepspeed.zero.GatheredParameters([param], modifier_rank=None, enabled=hasattr(param, "ds_id")):
            if rank == 0:
                state[name] = param.detach().float().cpu().clone()
    if rank == 0:
        state.update({name: buf.detach().cpu().clone() for name, buf in module.named_buffers()})
    return state if rank == 0 else None


def _barrier() -> None:
    if dist.is_initialized():
        dist.barrier()
