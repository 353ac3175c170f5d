"""Small real training data for trainer tests, written through the data contract (data_contract/).

Also how tests launch the trainer (`launch`) and read a run back.

Two sources cut from the real sample corpus (Austen, Botchan), tokenized with a sentencepiece model
that ships in the corpus (or GPT-2's released BPE); a plan that alternates the sources over shuffled
windows. The trainer
tests do not depend on the curation code (but for curation.assets, which fetches GPT-2's released files), only on
the contract's paths, manifests and mixture spec.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import numpy as np

from curation.assets import ensure_gpt2_bpe
from data_contract.atomic_files import sha256_file, write_atomic
from data_contract.layout import DataLayout
from data_contract.manifest import write_manifest
from data_contract.mixture_spec import PLAN_SAMPLE, PLAN_SOURCE, write_mixture_spec
from data_contract.tokenizer_files import (
    BPE_MERGES,
    BPE_TOKENIZER_JSON,
    BPE_VOCAB,
    GPT2_EOS,
    TOKENIZER_MODEL,
    byte_level_bpe,
    tokenizer_identity,
)
from tests.commands import run_command

SOURCES = {"austen": "books/austen/persuasion.txt", "botchan": "books/gutenberg/pg8868_botchan.txt"}
TOKENIZER = "tokenizers/sentencepiece/botchan_en_bpe_1000.model"


def _write_tokens(path: Path, docs: list[list[int]], eos_id: int) -> int:
    path.parent.mkdir(parents=True, exist_ok=True)
    stream, ends = [], []
    for doc in docs:
        stream.extend([*doc, eos_id])
        ends.append(len(stream))
    np.asarray(stream, dtype="<u2").tofile(path)
    np.asarray(ends, dtype="<u8").tofile(path.with_name(path.name + ".index"))
    return len(stream)


def _install_tokenizer(layout: DataLayout, corpus: Path, kind: str) -> tuple[Callable[[list[str]], list[list[int]]],
                                                                            int, int]:
    """The data root's tokenizer (the corpus's sentencepiece model, or GPT-2's); (encode, vocab size, eos id)."""
    import sentencepiece as spm

    if kind == "gpt2":
        for name in (BPE_VOCAB, BPE_MERGES):
            write_atomic(layout.tokenizer / name, (ensure_gpt2_bpe() / name).read_bytes())
        bpe = byte_level_bpe(layout.tokenizer)
        write_atomic(layout.tokenizer / BPE_TOKENIZER_JSON, bpe.to_str())
        vocab_size, eos_id = bpe.get_vocab_size(), bpe.token_to_id(GPT2_EOS)
        write_manifest(layout.tokenizer, inputs=[], config={}, outputs={}, kind="gpt2",
                       sha256=tokenizer_identity(layout.tokenizer), vocab_size=vocab_size, eos_id=eos_id)
        return (lambda texts: [e.ids for e in bpe.encode_batch(texts)]), vocab_size, eos_id
    write_atomic(layout.tokenizer_model, (corpus / TOKENIZER).read_bytes())
    processor = spm.SentencePieceProcessor(model_file=str(layout.tokenizer_model))
    write_manifest(layout.tokenizer, inputs=[TOKENIZER], config={},
                   outputs={TOKENIZER_MODEL: sha256_file(layout.tokenizer_model)},
                   sha256=sha256_file(layout.tokenizer_model), vocab_size=processor.get_piece_size(),
                   eos_id=processor.eos_id(), bos_id=processor.bos_id(), pad_id=processor.pad_id(),
                   unk_id=processor.unk_id())
    return processor.encode, processor.get_piece_size(), processor.eos_id()


