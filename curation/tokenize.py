"""Turn each source's curated documents into datatrove token files, holding out a validation slice.

`python -m curation.tokenize [overrides]` writes, per source of the mixture,
`${paths.data_root}/tokens/<source>/*.ds` (+ `.ds.index`) for training, the same format under
`val/` for the held-out documents, and a `manifest.json` with token counts and hashes.

Tokenization is datatrove's DocumentTokenizer: with a sentencepiece adapter for a trained model
(curation.steps.sentencepiece_tokenizer), as it comes for GPT-2's BPE (its `tokenizer.json`, EOS
`<|endoftext|>`); one task per curated file. A rerun with the same tokenizer, inputs and split skips the tasks
datatrove recorded as complete; any change starts the source over.

The validation slice is the `val_docs` documents with the smallest xxh64 of their id (at most
`val_max_fraction` of the source): chosen by content of the id alone, it does not depend on file
order, task count or reruns.
"""

from __future__ import annotations

import hashlib
import heapq
import json
import os
import shutil
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

import hydra
import numpy as np
import xxhash
from datatrove.data import Document
from datatrove.executor import LocalPipelineExecutor
from datatrove.pipeline.filters import LambdaFilter
from datatrove.pipeline.readers import JsonlReader
from datatrove.pipeline.tokens import DocumentTokenizer
from omegaconf import DictConfig, OmegaConf
from tqdm import tqdm

from curation.sources import CURATED_GLOB, curated_reader, normalized_weights
from curation.steps.sentencepiece_tokenizer import SentencePieceDocumentTokenizer, id_in
from data_contract.atomic_files import read_json, sha256_file
from data_contract.layout import DataLayout
from data_contract.manifest import MANIFEST, write_manifest
from data_contract.refusal import Refusal
from data_contract.token_files import token_dtype, token_file_entry
from data_contract.tokenizer_files import BPE_TOKENIZER_JSON, GPT2_EOS, tokenizer_identity


@dataclass
class _Split:
    files: list[str]
    documents: int
    bytes: int
    val: list[Document]


def split_validation(reader: JsonlReader, val_docs: int, max_fraction: float, progress: bool) -> _Split:
    """One pass over the source: count it and keep the val_docs documents with the smallest id hash."""
    files = sorted(reader.data_folder.list_files(glob_pattern=CURATED_GLOB, recursive=False))
    counted = {"documents": 0, "bytes": 0}

    def documents():
        for path in files:
            for document in reader.read_file(path):
                counted["documents"] += 1
                counted["bytes"] += len(document.text.encode())
                yield document

    stream = tqdm(documents(), desc="val split", unit=" docs", disable=not progress)
    smallest = heapq.nsmallest(val_docs, ((xxhash.xxh64_intdigest(d.id), n, d) for n, d in enumerate(stream)))
    keep = min(val_docs, int(counted["documents"] * max_fraction))
    return _Split(files, counted["documents"], counted["bytes"], [d for _, _, d in smallest[:keep]])


def _claim(out: Path, logs: Path, run_key: str) -> None:
    """Resume only the run that wrote `out`: any other run's token files and completions are cleared."""
    marker = out / ".run_key"
    if marker.is_file() and marker.read_text() == run_key:
        return
    for path in [*out.glob("*.ds*"), *out.glob("val/*.ds*")]:
        path.unlink()
    shutil.rmtree(logs, ignore_errors=True)
    out.mkdir(parents=True, exist_ok=True)
    marker.write_text(run_key)


def document_tokenizer(layout: DataLayout, kind: str, output: Path, name: str, threads: int,
                       batch_size: int) -> DocumentTokenizer:
    """The datatrove step that writes `name`'s token files with the data root's tokenizer, EOS after every
    document, in input order (the mixture plan shuffles windows, so a second shuffle would be waste)."""
    if kind == "gpt2":
        return DocumentTokenizer(str(output), str(layout.tokenizer / BPE_TOKENIZER_JSON), save_filename=name,
                                 eos_token=GPT2_EOS, batch_size=batch_size, shuffle_documents=False,
                                 save_final_metadata=False)
    return SentencePieceDocumentTokenizer(str(output), str(layout.tokenizer_model), name, threads, batch_size)


def _entries(folder: Path, layout: DataLayout, dtype: np.dtype) -> list[dict[str, Any]]:
    entries = []
    for path in sorted(folder.glob("*.ds")):
        if path.stat().st_size == 0:  # a task whose documents all went to validation
            path.unlink()
            Path(f"{path}.index").unlink(missing_ok=True)
            continue
        entries.append(token_file_entry(path, layout, dtype))
    return entries


