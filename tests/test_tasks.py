"""The sample task sets built from real text: Reuters-21578 (r-cran-tm) and held-out Wikipedia leads."""

from __future__ import annotations

import json
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest
import xxhash

from tests.commands import run_module
from tests.finetune_fixtures import task_data_root
from train.finetune.task_sets import heldout_wikipedia


@pytest.fixture(scope="module")
def tasks(tmp_path_factory: pytest.TempPathFactory, sample_corpus: Path) -> Path:
    if not (sample_corpus / "reuters" / ".complete").is_file():
        pytest.skip(f"Reuters articles missing in {sample_corpus / 'reuters'}: run `make data`")
    return task_data_root(tmp_path_factory, sample_corpus) / "tasks"


def read(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_reuters_sets_hold_both_topics_with_disjoint_splits(tasks: Path, sample_corpus: Path) -> None:
    train, validation = read(tasks / "reuters" / "train.jsonl"), read(tasks / "reuters" / "validation.jsonl")
    assert len(train) + len(validation) == 70  # r-cran-tm ships 50 acq and 20 crude articles
    assert {r["label"] for r in train} == {r["label"] for r in validation} == {"acq", "crude"}
    assert not {r["id"] for r in train} & {r["id"] for r in validation}
    first = train[0]
    body = ET.parse(sample_corpus / "reuters" / f"{first['id']}.xml").getroot().findtext("TEXT/BODY")
    assert first["text"].split()[:8] == body.split()[:8]
    headlines = read(tasks / "reuters_headlines" / "train.jsonl")
    assert headlines[0]["input"] == first["text"] and headlines[0]["response"].isupper()


def test_wikipedia_sets_come_from_held_out_articles_split_by_article(tasks: Path, sample_corpus: Path) -> None:
    extracts = json.loads((sample_corpus / "wiki/extracts/summaries_en-us.json").read_text())
    held_out = set(sorted(extracts, key=xxhash.xxh64_intdigest)[:50])
    sources = {split: {r["source"] for r in read(tasks / "next_sentence" / f"{split}.jsonl")}
               for split in ("train", "validation")}
    assert sources["train"] | sources["validation"] <= held_out
    assert not sources["train"] & sources["validation"]
    sentences = {a["title"]: a["sentences"] for a in heldout_wikipedia(sample_corpus, 50)}
    items = read(tasks / "zero_shot" / "wiki_next_sentence.jsonl")
    assert len(items) == sum(len(s) - 1 for s in sentences.values())
    for item in items:
        article = sentences[item["source"]]
        answer = item["choices"][item["label"]]
        position = article.index(answer)
        assert item["context"].endswith(article[position - 1])  # the answer is what really follows
        assert len(set(item["choices"])) == 4
        assert not set(item["choices"]) - {answer} & set(article)  # distractors come from other articles


def test_pair_sets_label_what_they_claim(tasks: Path, sample_corpus: Path) -> None:
    topic = {a["title"]: a["topic"] for a in heldout_wikipedia(sample_corpus, 50)}
    where = {s: a["title"] for a in heldout_wikipedia(sample_corpus, 50) for s in a["sentences"]}
    for pair in read(tasks / "wiki_relatedness" / "train.jsonl"):
        other = where[pair["sentence2"]]
        expected = 1.0 if other == pair["source"] else 0.5 if topic[other] == topic[pair["source"]] else 0.0
        assert pair["score"] == expected
    pairs = read(tasks / "wiki_continuation" / "validation.jsonl")
    assert {p["label"] for p in pairs} == {"continues", "unrelated"}
    for pair in pairs:
        assert (where[pair["hypothesis"]] == pair["source"]) == (pair["label"] == "continues")


def test_build_command_writes_the_sets_the_builder_does(tasks: Path, sample_corpus: Path, tmp_path: Path) -> None:
    result = run_module("train.build_task_sets", f"raw={sample_corpus}", f"out={tmp_path}", check=True)
    assert f"{tmp_path / 'reuters'}: " in result.stdout
    written = sorted(p.relative_to(tmp_path) for p in tmp_path.rglob("*.jsonl"))
    assert written == sorted(p.relative_to(tasks) for p in tasks.rglob("*.jsonl"))
    assert all((tmp_path / p).read_bytes() == (tasks / p).read_bytes() for p in written)
