"""Token files in datatrove's DocumentTokenizer format: their dtype, their manifest entries, the checked load."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from data_contract.atomic_files import read_json, require_keys, sha256_file
from data_contract.layout import DataLayout
from data_contract.manifest import MANIFEST
from data_contract.refusal import Refusal

TOKENS_KEYS = ("source", "tokenizer_sha256", "dtype", "vocab_size", "eos_id", "tokens", "files", "val_files")


def token_dtype(vocab_size: int) -> np.dtype:
    """The narrowest dtype datatrove uses for ids of this vocabulary (little-endian, no header)."""
    if vocab_size <= np.iinfo(np.uint16).max + 1:
        return np.dtype("<u2")
    if vocab_size <= np.iinfo(np.uint32).max + 1:
        return np.dtype("<u4")
    raise Refusal(f"tokenizer.vocab_size={vocab_size} does not fit uint32 token files; use a smaller vocabulary")


def check_vocab_fits(vocab_size: int, dtype: str, where: str) -> None:
    """Ids up to vocab_size - 1 must be representable in the token files' dtype."""
    if vocab_size > np.iinfo(np.dtype(dtype)).max + 1:
        raise Refusal(f"{where}: vocab_size={vocab_size} does not fit dtype {dtype}; "
                      f"re-tokenize (curation.tokenize picks uint32 above 65536 ids)")


def token_file_entry(path: Path, layout: DataLayout, dtype: np.dtype) -> dict[str, Any]:
    """Path (relative to the data root), token and document counts and sha256 of one token file."""
    doc_ends = np.fromfile(f"{path}.index", dtype="<u8")
    tokens = path.stat().st_size // dtype.itemsize
    if doc_ends.size and int(doc_ends[-1]) != tokens:
        raise Refusal(f"{path}.index ends at {int(doc_ends[-1])} tokens but the file holds {tokens}: "
                      f"delete the source's token folder and rerun curation.tokenize")
    return {"path": layout.relative(path), "tokens": int(tokens), "documents": int(doc_ends.size),
            "sha256": sha256_file(path)}


def load_source_tokens(layout: DataLayout, source: str) -> dict[str, Any]:
    """A source's tokens manifest after checking its files against it (sizes, dtype, vocabulary).

    Sizes only, not hashes: re-hashing hundreds of GB on every mix would cost more than the plan.
    """
    fix = f"run `python -m curation.tokenize` for source {source}"
    manifest_path = layout.tokens(source) / MANIFEST
    if not manifest_path.is_file():
        raise Refusal(f"mixture source '{source}' has no token files ({manifest_path} missing): {fix}")
    manifest = read_json(manifest_path, fix)
    require_keys(manifest, TOKENS_KEYS, str(manifest_path), fix)
    dtype = np.dtype(manifest["dtype"])
    check_vocab_fits(manifest["vocab_size"], manifest["dtype"], str(manifest_path))
    if not manifest["files"]:
        raise Refusal(f"mixture source '{source}' has no training token files in {manifest_path}: {fix}")
    for entry in manifest["files"] + manifest["val_files"]:
        path = layout.root / entry["path"]
        if not path.is_file():
            raise Refusal(f"{path} listed in {manifest_path} is missing: {fix}")
        size = path.stat().st_size
        if size % dtype.itemsize:
            raise Refusal(f"{path}: {size} bytes is not a multiple of {dtype.name}'s {dtype.itemsize} "
                          f"(truncated or foreign file): {fix}")
        if size // dtype.itemsize != entry["tokens"]:
            raise Refusal(f"{path}: holds {size // dtype.itemsize} tokens, {manifest_path} says "
                          f"{entry['tokens']}: {fix}")
    return manifest