def tokenize_source(cfg: DictConfig, source: str, tokenizer: dict[str, Any]) -> dict[str, Any]:
    layout = DataLayout(Path(cfg.paths.data_root))
    settings = cfg.token_files
    reader = curated_reader(layout, source)
    split = split_validation(reader, settings.val_docs, settings.val_max_fraction, settings.progress)
    inputs = [{"path": f"curated/{source}/{f}", "sha256": sha256_file(layout.curated(source) / f)}
              for f in split.files]
    run_key = hashlib.sha256(json.dumps([tokenizer["sha256"], inputs, settings.val_docs,
                                         settings.val_max_fraction]).encode()).hexdigest()[:12]
    logs = layout.logs("tokenize", source) / run_key
    out = layout.tokens(source)
    kind = tokenizer.get("kind", "sentencepiece")
    tasks = len(split.files)
    threads = max(1, (os.cpu_count() or 1) // min(settings.workers, tasks))

    val_ids = frozenset(d.id for d in split.val)
    train_reader = curated_reader(layout, source)
    train_reader.doc_progress = settings.progress
    _claim(out, logs, run_key)
    LocalPipelineExecutor(
        [train_reader, LambdaFilter(partial(id_in, ids=val_ids, keep=False)),
         document_tokenizer(layout, kind, out, source, threads, settings.batch_size)],
        tasks=tasks, workers=min(settings.workers, tasks), logging_dir=str(logs / "train")).run()
    LocalPipelineExecutor(
        [split.val, document_tokenizer(layout, kind, out / "val", f"{source}_val", threads, settings.batch_size)],
        tasks=1, workers=1, logging_dir=str(logs / "val")).run()

    dtype = token_dtype(tokenizer["vocab_size"])
    files, val_files = _entries(out, layout, dtype), _entries(out / "val", layout, dtype)
    val_bytes = sum(len(d.text.encode()) for d in split.val)
    manifest = {
        "source": source,
        "tokenizer": layout.relative(layout.tokenizer),
        "tokenizer_sha256": tokenizer["sha256"],
        "dtype": dtype.name,
        "vocab_size": tokenizer["vocab_size"],
        "eos_id": tokenizer["eos_id"],
        "tokens": sum(f["tokens"] for f in files),
        "documents": sum(f["documents"] for f in files),
        "bytes": split.bytes - val_bytes,
        "val_tokens": sum(f["tokens"] for f in val_files),
        "val_documents": len(split.val),
        "val_bytes": val_bytes,
        "val_document_ids": sorted(val_ids),
        "files": files,
        "val_files": val_files,
    }
    write_manifest(out, inputs=inputs, config=OmegaConf.to_container(settings, resolve=True),
                   outputs={f["path"]: f["sha256"] for f in files + val_files}, **manifest)
    return read_json(out / MANIFEST, "rerun `python -m curation.tokenize`")


def tokenize_sources(cfg: DictConfig) -> dict[str, dict[str, Any]]:
    """Tokenize every source the mixture names with a positive weight; returns their manifests."""
    layout = DataLayout(Path(cfg.paths.data_root))
    tokenizer = read_json(layout.tokenizer / MANIFEST, "run `python -m curation.train_tokenizer` first")
    if tokenizer_identity(layout.tokenizer) != tokenizer["sha256"]:
        raise Refusal(f"{layout.tokenizer} does not match its manifest's sha256: "
                      f"rerun `python -m curation.train_tokenizer`")
    weights = normalized_weights({name: spec.weight for name, spec in cfg.mixture.sources.items()},
                                 f"mixture {cfg.mixture.name}")
    sources = [name for name, weight in weights.items() if weight > 0]
    for name in sources:
        curated_reader(layout, name)  # refuse a missing source before tokenizing any
    return {name: tokenize_source(cfg, name, tokenizer) for name in sources}


@hydra.main(version_base="1.3", config_path="../conf", config_name="curate")
def main(cfg: DictConfig) -> None:
    manifests = tokenize_sources(cfg)
    width = max(map(len, manifests))
    for name, m in manifests.items():
        print(f"{name:<{width}}  {m['tokens']:>13,} train tokens in {len(m['files'])} files  "
              f"{m['val_tokens']:>11,} val tokens ({m['val_documents']} docs)")


if __name__ == "__main__":
    main()
