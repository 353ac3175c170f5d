"""Sources as configured in conf/source/*.yaml, checked and resolved before any work starts.

A bad source stops the run with one line naming the key and the fix: a missing input, an
unknown `format`, step or quality role.
"""

from __future__ import annotations

import posixpath
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import fsspec
from omegaconf import DictConfig, OmegaConf

from curation.catalog import STEPS
from curation.layout import Layout
from curation.readers import FORMATS

QUALITY_ROLES = ("positive", "scored")


class ConfigError(SystemExit):
    """A configuration mistake, reported as one line before anything runs."""


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


def expand_inputs(name: str, inputs: str | list[str]) -> tuple[str, ...]:
    """Paths, globs or fsspec URLs -> sorted list of existing files; a pattern matching nothing stops the run."""
    files: list[str] = []
    for pattern in [inputs] if isinstance(inputs, str) else list(inputs):
        fs, path = fsspec.core.url_to_fs(pattern)
        matches = sorted(fs.glob(path)) if any(ch in path for ch in "*?[") else ([path] if fs.exists(path) else [])
        if not matches:
            raise ConfigError(f"sources.{name}.input: nothing at '{pattern}'; point it at existing files "
                              f"(python -m curation.run sources.{name}.input='/path/*.ext')")
        protocol = fs.protocol if isinstance(fs.protocol, str) else fs.protocol[0]
        local = protocol in ("file", "local")
        files += [str(Path(m).resolve()) if local else fs.unstrip_protocol(m) for m in matches]
    return tuple(dict.fromkeys(files))


def resolve_source(name: str, cfg: DictConfig, filters: DictConfig) -> Source:
    where = f"sources.{name}"
    for key in ("input", "format"):
        if cfg.get(key) is None:
            raise ConfigError(f"{where}.{key} is missing; every source needs `input` and `format`")
    if cfg.format not in FORMATS:
        raise ConfigError(f"{where}.format={cfg.format} is unknown; use one of {', '.join(FORMATS)}")
    quality = cfg.get("quality")
    if quality is not None and quality not in QUALITY_ROLES:
        raise ConfigError(f"{where}.quality={quality} is unknown; use positive, scored or null")
    steps: dict[str, dict[str, Any]] = {}
    for step, overrides in (cfg.get("steps") or {}).items():
        if step not in STEPS:
            raise ConfigError(f"{where}.steps.{step} is not a step; known steps: {', '.join(STEPS)}")
        defaults = filters.get(step) or {}
        steps[step] = OmegaConf.to_container(OmegaConf.merge(defaults, overrides or {}), resolve=True)
    tasks = int(cfg.get("tasks", 1))
    if tasks < 1:
        raise ConfigError(f"{where}.tasks={tasks} must be >= 1")
    return Source(
        name=name, format=cfg.format, files=expand_inputs(name, cfg.input), tasks=tasks,
        priority=int(cfg.get("priority", 1)), quality=quality,
        reader=OmegaConf.to_container(cfg.get("reader") or OmegaConf.create({}), resolve=True), steps=steps,
    )


def selected_sources(cfg: DictConfig) -> list[Source]:
    """The sources named by `only` (all configured ones when null), resolved and checked."""
    configured = list(cfg.get("sources") or {})
    names = list(cfg.only) if cfg.get("only") else configured
    for name in names:
        if name not in configured:
            raise ConfigError(f"only: '{name}' is not a configured source; configured: {', '.join(configured)}")
    if not names:
        raise ConfigError("sources: none configured; add one under conf/source/ and to conf/curate.yaml")
    return [resolve_source(name, cfg.sources[name], cfg.filters) for name in names]


def write_inputs_list(source: Source, layout: Layout) -> str:
    """The reader's paths file: one input per line, relative to `source.data_folder`."""
    path = layout.inputs_list(source.name)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(f"{rel}\n" for rel in source.relative_files()))
    return str(path)
