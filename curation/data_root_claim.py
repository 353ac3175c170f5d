"""One curation at a time on a data root, and only over the inputs and settings its outputs came from.

datatrove skips a task whose completion marker exists, whatever the task would now compute: a rerun
with another input or other filter settings would keep the old outputs and report success. So every
curation command first claims the data root: it takes the root's lock (a second curation on the same
root is refused, naming the holder), and compares a fingerprint of what each stage is computed from
(a source's settings and steps with its input files' sizes and modification times; dedup and quality
settings with the sources they span; the code version) with the one the outputs were made with. A
difference is refused in one line naming what changed; `restart=true` clears the outputs and starts
over. The training-data stage (tokenizer, token files, mixture plan) is cheap to redo, so a change of
its settings only makes it, and the report after it, run again.
"""

from __future__ import annotations

import hashlib
import json
import shutil
from collections.abc import Callable
from typing import Any

import fsspec
from omegaconf import DictConfig, OmegaConf

from curation.executors import Stage, layout_of, run_stages
from curation.sources import Source, selected_sources
from curation.steps.preflight import probe_steps
from data_contract.atomic_files import read_json, write_json
from data_contract.layout import DataLayout
from data_contract.lock import hold_lock
from data_contract.manifest import code_version
from data_contract.refusal import Refusal

OUTPUT_FOLDERS = ("work", "curated", "removed", "report", "quality_classifier", "tokenizer", "tokens", "mix")
TRAINING_DATA_SETTINGS = ("tokenizer", "token_files", "mix_plan", "mixture")


def _digest(value: Any) -> str:
    return hashlib.sha256(json.dumps(value, sort_keys=True, default=str).encode()).hexdigest()[:16]


def _file_identity(path: str) -> list[Any]:
    fs, inner = fsspec.core.url_to_fs(path)
    info = fs.info(inner)
    return [path, info.get("size"), info.get("mtime") or info.get("LastModified") or info.get("created")]


def fingerprint(cfg: DictConfig, sources: list[Source], with_dedup: bool) -> dict[str, str]:
    """What the outputs of these sources (and, `with_dedup`, of dedup and quality over them) depend on."""
    entries = {"code": _digest(code_version())}
    for source in sources:
        entries[f"sources.{source.name}"] = _digest({
            "settings": OmegaConf.to_container(cfg.sources[source.name], resolve=True), "steps": source.steps,
            "files": [_file_identity(path) for path in source.files]})
    if with_dedup:
        spanned = sorted((s.name, s.priority) for s in sources)
        for key in ("dedup", "quality"):
            entries[key] = _digest({"settings": OmegaConf.to_container(cfg[key], resolve=True), "sources": spanned})
    for key in TRAINING_DATA_SETTINGS:
        if cfg.get(key) is not None:
            entries[key] = _digest(OmegaConf.to_container(cfg[key], resolve=True))
    return entries


def _lock(layout: DataLayout) -> None:
    hold_lock(layout.root / "work" / ".curation.lock",
              f"paths.data_root={layout.root} is being curated by {{holder}}; wait for it to end or use another "
              "paths.data_root")


def claim_and_run(cfg: DictConfig, stages_of: Callable[[list[Source], DataLayout], list[Stage]],
                  with_dedup: bool) -> None:
    """A stage command: its sources checked and probed, the data root claimed, then its stages run."""
    sources, layout = selected_sources(cfg), layout_of(cfg)
    probe_steps(sources)
    claim(cfg, sources, layout, with_dedup)
    run_stages(stages_of(sources, layout), cfg.executor)


def claim(cfg: DictConfig, sources: list[Source], layout: DataLayout, with_dedup: bool) -> None:
    """Lock the data root and check (or, with `restart`, reset) what its outputs were computed from."""
    _lock(layout)
    record = layout.root / "work" / "fingerprint.json"
    now = fingerprint(cfg, sources, with_dedup)
    if cfg.get("restart"):
        for folder in OUTPUT_FOLDERS:
            target = layout.root / folder
            if folder == "work":  # keep the lock file this process holds
                for child in target.iterdir():
                    if child.name != ".curation.lock":
                        shutil.rmtree(child) if child.is_dir() else child.unlink()
            else:
                shutil.rmtree(target, ignore_errors=True)
    before = read_json(record, "delete it, or rerun with restart=true") if record.is_file() else {}
    changed = [key for key, value in now.items() if key in before and before[key] != value]
    stale_curation = [key for key in changed if key not in TRAINING_DATA_SETTINGS]
    if stale_curation:
        raise Refusal(f"paths.data_root={layout.root} holds outputs of other inputs or settings (changed: "
                      f"{', '.join(stale_curation)}); rerun with restart=true to clear them and start over, "
                      "or use another paths.data_root")
    if any(key in TRAINING_DATA_SETTINGS for key in changed):  # redo tokenizer, token files, plan and report
        shutil.rmtree(layout.logs("training_data"), ignore_errors=True)
        shutil.rmtree(layout.logs("report"), ignore_errors=True)
    write_json(record, {**before, **now})
