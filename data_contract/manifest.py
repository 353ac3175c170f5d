"""The one `manifest.json` schema every output folder carries: what it was computed from and what it holds."""

from __future__ import annotations

import contextlib
import subprocess
from importlib import metadata
from pathlib import Path
from typing import Any

from data_contract.atomic_files import write_json

MANIFEST = "manifest.json"


def code_version() -> dict[str, str]:
    """Versions of the packages that shape the data, and the git commit when running from a checkout."""
    versions = {}
    for name in ("gptpipe", "datatrove", "trafilatura", "sentencepiece", "numpy"):
        with contextlib.suppress(metadata.PackageNotFoundError):
            versions[name] = metadata.version(name)
    # the folder above this package: the checkout's root (or site-packages when installed from a wheel)
    commit = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True,
                            cwd=Path(__file__).parent.parent)
    if commit.returncode == 0:
        versions["git_commit"] = commit.stdout.strip()
    return versions


def write_manifest(folder: Path, *, inputs: Any, config: Any, counts: Any = None,
                   outputs: dict[str, str] | None = None, **contents: Any) -> Path:
    """`folder/manifest.json`: what the folder was computed from (inputs with hashes, settings, code
    version), what it holds (`outputs`: file name -> sha256, counts) and any stage-specific `contents`.
    No timestamp: the same inputs give the same bytes."""
    manifest = {**contents, "inputs": inputs, "config": config, "counts": counts or {}, "outputs": outputs or {},
                "version": code_version()}
    path = Path(folder) / MANIFEST
    write_json(path, manifest)
    return path
