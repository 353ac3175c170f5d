"""Sources as configured in conf/source/*.yaml and weighed by conf/mixture/, checked before any work starts.

A bad source stops the run with one line naming the key and the fix: a missing input, an
unknown `format`, step or quality role.
"""

from __future__ import annotations

import posixpath
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import fsspec
from datatrove.pipeline.readers import JsonlReader
from omegaconf import DictConfig, OmegaConf

from curation.steps.readers import FORMATS
from curation.steps.registry import STEPS
from data_contract.atomic_files import write_atomic
from data_contract.layout import DataLayout
from data_contract.refusal import Refusal

QUALITY_ROLES = ("positive", "scored")
CURATED_GLOB = "*.jsonl.gz"


@dataclass(frozen=True)
class Source:
    name: str
    format: str
    files: tuple[str, ...]  # every input file (for `hf`: the dataset directory)
    tasks: int
    priority: int
    quality: str | None  # "positive", "scored" or None
    reader: dict[str, Any]
    steps: dict[str, dict[str, Any]]  # step name -> parameters, in order

    @property
    def data_folder(self) -> str:
        """The deepest folder holding every input file; readers take paths relative to it."""
        if len(self.files) == 1:
            return self.files[0] if self.format == "hf" else posixpath.dirname(self.files[0])
        return posixpath.commonpath(self.files)

    def relative_files(self) -> list[str]:
        return [posixpath.relpath(path, self.data_folder) for path in self.files]


def expand_inputs(name: str, inputs: str | list[str], folders_allowed: bool = False) -> tuple[str, ...]:
    """Paths, globs or fsspec URLs -> sorted list of existing files; a pattern matching nothing, or (unless
    `folders_allowed`, as for a saved `datasets` folder) a folder, stops the run."""
    files: list[str] = []
    for pattern in [inputs] if isinstance(inputs, str) else list(inputs):
        fs, path = fsspec.core.url_to_fs(pattern)
        matches = sorted(fs.glob(path)) if any(ch in path for ch in "*?[") else ([path] if fs.exists(path) else [])
        if not matches:
            raise Refusal(f"sources.{name}.input: nothing at '{pattern}'; point it at existing files "
                              f"(python -m curation.run sources.{name}.input='/path/*.ext')")
        if not folders_allowed and (folder := next((m for m in matches if fs.isdir(m)), None)):
            raise Refusal(f"sources.{name}.input: '{folder}' is a folder; name its files, e.g. "
                          f"sources.{name}.input='{folder.rstrip('/')}/*'")
        protocol = fs.protocol if isinstance(fs.protocol, str) else fs.protocol[0]
        local = protocol in ("file", "local")
        files += [str(Path(m).resolve()) if local else fs.unstrip_protocol(m) for m in matches]
    return tuple(dict.fromkeys(files))


def resolve_source(name: str, cfg: DictConfig, filters: DictConfig) -> Source:
    where = f"sources.{name}"
    for key in ("input", "format"):
        if cfg.get(key) is None:
            raise Refusal(f"{where}.{key} is missing; every source needs `input` and `format`")
    if cfg.format not in FORMATS:
        raise Refusal(f"{where}.format={cfg.format} is unknown; use one of {', '.join(FORMATS)}")
    quality = cfg.get("quality")
    if quality is not None and quality not in QUALITY_ROLES:
        raise Refusal(f"{where}.quality={quality} is unknown; use positive, scored or null")
    steps: dict[str, dict[str, Any]] = {}
    for step, overrides in (cfg.get("steps") or {}).items():
        if step not in STEPS:
            raise Refusal(f"{where}.steps.{step} is not a step; known steps: {', '.join(STEPS)}")
        defaults = filters.get(step) or {}
        steps[step] = OmegaConf.to_container(OmegaConf.merge(defaults, overrides or {}), resolve=True)
    tasks = int(cfg.get("tasks", 1))
    if tasks < 1:
        raise Refusal(f"{where}.tasks={tasks} must be >= 1")
    return Source(
        name=name, format=cfg.format, files=expand_inputs(name, cfg.input, folders_allowed=cfg.format == "hf"), tasks=tasks,
        priority=int(cfg.get("priority", 1)), quality=quality,
        reader=OmegaConf.to_container(cfg.get("reader") or OmegaConf.create({}), resolve=True), steps=steps,
    )


def selected_sources(cfg: DictConfig) -> list[Source]:
    """The sources named by `only`, resolved and checked; when null, the configured sources the mixture
    names (every configured one without a mixture), so `mixture=gpt3` curates books1 and books2 and
    `mixture=demo` the whole of books."""
    configured = list(cfg.get("sources") or {})
    mixture = list(cfg.mixture.sources) if cfg.get("mixture") else configured
    names = list(cfg.only) if cfg.get("only") else [name for name in configured if name in mixture]
    for name in names:
        if name not in configured:
            raise Refusal(f"only: '{name}' is not a configured source; configured: {', '.join(configured)}")
    if not names:
        raise Refusal("sources: none configured; add one under conf/source/ and to conf/curate.yaml")
    return [resolve_source(name, cfg.sources[name], cfg.filters) for name in names]


def write_inputs_list(source: Source, layout: DataLayout) -> str:
    """The reader's paths file: one input per line, relative to `source.data_folder`."""
    path = layout.inputs_list(source.name)
    write_atomic(path, "".join(f"{rel}\n" for rel in source.relative_files()))
    return str(path)


def normalized_weights(weights: Mapping[str, float], where: str) -> dict[str, float]:
    """Weights scaled to sum to one (GPT-3's Table 2.2 sums to 1.01 by rounding)."""
    if not weights:
        raise Refusal(f"{where}: no sources; list at least one `sources.<name>.weight`")
    for name, weight in weights.items():
        if not isinstance(weight, int | float) or weight < 0 or weight != weight:
            raise Refusal(f"{where}: sources.{name}.weight={weight!r} must be a number >= 0")
    total = float(sum(weights.values()))
    if total <= 0:
        raise Refusal(f"{where}: all source weights are zero; give at least one source a positive weight")
    return {name: float(weight) / total for name, weight in weights.items()}


def curated_reader(layout: DataLayout, source: str) -> JsonlReader:
    """The curated documents of a mixture source, as the tokenizer and token-file stages read them."""
    folder = layout.curated(source)
    if not folder.is_dir() or not any(folder.glob(CURATED_GLOB)):
        raise Refusal(f"mixture source '{source}' has no curated documents ({folder}/{CURATED_GLOB}): "
                       f"run `python -m curation.run only=[{source}]` or drop it from the mixture")
    return JsonlReader(str(folder), glob_pattern=CURATED_GLOB, recursive=False, add_file_path=False)