def make_data_root(root: Path, corpus: Path, seq_len: int = 64, seed: int = 0, mixture: str = "demo",
                   tokenizer: str = "sentencepiece") -> Path:
    layout = DataLayout(root)
    encode, vocab_size, eos_id = _install_tokenizer(layout, corpus, tokenizer)
    tokenizer_sha = tokenizer_identity(layout.tokenizer)
    rng = np.random.default_rng(seed)
    sources, windows = [], []
    for name, relative in SOURCES.items():
        lines = (corpus / relative).read_text(encoding="utf-8-sig").splitlines()
        docs = encode(["\n".join(lines[i:i + 20]) for i in range(0, len(lines), 20)])
        n_val = max(len(docs) // 20, 40)
        train_path = layout.tokens(name) / "00000.ds"
        val_path = layout.tokens(name) / "val" / "00000.ds"
        train_tokens = _write_tokens(train_path, docs[n_val:], eos_id)
        val_tokens = _write_tokens(val_path, docs[:n_val], eos_id)
        n_windows = (train_tokens - 1) // seq_len
        windows.append(rng.permutation(n_windows))
        sources.append({
            "name": name, "weight": 0.5, "tokens_available": train_tokens,
            "token_files": [{"path": layout.relative(train_path), "tokens": train_tokens,
                             "sha256": sha256_file(train_path)}],
            "val_files": [{"path": layout.relative(val_path), "tokens": val_tokens, "sha256": sha256_file(val_path)}]})
    per_source = min(len(w) for w in windows)
    plan_source = np.tile(np.arange(len(sources), dtype=np.uint8), per_source)
    plan_sample = np.stack([w[:per_source] for w in windows], axis=1).reshape(-1).astype(np.int64)
    mix_dir = layout.mix(mixture)
    mix_dir.mkdir(parents=True, exist_ok=True)
    np.save(mix_dir / PLAN_SOURCE, plan_source)
    np.save(mix_dir / PLAN_SAMPLE, plan_sample)
    for source in sources:
        source["tokens_planned"] = per_source * seq_len
        source["measured_share"] = 1 / len(sources)
        source["epochs"] = source["tokens_planned"] / source["tokens_available"]
    write_mixture_spec(mix_dir, {
        "name": mixture, "seq_len": seq_len, "seed": seed, "tokens": len(plan_source) * seq_len,
        "num_samples": len(plan_source), "tokenizer_sha256": tokenizer_sha, "dtype": "uint16",
        "vocab_size": vocab_size, "eos_id": eos_id, "sources": sources})
    return root


SMALL_MODEL = ["model.n_layer=2", "model.n_embd=64", "model.n_head=2", "model.block_size=64", "train.seq_len=64",
               "train.micro_batch_size=4", "train.global_batch_size=8", "eval.max_batches=4",
               "eval.sample_tokens=8", "wandb.enabled=true"]


def launch(ranks: int, run_dir: Path, data_root: Path, *overrides: str, launcher: str = "deepspeed",
           check: bool = True) -> subprocess.CompletedProcess[str]:
    args = [f"run_dir={run_dir}", f"paths.data_root={data_root}", *SMALL_MODEL, *overrides]
    if launcher == "deepspeed":
        cmd = [str(Path(sys.executable).parent / "deepspeed"), "--num_gpus", str(ranks), "--master_port",
               str(29500 + os.getpid() % 1000), "--module", "train", *args]
    elif launcher == "torchrun":
        cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", str(ranks), "--master_port",
               str(30500 + os.getpid() % 1000), "-m", "train", *args]
    else:
        cmd = [sys.executable, "-m", "train", *args]
    return run_command(cmd, env={"OMP_NUM_THREADS": "1"}, check=check)


def read_metrics(run_dir: Path) -> list[dict]:
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


def losses(run_dir: Path) -> dict[int, float]:
    return {m["step"]: m["train/loss"] for m in read_metrics(run_dir) if "train/loss" in m}


def wandb_ids(run_dir: Path) -> set[str]:
    return {p.name.rsplit("-", 1)[-1] for p in (run_dir / "wandb").glob("offline-run-*")}
