"""curation.tokenize on curated sample-corpus documents, then curation.mix over the real token files."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import sentencepiece as spm

from curation.mix import build_mix
from curation.tokenize import tokenize_sources
from curation.train_tokenizer import train_tokenizer
from tests.curation_fixtures import compose_curate, write_curated

SETTINGS = ("tokenizer.vocab_size=2048", "tokenizer.sample_bytes=2000000", "token_files.val_docs=20",
            "token_files.progress=false")


@pytest.fixture(scope="module")
def tokenized(sample_corpus: Path, tmp_path_factory: pytest.TempPathFactory):
    root = tmp_path_factory.mktemp("tokenize")
    documents = write_curated(root, sample_corpus)
    cfg = compose_curate(root, *SETTINGS)
    processor = spm.SentencePieceProcessor(model_file=str(train_tokenizer(cfg) / "spm.model"))
    return root, cfg, documents, processor, tokenize_sources(cfg)


def _stream(root: Path, entries: list[dict]) -> np.ndarray:
    return np.concatenate([np.fromfile(root / e["path"], dtype="<u2") for e in entries])


def _documents(root: Path, entries: list[dict]) -> list[np.ndarray]:
    docs = []
    for entry in entries:
        ids = np.fromfile(root / entry["path"], dtype="<u2")
        ends = np.fromfile(root / f"{entry['path']}.index", dtype="<u8").astype(np.int64)
        docs += np.split(ids, ends[:-1])
    return docs


def test_token_files_equal_a_direct_sentencepiece_encode(tokenized) -> None:
    root, _, documents, processor, manifests = tokenized
    for source, docs in documents.items():
        manifest = manifests[source]
        val_ids = set(manifest["val_document_ids"])
        # JsonlWriter put docs[rank::2] in shard `rank`; tokenize keeps shard order and document order
        train = [d.text for rank in range(2) for d in docs[rank::2] if d.id not in val_ids]
        expected = processor.encode(train, add_eos=True)
        found = _documents(root, manifest["files"])
        assert [list(ids) for ids in found] == expected
        assert manifest["tokens"] == sum(map(len, expected)) == len(_stream(root, manifest["files"]))
        assert manifest["documents"] == len(train)
        assert all(ids[-1] == processor.eos_id() and processor.eos_id() not in ids[:-1] for ids in found)


def test_val_slice_is_held_out_by_document(tokenized) -> None:
    root, _, documents, processor, manifests = tokenized
    for source, docs in documents.items():
        manifest = manifests[source]
        expected = min(20, int(len(docs) * 0.2))
        assert manifest["val_documents"] == len(manifest["val_document_ids"]) == expected
        val_texts = [d.text for d in docs if d.id in set(manifest["val_document_ids"])]
        val_docs = _documents(root, manifest["val_files"])
        assert sorted(map(list, val_docs)) == sorted(processor.encode(val_texts, add_eos=True))
        train = {tuple(ids) for ids in _documents(root, manifest["files"])}
        assert not any(tuple(ids) in train for ids in val_docs)
        assert manifest["tokenizer_sha256"] == json.loads((root / "tokenizer/manifest.json").read_text())["sha256"]
        assert manifest["dtype"] == "uint16"


def test_rerun_redoes_only_a_missing_task(tokenized) -> None:
    root, cfg, _, _, manifests = tokenized
    files = sorted((root / "tokens").rglob("*.ds*"))
    before = {p: (p.read_bytes(), p.stat().st_mtime_ns) for p in files}
    lost = root / manifests["wikipedia"]["files"][1]["path"]
    lost.unlink()
    completion = next((root / "work/logs/tokenize/wikipedia").glob("*/train/completions/00001"))
    completion.unlink()

    assert tokenize_sources(cfg) == manifests
    assert sorted((root / "tokens").rglob("*.ds*")) == files
    for path, (content, mtime) in before.items():
        assert path.read_bytes() == content
        assert (path.stat().st_mtime_ns == mtime) == (path != lost and path.name != f"{lost.name}.index")


def test_plan_over_real_tokens_never_reads_the_val_slice(tokenized) -> None:
    root, _, _, _, manifests = tokenized
    out = build_mix(compose_curate(root, *SETTINGS, "mix_plan.tokens=300000", "mix_plan.seq_len=64"))
    mixture = json.loads((out / "mixture.json").read_text())
    plan_source, plan_sample = np.load(out / "plan_source.npy"), np.load(out / "plan_sample.npy")
    for i, source in enumerate(mixture["sources"]):
        manifest = manifests[source["name"]]
        assert source["token_files"] == [{k: f[k] for k in ("path", "tokens", "sha256")} for f in manifest["files"]]
        stream = _stream(root, source["token_files"])
        read = {tuple(stream[w * 64: w * 64 + 65]) for w in plan_sample[plan_source == i]}
        assert all(len(window) == 65 for window in read)
        for doc in _documents(root, manifest["val_files"]):
            # no window of the plan holds a whole val document, nor any 65-token stretch of one
            stretches = {tuple(doc[s: s + 65]) for s in range(0, max(1, len(doc) - 64))}
            assert not stretches & read


def test_changed_split_starts_the_source_over(tokenized) -> None:
    root, _, _, _, manifests = tokenized
    changed = tokenize_sources(compose_curate(root, *SETTINGS, "token_files.val_docs=5"))
    assert changed["wikipedia"]["val_documents"] == 5
    for source, manifest in changed.items():
        listed = {root / f["path"] for f in manifest["files"] + manifest["val_files"]}
        assert set((root / "tokens" / source).rglob("*.ds")) == listed
    assert tokenize_sources(compose_curate(root, *SETTINGS)) == manifests


def test_gpt2_tokenizer_writes_the_released_ids_and_a_plan(sample_corpus: Path, tmp_path: Path) -> None:
    """tokenizer=gpt2: GPT-2's released BPE is installed, not trained; its token files hold exactly what
    transformers' GPT2TokenizerFast gives each document, then <|endoftext|> (50256), as uint16."""
    from transformers import GPT2TokenizerFast

    from curation.assets import ensure_gpt2_bpe
    from data_contract.tokenizer_files import tokenizer_identity

    documents = write_curated(tmp_path, sample_corpus)
    settings = ("tokenizer=gpt2", "tokenizer.sample_bytes=200000", "token_files.val_docs=5", "token_files.progress=false")
    cfg = compose_curate(tmp_path, *settings)
    folder = train_tokenizer(cfg)
    manifest = json.loads((folder / "manifest.json").read_text())
    assert (manifest["kind"], manifest["vocab_size"], manifest["eos_id"]) == ("gpt2", 50257, 50256)
    assert manifest["sha256"] == tokenizer_identity(folder) == tokenizer_identity(ensure_gpt2_bpe())
    assert sorted(p.name for p in folder.iterdir()) == ["manifest.json", "merges.txt", "tokenizer.json", "vocab.json"]

    released = ensure_gpt2_bpe()
    vocab = json.loads((released / "vocab.json").read_text())
    merges = [tuple(line.split()) for line in (released / "merges.txt").read_text().splitlines()[1:] if line]
    reference = GPT2TokenizerFast(vocab=vocab, merges=merges)
    assert reference.encode("Hello world") == [15496, 995]

    manifests = tokenize_sources(cfg)
    for source, docs in documents.items():
        val_ids = set(manifests[source]["val_document_ids"])
        train = [d.text for rank in range(2) for d in docs[rank::2] if d.id not in val_ids]
        assert manifests[source]["dtype"] == "uint16"
        assert [list(ids) for ids in _documents(tmp_path, manifests[source]["files"])] == [
            [*reference.encode(text), 50256] for text in train]
    plan = json.loads((build_mix(compose_curate(tmp_path, *settings, "mix_plan.tokens=50000", "mix_plan.seq_len=64"))
                       / "mixture.json").read_text())
    assert (plan["vocab_size"], plan["tokenizer_sha256"]) == (50257, manifest["sha256"])
