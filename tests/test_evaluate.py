"""Zero- and few-shot multiple choice: far above chance where the answer is the exact continuation; shots
drawn from the training split, never the item itself; the command's two harnesses giving the same numbers
on the project's sets; the same in one process and on 2 ZeRO-3 ranks inside pretraining, for both
harnesses; and HellaSwag's file format."""

from __future__ import annotations

import json
import os
import random
from pathlib import Path

import pytest
import sentencepiece as spm
import torch
from omegaconf import OmegaConf

from model.load import load_model_and_tokenizer
from model.saved_model import load_pretrained
from tests.commands import REPO, run_module
from tests.finetune_fixtures import memorised_articles, memoriser
from tests.lm_eval_fixtures import lm_eval_rolling_and_generation_tasks, lm_eval_task
from tests.train_fixtures import make_data_root
from train.evaluate import evaluate, table
from train.finetune.task_sets import next_sentence_items, write_jsonl
from train.lm_eval_adapter import lm_eval_metrics
from train.multiple_choice import FewShot, Item, draw_shots, load_items, prompt, shot_pool, zero_shot_metrics


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
    assert len(items) >= 20 and all(len(item.choices) == 4 for item in items)
    # the memoriser learned its documents after an EOS, at fixed positions: scored the same way
    widths: list[int] = []  # of each forward's input (one per item: its answers side by side)
    model.register_forward_hook(lambda _module, inputs, _output: widths.append(inputs[0].size(1)))
    zero = zero_shot_metrics(model, [str(memorised_set)], tokenizer.encode, tokenizer.eos_id(), 0, 1,
                             eos_before_context=True)
    assert zero["eval/memorised_next_sentence/chance"] == 0.25
    for key in ("acc", "acc_norm", "acc_per_token"):
        assert zero[f"eval/memorised_next_sentence/{key}"] >= 0.8, zero
    # two shots from the set itself go before each item, cut from the left where the block is full (which
    # takes this memoriser's EOS and positions away from it: no accuracy is expected of it here)
    few = zero_shot_metrics(model, [str(memorised_set)], tokenizer.encode, tokenizer.eos_id(), 0, 1,
                            FewShot(shots=2, source="self"), eos_before_context=True)
    assert set(few) == set(zero) and few["eval/memorised_next_sentence/chance"] == 0.25
    zero_widths, few_widths = widths[: len(items)], widths[len(items):]
    assert all(z <= f <= model.config.block_size for z, f in zip(zero_widths, few_widths, strict=True))
    assert sum(few_widths) > sum(zero_widths) and max(few_widths) == model.config.block_size


def _items(prefix: str, count: int) -> list[dict]:
    return [{"context": f"{prefix} context {i}.", "choices": [f"right {i}", f"wrong {i}"], "label": 0}
            for i in range(count)]


