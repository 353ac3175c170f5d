"""Zero-shot multiple choice: far above chance where the answer is the exact continuation, the same in
one process and on 2 ZeRO-3 ranks inside pretraining, and HellaSwag's file format."""

from __future__ import annotations

import json
import os
import random
from pathlib import Path

import pytest
import sentencepiece as spm
import torch

from model.pretrained import load_pretrained
from tests.commands import run_module
from tests.finetune_fixtures import memorised_articles, memoriser
from tests.train_fixtures import make_data_root
from train.finetune.task_sets import next_sentence_items, write_jsonl
from train.zero_shot import load_items, zero_shot_metrics


@pytest.fixture(scope="module")
def pretrained(tmp_path_factory: pytest.TempPathFactory, sample_corpus: Path) -> Path:
    return memoriser(tmp_path_factory, sample_corpus)


@pytest.fixture(scope="module")
def memorised_set(tmp_path_factory: pytest.TempPathFactory, sample_corpus: Path) -> Path:
    """Next-sentence items (train.finetune.task_sets' construction) over exactly the text the memoriser learned."""
    path = tmp_path_factory.mktemp("mc") / "memorised_next_sentence.jsonl"
    write_jsonl(path, next_sentence_items(memorised_articles(sample_corpus), random.Random(0)))
    return path


def test_zero_shot_accuracy_is_far_above_chance_on_exact_continuations(pretrained: Path, memorised_set: Path) -> None:
    model = load_pretrained(pretrained)
    tokenizer = spm.SentencePieceProcessor(model_file=str(pretrained / "tokenizer.model"))
    items = load_items(memorised_set)
    assert len(items) >= 20 and all(len(item.choices) == 4 for item in items)  # chance is 0.25
    results = zero_shot_metrics(model, [str(memorised_set)], tokenizer.encode, tokenizer.eos_id(), 0, 1)
    for key in ("acc", "acc_norm", "acc_per_token"):
        assert results[f"eval/memorised_next_sentence/{key}"] >= 0.8, results


def test_evaluate_command_prints_the_accuracies(pretrained: Path, memorised_set: Path) -> None:
    result = run_module("train.evaluate", f"init={pretrained}", f"tasks=[{memorised_set}]", "threads=1", timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]
    assert json.loads(result.stdout.splitlines()[-1])["eval/memorised_next_sentence/acc"] >= 0.8
    missing = run_module("train.evaluate", f"init={pretrained.parent / 'nothing'}", f"tasks=[{memorised_set}]",
                         timeout=300)
    assert missing.returncode == 1 and missing.stderr.startswith("evaluate: ") and "no config.json" in missing.stderr


def test_hellaswag_lines_are_prepared_as_lm_eval_does(tmp_path: Path) -> None:
    # One line in the layout of HellaSwag's released hellaswag_val.jsonl.
    record = {"ind": 24, "activity_label": "Roof shingle removal", "ctx_a": "A man is sitting on a roof.",
              "ctx_b": "he", "ctx": "A man is sitting on a roof. he", "split": "val", "split_type": "indomain",
              "label": 3, "source_id": "activitynet~v_-JhWjGDPHMY",
              "endings": ["is using wrap to wrap a pair of skis.", "is ripping level tiles off.",
                          "is holding a rubik's cube.", "starts pulling up roofing on a roof [title] Remove it."]}
    path = tmp_path / "hellaswag_val.jsonl"
    path.write_text(json.dumps(record) + "\n")
    (item,) = load_items(path)
    assert item.context == "Roof shingle removal: A man is sitting on a roof. He"
    assert item.choices[3] == "starts pulling up roofing on a roof. Remove it." and item.label == 3
    path.write_text(json.dumps({"question": "?", "answers": ["a", "b"]}) + "\n")
    with pytest.raises(ValueError, match=r"hellaswag_val\.jsonl:1: neither"):
        load_items(path)


@pytest.mark.slow
def test_in_loop_eval_on_two_zero3_ranks_matches_one_process(tmp_path: Path, sample_corpus: Path,
                                                             memorised_set: Path) -> None:
    data_root = make_data_root(tmp_path / "data", sample_corpus, seq_len=64)
    run_dir = tmp_path / "run"
    run_module("torch.distributed.run", "--nproc_per_node", "2", "--master_port", str(32500 + os.getpid() % 1000),
               "-m", "train", f"run_dir={run_dir}", f"paths.data_root={data_root}", "model.n_layer=2",
               "model.n_embd=64", "model.n_head=2", "model.block_size=64", "train.seq_len=64",
               "train.micro_batch_size=4", "train.global_batch_size=8", "train.max_steps=2", "eval.every=2",
               "eval.max_batches=2", "eval.sample_every=0", "precision=fp32", "wandb.enabled=false",
               f"eval.tasks=[{memorised_set}]", env={"OMP_NUM_THREADS": "1"}, check=True)
    records = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    logged = next(r for r in records if "eval/memorised_next_sentence/acc" in r)
    assert logged["step"] == 2 and "val/loss" in logged
    model = load_pretrained(run_dir)
    tokenizer = spm.SentencePieceProcessor(model_file=str(data_root / "tokenizer" / "spm.model"))
    torch.set_num_threads(1)
    alone = zero_shot_metrics(model, [str(memorised_set)], tokenizer.encode, tokenizer.eos_id(), 0, 1)
    assert {k: logged[k] for k in alone} == alone
