"""`manifest.json` for an output folder: inputs with hashes, config, counts, versions."""

from __future__ import annotations

import hashlib
import json
import subprocess
import time
from importlib import metadata
from pathlib import Path
from typing import Any

MANIFEST = "manifest.json"


def file_sha256(path: Path | str) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def code_version() -> dict[str, str]:
    """Package versions, and the git commit when running from a checkout."""
    versions = {name: metadata.version(name) for name in ("gptpipe", "datatrove", "trafilatura", "scikit-learn")}
    commit = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True,
                            cwd=Path(__file__).parent)
    if commit.returncode == 0:
        versions["git_commit"] = commit.stdout.strip()
    return versions


def write_manifest(folder: Path, *, inputs: Any, config: Any, counts: Any, files: dict[str, str] | None = None) -> Path:
    """Write `folder/manifest.json`; `files` maps output file names to their sha256."""
    manifest = {
        "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "version": code_version(),
        "inputs": inputs,
        "config": config,
        "counts": counts,
        "files": files or {},
    }
    path = Path(folder) / MANIFEST
    path.write_text(json.dumps(manifest, indent=2, sort_keys=True) + "\n")
    return path