def test_shots_come_from_the_training_split_never_the_item_itself(tmp_path: Path) -> None:
    write_jsonl(tmp_path / "task" / "train.jsonl", _items("train", 10))
    write_jsonl(tmp_path / "task" / "validation.jsonl", _items("validation", 5))
    validation = tmp_path / "task" / "validation.jsonl"
    items = load_items(validation)
    fewshot = FewShot(shots=3, seed=7, separator="\n\n")
    pool = shot_pool(validation, items, fewshot)
    assert pool == load_items(tmp_path / "task" / "train.jsonl")
    draws = [draw_shots(pool, item, i, fewshot) for i, item in enumerate(items)]
    assert all(len(shots) == 3 and len(set(map(str, shots))) == 3 and all(s in pool for s in shots) for shots in draws)
    assert draws == [draw_shots(pool, item, i, fewshot) for i, item in enumerate(items)]  # a function of seed and index
    assert len({str(shots) for shots in draws}) > 1
    assert draws != [draw_shots(pool, item, i, FewShot(3, 8)) for i, item in enumerate(items)]
    first = draws[0]
    assert prompt(items[0], first, "\n\n") == "\n\n".join(
        [f"{s.context} {s.choices[s.label]}" for s in first] + ["validation context 0."])

    itself = FewShot(shots=4, source="self")  # every other item of a 5-item set: never the item itself
    for i, item in enumerate(items):
        assert sorted(map(str, draw_shots(shot_pool(validation, items, itself), item, i, itself))) == sorted(
            str(other) for other in items if other != item)

    alone = tmp_path / "alone" / "set.jsonl"
    write_jsonl(alone, _items("alone", 3))
    with pytest.raises(ValueError, match=r"set\.jsonl: no training split .*fewshot_from=self"):
        shot_pool(alone, load_items(alone), FewShot(shots=1))
    with pytest.raises(ValueError, match=r"3 examples, too few for shots=3"):
        shot_pool(alone, load_items(alone), FewShot(shots=3, source="self"))
    assert shot_pool(alone, load_items(alone), FewShot(shots=1, source=str(tmp_path / "task" / "train.jsonl"))) == pool
    assert draw_shots([Item("a", ["b"], 0)] * 3 + [Item("c", ["d"], 0)], Item("a", ["b"], 0), 0, FewShot(1)) == [
        Item("c", ["d"], 0)]  # copies of the item in the pool are never drawn either


def test_evaluate_command_gives_the_same_numbers_with_either_harness(pretrained: Path, memorised_set: Path,
                                                                      tmp_path: Path) -> None:
    # the project's lm-eval tasks (conf/lm_eval_tasks/) read data/tasks/ under the directory the command runs in
    tasks = tmp_path / "data" / "tasks"
    lines = memorised_set.read_text().splitlines(keepends=True)
    for path, part in ((tasks / "zero_shot" / "wiki_next_sentence.jsonl", lines),
                       (tasks / "next_sentence" / "train.jsonl", lines[::2]),
                       (tasks / "next_sentence" / "validation.jsonl", lines[1::2])):
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text("".join(part))
    settings = OmegaConf.merge(OmegaConf.load(REPO / "conf" / "evaluate.yaml"),
                               {"init": str(pretrained), "threads": 1, "eos_before_context": True})
    sets = [str(tasks / "zero_shot" / "wiki_next_sentence.jsonl"), str(tasks / "next_sentence" / "validation.jsonl")]
    ours = evaluate(OmegaConf.merge(settings, {"tasks": sets}))
    assert ours["eval/wiki_next_sentence/acc"] >= 0.8 and ours["eval/wiki_next_sentence/chance"] == 0.25
    assert table(ours, 0)[0].split()[-1] == "chance" and table(ours, 0)[1].split()[-1] == "0.2500"
    harness = run_module("train.evaluate", f"init={pretrained}", "threads=1", "eos_before_context=true",
                         "harness=lm_eval", "tasks=[wiki_next_sentence,next_sentence]", cwd=tmp_path, timeout=300)
    assert harness.returncode == 0, harness.stderr[-2000:]
    theirs = json.loads(harness.stdout.splitlines()[-1])
    for name in ("wiki_next_sentence", "next_sentence"):
        for metric in ("acc", "acc_norm", "chance"):
            assert theirs[f"eval/{name}/{metric}"] == ours[f"eval/{name}/{metric}"], (name, metric, ours, theirs)
    with pytest.raises(ValueError, match=r"lm_eval_include: nowhere is not a folder of lm-eval task YAMLs"):
        evaluate(OmegaConf.merge(settings, {"harness": "lm_eval", "tasks": ["x"], "lm_eval_include": ["nowhere"]}))
    with pytest.raises(ValueError, match=r"nothing does not exist"):
        evaluate(OmegaConf.merge(settings, {"init": str(tmp_path / "nothing"), "tasks": sets}))


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
    with pytest.raises(ValueError, match=r"hellaswag_train\.jsonl is not beside it"):  # HellaSwag's split naming
        shot_pool(path, [item], FewShot(shots=1))
    path.write_text(json.dumps({"question": "?", "answers": ["a", "b"]}) + "\n")
    with pytest.raises(ValueError, match=r"hellaswag_val\.jsonl:1: neither"):
        load_items(path)


