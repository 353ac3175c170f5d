"""curation.train_tokenizer on curated documents made from the real sample corpus."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import sentencepiece as spm

from curation.train_tokenizer import train_tokenizer
from data_contract.atomic_files import sha256_file
from data_contract.refusal import Refusal
from tests.curation_fixtures import compose_curate, write_curated


@pytest.fixture(scope="module")
def trained(sample_corpus: Path, tmp_path_factory: pytest.TempPathFactory):
    root = tmp_path_factory.mktemp("tokenizer")
    documents = write_curated(root, sample_corpus)
    cfg = compose_curate(root, "tokenizer.vocab_size=2048", "tokenizer.sample_bytes=3000000")
    folder = train_tokenizer(cfg)
    return root, documents, spm.SentencePieceProcessor(model_file=str(folder / "spm.model"))


def test_round_trip_is_lossless_on_every_document(trained) -> None:
    _, documents, processor = trained
    texts = [doc.text for docs in documents.values() for doc in docs]
    encoded = processor.encode(texts)
    assert [processor.decode(ids) for ids in encoded] == texts
    assert all(processor.unk_id() not in ids for ids in encoded)


def test_manifest_records_model_ids_and_bytes_per_token(trained) -> None:
    root, documents, processor = trained
    manifest = json.loads((root / "tokenizer/manifest.json").read_text())
    assert manifest["sha256"] == sha256_file(root / "tokenizer/spm.model")
    assert (manifest["vocab_size"], manifest["model_type"]) == (2048, "bpe")
    assert [manifest[k] for k in ("unk_id", "bos_id", "eos_id", "pad_id")] == [0, 1, 2, 3]
    assert processor.eos_id() == manifest["eos_id"] and processor.pad_id() == manifest["pad_id"]
    assert set(manifest["bytes_per_token"]) == set(documents)
    for source, sample in manifest["sample"].items():
        assert manifest["bytes_per_token"][source] == pytest.approx(sample["bytes"] / sample["tokens"])
    # English prose compresses better than a byte per token; books (long plain prose) best of all
    assert min(manifest["bytes_per_token"].values()) > 1.5
    assert manifest["bytes_per_token"]["books"] == max(manifest["bytes_per_token"].values())


def test_sample_follows_mixture_weights(trained) -> None:
    """Large sources give weight x sample_bytes (to within one document); small ones give all they have."""
    root, documents, _ = trained
    manifest = json.loads((root / "tokenizer/manifest.json").read_text())
    weights = {"commoncrawl": 0.5, "webtext2": 0.2, "books": 0.15, "wikipedia": 0.15}
    for source in ("books", "wikipedia"):
        longest = max(len(d.text.encode()) for d in documents[source])
        assert abs(manifest["sample"][source]["bytes"] - weights[source] * 3_000_000) <= 2 * longest
    assert manifest["sample"]["webtext2"]["documents"] == len(documents["webtext2"])


def test_vocab_too_large_for_sample_is_refused_before_writing(sample_corpus: Path, tmp_path: Path) -> None:
    write_curated(tmp_path, sample_corpus)
    cfg = compose_curate(tmp_path, "tokenizer.vocab_size=60000", "tokenizer.sample_bytes=20000")
    with pytest.raises(Refusal, match=r"tokenizer.vocab_size=60000"):
        train_tokenizer(cfg)
    assert not (tmp_path / "tokenizer").exists()


def test_missing_curated_source_is_named(tmp_path: Path) -> None:
    with pytest.raises(Refusal, match=r"mixture source 'commoncrawl' has no curated documents"):
        train_tokenizer(compose_curate(tmp_path))
