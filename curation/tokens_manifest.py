"""The on-disk contract shared by the tokenizer, tokenize and mix stages.

Token files follow datatrove's DocumentTokenizer format (raw little-endian ids, uint16 while the
vocabulary fits, else uint32; `.ds.index` holds uint64 document ends). The manifests of these stages
are written atomically and without timestamps (unlike curation.manifest's), so identical inputs
give identical bytes.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import numpy as np

from curation.manifest import MANIFEST, file_sha256


class BadInput(SystemExit):
    """A one-line refusal naming the file or key at fault and the fix; raised before anything is written."""


def token_dtype(vocab_size: int) -> np.dtype:
    """The narrowest dtype datatrove uses for ids of this vocabulary."""
    if vocab_size <= np.iinfo(np.uint16).max + 1:
        return np.dtype("<u2")
    if vocab_size <= np.iinfo(np.uint32).max + 1:
        return np.dtype("<u4")
    raise BadInput(f"tokenizer.vocab_size={vocab_size} does not fit uint32 token files; use a smaller vocabulary")


def check_vocab_fits(vocab_size: int, dtype: str, where: str) -> None:
    """Ids up to vocab_size - 1 must be representable in the token files' dtype."""
    if vocab_size > np.iinfo(np.dtype(dtype)).max + 1:
        raise BadInput(f"{where}: vocab_size={vocab_size} does not fit dtype {dtype}; "
                       f"re-tokenize (curation.tokenize picks uint32 above 65536 ids)")


def write_json(path: Path, payload: dict[str, Any]) -> None:
    """Write JSON through a temporary name and rename, so readers never see half a file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(json.dumps(payload, indent=2, sort_keys=False) + "\n")
    os.replace(tmp, path)


def read_json(path: Path, fix: str) -> dict[str, Any]:
    if not path.is_file():
        raise BadInput(f"{path} is missing: {fix}")
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as err:
        raise BadInput(f"{path} is not valid JSON ({err}): {fix}") from err


def relative_to_root(path: Path, data_root: Path) -> str:
    return path.resolve().relative_to(data_root.resolve()).as_posix()


def token_file_entry(path: Path, data_root: Path, dtype: np.dtype) -> dict[str, Any]:
    """Path (relative to data_root), token and document counts and sha256 of one datatrove token file."""
    doc_ends = np.fromfile(f"{path}.index", dtype="<u8")
    tokens = path.stat().st_size // dtype.itemsize
    if doc_ends.size and int(doc_ends[-1]) != tokens:
        raise BadInput(f"{path}.index ends at {int(doc_ends[-1])} tokens but the file holds {tokens}: "
                       f"delete the source's token folder and rerun curation.tokenize")
    return {"path": relative_to_root(path, data_root), "tokens": int(tokens), "documents": int(doc_ends.size),
            "sha256": file_sha256(path)}


def load_source_tokens(data_root: Path, source: str) -> dict[str, Any]:
    """A source's tokens manifest after checking its files against it (sizes, dtype, vocabulary).

    Sizes only, not hashes: re-hashing hundreds of GB on every mix would cost more than the plan.
    """
    fix = f"run `python -m curation.tokenize` for source {source}"
    manifest_path = data_root / "tokens" / source / MANIFEST
    if not manifest_path.is_file():
        raise BadInput(f"mixture source '{source}' has no token files ({manifest_path} missing): {fix}")
    manifest = read_json(manifest_path, fix)
    for key in ("dtype", "vocab_size", "eos_id", "tokenizer_sha256", "files", "val_files"):
        if key not in manifest:
            raise BadInput(f"{manifest_path} lacks key '{key}': {fix}")
    dtype = np.dtype(manifest["dtype"])
    check_vocab_fits(manifest["vocab_size"], manifest["dtype"], str(manifest_path))
    if not manifest["files"]:
        raise BadInput(f"mixture source '{source}' has no training token files in {manifest_path}: {fix}")
    for entry in manifest["files"] + manifest["val_files"]:
        path = data_root / entry["path"]
        if not path.is_file():
            raise BadInput(f"{path} listed in {manifest_path} is missing: {fix}")
        size = path.stat().st_size
        if size % dtype.itemsize:
            raise BadInput(f"{path}: {size} bytes is not a multiple of {dtype.name}'s {dtype.itemsize} "
                           f"(truncated or foreign file): {fix}")
        if size // dtype.itemsize != entry["tokens"]:
            raise BadInput(f"{path}: holds {size // dtype.itemsize} tokens, {manifest_path} says "
                           f"{entry['tokens']}: {fix}")
    return manifest