def _pretrain_two_ranks(tmp_path: Path, corpus: Path, *eval_settings: str) -> tuple[Path, dict]:
    """2 steps on 2 ZeRO-3 ranks with an evaluation at the end; the run dir and the metrics it logged there."""
    data_root = make_data_root(tmp_path / "data", corpus, seq_len=64)
    run_dir = tmp_path / "run"
    run_module("torch.distributed.run", "--nproc_per_node", "2", "--master_port", str(32500 + os.getpid() % 1000),
               "-m", "train", f"run_dir={run_dir}", f"paths.data_root={data_root}", "model.n_layer=2",
               "model.n_embd=64", "model.n_head=2", "model.block_size=64", "train.seq_len=64",
               "train.micro_batch_size=4", "train.global_batch_size=8", "train.max_steps=2", "eval.every=2",
               "eval.max_batches=2", "eval.sample_every=0", "precision=fp32", "wandb.enabled=false",
               *eval_settings, env={"OMP_NUM_THREADS": "1"}, check=True)
    records = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    logged = next(r for r in records if "eval/memorised_next_sentence/acc" in r)
    assert logged["step"] == 2 and "val/loss" in logged
    return run_dir, logged


@pytest.mark.slow
def test_in_loop_fewshot_eval_on_two_zero3_ranks_matches_one_process(tmp_path: Path, sample_corpus: Path,
                                                                     memorised_set: Path) -> None:
    # a third of the set: the items split unevenly over the ranks, and the shots come from the rest
    subset = tmp_path / "subset" / memorised_set.name
    subset.parent.mkdir()
    subset.write_text("".join(memorised_set.read_text().splitlines(keepends=True)[:11]))
    run_dir, logged = _pretrain_two_ranks(tmp_path, sample_corpus, f"eval.tasks=[{subset}]", "eval.shots=1",
                                          "eval.fewshot_from=self")
    model, tokenizer, _ = load_model_and_tokenizer(run_dir)
    torch.set_num_threads(1)
    alone = zero_shot_metrics(model, [str(subset)], tokenizer.encode, tokenizer.eos_id, 0, 1,
                              FewShot(shots=1, source="self"))
    assert {k: logged[k] for k in alone} == alone


@pytest.mark.slow
def test_in_loop_lm_eval_on_two_zero3_ranks_matches_one_process(tmp_path: Path, sample_corpus: Path,
                                                                memorised_set: Path) -> None:
    # multiple choice, rolling log-likelihood (windows per document vary) and generation (lengths vary): each
    # rank scores its share, and no rank may run fewer forwards than another
    include = lm_eval_task(tmp_path / "lm_eval_tasks", "memorised_next_sentence", {"test": memorised_set})
    tasks = ["memorised_next_sentence", *lm_eval_rolling_and_generation_tasks(include, "memorised", memorised_set)]
    run_dir, logged = _pretrain_two_ranks(tmp_path, sample_corpus, "eval.harness=lm_eval",
                                          f"eval.tasks=[{','.join(tasks)}]", f"eval.lm_eval_include=[{include}]")
    model, tokenizer, _ = load_model_and_tokenizer(run_dir)
    torch.set_num_threads(1)
    alone = lm_eval_metrics(model, tokenizer, tasks, [str(include)], FewShot(), 4)
    assert {"eval/memorised_perplexity/word_perplexity", "eval/memorised_continuation/exact_match"} < alone.keys()
    assert {k: logged[k] for k in alone} == pytest.approx(alone, rel=1e-6)
    builtin = zero_shot_metrics(model, [str(memorised_set)], tokenizer.encode, tokenizer.eos_id, 0, 1)
    for metric in ("acc", "acc_norm", "chance"):
        assert logged[f"eval/memorised_next_sentence/{metric}"] == builtin[f"eval/memorised_next_sentence/{metric}"]
