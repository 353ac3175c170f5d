"""Writing and reading the contract's files safely: atomic writes and folder swaps, checked JSON, hashes."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from pathlib import Path
from typing import Any

from data_contract.refusal import Refusal


def sha256_file(path: Path | str) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _fsync_dir(folder: Path) -> None:
    descriptor = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(descriptor)
    finally:
        os.close(descriptor)


def write_atomic(path: Path, content: bytes | str) -> None:
    """Write through a temporary name, fsync, rename, fsync the folder: readers (and a crash) see the
    old file or the whole new one, never half of it."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    with open(tmp, "wb") as f:
        f.write(content.encode() if isinstance(content, str) else content)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
    _fsync_dir(path.parent)


def replace_folder(staged: Path, final: Path) -> None:
    """Move a fully written folder into place: its files and itself fsynced first, the old one removed."""
    for file in staged.rglob("*"):
        if file.is_file():
            with open(file, "rb") as f:
                os.fsync(f.fileno())
    _fsync_dir(staged)
    if final.exists():
        shutil.rmtree(final)
    os.replace(staged, final)
    _fsync_dir(final.parent)


def staging_folder(final: Path) -> Path:
    """An empty sibling folder to write `final`'s new contents into before `replace_folder`."""
    staged = final.with_name(f".{final.name}.tmp")
    shutil.rmtree(staged, ignore_errors=True)
    staged.mkdir(parents=True)
    return staged


def write_json(path: Path, payload: Any) -> None:
    write_atomic(path, json.dumps(payload, indent=2) + "\n")


def read_json(path: Path, fix: str) -> dict[str, Any]:
    """A JSON object from `path`, or a refusal naming the file and `fix`."""
    if not path.is_file():
        raise Refusal(f"{path} is missing: {fix}")
    try:
        payload = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise Refusal(f"{path} is not valid JSON ({err}): {fix}") from err
    if not isinstance(payload, dict):
        raise Refusal(f"{path} holds no JSON object: {fix}")
    return payload


def require_keys(payload: dict[str, Any], keys: tuple[str, ...], where: str, fix: str) -> None:
    missing = [key for key in keys if key not in payload]
    if missing:
        raise Refusal(f"{where} lacks {', '.join(repr(k) for k in missing)}: {fix}")
