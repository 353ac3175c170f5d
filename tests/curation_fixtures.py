"""Helpers shared by the curation tests: the Hydra config, the CLI, and reading outputs."""

from __future__ import annotations

import gzip
import json
import subprocess
import sys
from pathlib import Path

from datatrove.data import Document
from datatrove.pipeline.writers import JsonlWriter
from hydra import compose, initialize_config_dir
from omegaconf import DictConfig

from tests.commands import REPO, run_command

# A slice keeps the integration runs short: every demo source, Wikipedia's first 1500 extracts.
SLICE = ("sources.wikipedia.reader.limit=1500",)


def curate_config(*overrides: str) -> DictConfig:
    with initialize_config_dir(config_dir=str(REPO / "conf"), version_base="1.3"):
        return compose(config_name="curate", overrides=list(overrides))


def curate_command(data_root: Path, raw_root: Path, *overrides: str, module: str = "curation.run") -> list[str]:
    return [sys.executable, "-m", module, f"paths.data_root={data_root}", f"paths.raw_root={raw_root}",
            *SLICE, *overrides]


def run_curation(data_root: Path, raw_root: Path, *overrides: str, module: str = "curation.run") -> subprocess.CompletedProcess:
    return run_command(curate_command(data_root, raw_root, *overrides, module=module), check=True)


def read_docs(folder: Path) -> list[dict]:
    return [json.loads(line) for path in sorted(folder.glob("*.jsonl.gz")) for line in gzip.open(path, "rt")]


TRICKY = ["  two  spaces\n\n\tand a tab\r\n", " leading", "trailing ", "\n", "emoji 🦀, 中文, العربية",
          "x\x00y", "      indented code\n    more"]


def compose_curate(data_root: Path, *overrides: str) -> DictConfig:
    """The curation config with its data under `data_root`."""
    return curate_config(f"paths.data_root={data_root}", *overrides)


def write_curated(data_root: Path, corpus: Path) -> dict[str, list[Document]]:
    """Demo-source slices of the sample corpus as datatrove JSONL, two shards per source (as curation writes)."""
    wiki = json.loads((corpus / "wiki/extracts/summaries_en-us.json").read_text())
    news = sorted((corpus / "web/html/newspaper4k/txt").glob("*.txt"))
    books = sorted((corpus / "books/austen").glob("*.txt"))[:2]
    documents = {
        "commoncrawl": [Document(text=p.read_text(), id=f"cc/{p.name}") for p in news[::2]],
        "webtext2": [Document(text=p.read_text(), id=f"wt/{p.name}") for p in news[1::2]],
        "books": [Document(text=p.read_text(), id=p.name) for p in books],
        "wikipedia": [Document(text=v["extract"], id=k) for k, v in list(wiki.items())[:1500]],
    }
    documents["commoncrawl"] += [Document(text=t, id=f"tricky/{n}") for n, t in enumerate(TRICKY)]
    for source, docs in documents.items():
        writer = JsonlWriter(str(data_root / "curated" / source), output_filename="${rank}.jsonl.gz")
        for rank in range(2):
            with writer:
                for doc in docs[rank::2]:
                    writer.write(doc, rank=rank)
    return documents
