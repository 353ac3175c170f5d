"""Zero- and few-shot multiple choice: pick the answer the model finds most likely after the context.

The scoring follows EleutherAI's lm-evaluation-harness (lm-eval 0.4.13: `TemplateLM._encode_pair` and
`loglikelihood` in lm_eval/api/model.py, `ConfigurableTask.process_results` in lm_eval/api/task.py), so a
number here and lm-eval's on the same set are the same number (tests/test_lm_eval.py checks it):
  - an answer is the continuation " " + answer (lm-eval's `target_delimiter`) of the context;
  - context + continuation is encoded whole and the continuation's tokens are those past the context's
    own encoding (whitespace ending the context moves into the continuation); nothing goes before the
    context (an empty context is the EOS token, lm-eval's `prefix_token_id`), unless `eos_before_context`
    asks for EOS first, as lm-eval's HF model does with `add_bos_token=True` on a GPT-2-style tokenizer:
    documents start after an EOS in this project's pretraining, and a small model may depend on it;
  - a sequence longer than the model's block loses its oldest tokens: with few-shot, the oldest shots.
Metrics of a set:
  acc           the answer with the highest summed log-probability;
  acc_norm      ... divided by the answer's length in characters (lm-eval's `acc_norm` divides by
                `len(choice)` of the string; its `acc_bytes` is the UTF-8 byte variant);
  acc_per_token ... divided by its number of tokens (the GPT-3 paper's length normalisation);
  chance        the mean of 1/choices over the items: what guessing scores, beside the accuracies.

Few-shot is GPT-3's protocol (Brown et al. 2020, section 2.4): before each item go k examples drawn at
random from the task's training split, each its context + " " + its right answer, joined by a
separator ("\n\n", GPT-3's and lm-eval's default). The draw is a function of (seed, item index), so any
number of ranks sees the same shots, and an example equal to the item is never drawn (GPT-3 drew from
the development set for tasks without a training split: `fewshot_from=self` here).

Two JSONL formats are read: this project's `{"context", "choices", "label"}` (written by
`python -m train.build_task_sets`) and HellaSwag's released files (`ctx_a`, `ctx_b`, `activity_label`,
`endings`, `label`), prepared the way lm-eval prepares them. The same code scores a saved model
(`python -m train.evaluate`, train/evaluate.py), runs in pretraining's evaluations (`eval.tasks=[...]`),
where every rank takes its share of the items and all ranks run the same number of forwards, as ZeRO-3
requires, and scores lm-eval's requests in train/lm_eval_adapter.py.
"""

from __future__ import annotations

import json
import random
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist

from train.metrics import Progress

SPLIT_NAMES = frozenset({"train", "validation", "val", "dev", "test"})
TARGET_DELIMITER = " "  # lm-eval's default target_delimiter, between a context and its answer
SHOTS_FROM_SELF = "self"  # fewshot_from value: draw the shots from the set being scored


@dataclass(frozen=True)
class Item:
    """One question: a context, its candidate answers, and the index of the right one."""

    context: str
    choices: list[str]
    label: int


@dataclass(frozen=True)
class FewShot:
    """How many solved examples go before each item, where they are drawn from and how they are joined.

    `source`: None takes the set's own training split (`train_split_of`), SHOTS_FROM_SELF the set itself,
    anything else is the path of a JSONL set to draw from.
    """

    shots: int = 0
    seed: int = 1234  # lm-eval's default fewshot_random_seed
    separator: str = "\n\n"
    source: str | None = None


def _hellaswag_clean(text: str) -> str:
    """WikiHow artifacts in HellaSwag: ' [title]' ends a heading; other [tags] are dropped."""
    text = text.strip().replace(" [title]", ". ")
    return re.sub(r"\[.*?\]", "", text).replace("  ", " ")


def load_items(path: Path) -> list[Item]:
    """Items of a multiple-choice JSONL, in this project's format or HellaSwag's."""
    if not path.is_file():
        raise ValueError(f"no multiple-choice set at {path}; build one with `python -m train.build_task_sets`")
    items = []
    for line_no, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        if not line.strip():
            continue
        record = json.loads(line)
        if "endings" in record:
            context = f"{record['ctx_a']} {record['ctx_b'].capitalize()}".strip()
            context = _hellaswag_clean(f"{record['activity_label']}: {context}")
            items.append(Item(context, [_hellaswag_clean(e) for e in record["endings"]], int(record["label"])))
        elif {"context", "choices", "label"} <= record.keys():
            items.append(Item(record["context"], list(record["choices"]), int(record["label"])))
        else:
            raise ValueError(f"{path}:{line_no}: neither {{context, choices, label}} nor HellaSwag's "
                             f"{{ctx_a, ctx_b, activity_label, endings, label}}; fields: {', '.join(record)}")
        if not 0 <= items[-1].label < len(items[-1].choices):
            raise ValueError(f"{path}:{line_no}: label {items[-1].label} is out of range for "
                             f"{len(items[-1].choices)} choices")
    return items


def set_name(path: Path) -> str:
    """Metric prefix of a set: its file stem, or its folder's name when the stem is a split name."""
    return path.parent.name if path.stem in SPLIT_NAMES else path.stem


def train_split_of(path: Path) -> Path | None:
    """The training split beside a set, by name: `<dir>/train.jsonl` for `<dir>/validation.jsonl` (the sets
    of `python -m train.build_task_sets`), `hellaswag_train.jsonl` for `hellaswag_val.jsonl`; None for a
    name without a split in it."""
    if path.stem in SPLIT_NAMES:
        return path.with_name(f"train{path.suffix}")
    head, _, split = path.stem.rpartition("_")
    return path.with_name(f"{head}_train{path.suffix}") if head and split in SPLIT_NAMES else None


def shot_pool(path: Path, items: list[Item], fewshot: FewShot) -> list[Item]:
    """The examples the shots of the set at `path` are drawn from (none for zero-shot)."""
    if fewshot.shots < 0:
        raise ValueError(f"shots={fewshot.shots}: give 0 (zero-shot) or more examples per item")
    if fewshot.shots == 0:
        return []
    if fewshot.source == SHOTS_FROM_SELF:
        pool_path, pool = path, items
    else:
        pool_path = Path(fewshot.source) if fewshot.source else train_split_of(path)
        if pool_path is None or not pool_path.is_file():
            beside = f" ({pool_path.name} is not beside it)" if pool_path else ""
            raise ValueError(f"{path}: no training split to draw {fewshot.shots} shots from{beside}; pass "
                             "fewshot_from=PATH.jsonl, or fewshot_from=self to draw from the set itself")
        pool = load_items(pool_path)
    needed = fewshot.shots + (fewshot.source == SHOTS_FROM_SELF)
    if len(pool) < needed:
        raise ValueError(f"{pool_path}: {len(pool)} examples, too few for shots={fewshot.shots} "
                         f"(draws need {needed}); lower shots or use a larger training split")
    return pool


def draw_shots(pool: Sequence[Item], item: Item, index: int, fewshot: FewShot) -> list[Item]:
    """`fewshot.shots` examples of `pool` for item number `index`, at random (seeded by seed and index),
    never one equal to the item itself."""
    if fewshot.shots == 0:
        return []
    rng = random.Random(f"{fewshot.seed}:{index}")
    drawn = [pool[j] for j in rng.sample(range(len(pool)), min(len(pool), fewshot.shots + 1))]
    shots = [shot for shot in drawn if shot != item][: fewshot.shots]
    if len(shots) < fewshot.shots:  # the pool holds the item more than once
        others = [shot for shot in pool if shot != item]
        if len(others) < fewshot.shots:
            raise ValueError(f"item {index}: only {len(others)} examples differ from it, fewer than "
                             f"shots={fewshot.shots}")
        shots = rng.sample(others, fewshot.shots)
    return shots


def prompt(item: Item, shots: Sequence[Item], separator: str) -> str:
    """The context an item's answers are scored after: each shot solved, then the item's own context."""
    solved = [f"{shot.context}{TARGET_DELIMITER}{shot.choices[shot.label]}" for shot in shots]
    return separator.join([*solved, item.context])


def encode_pair(encode: Callable[[str], list[int]], context: str, continuation: str, prefix_id: int | None,
                eos_before_context: bool = False) -> tuple[list[int], list[int]]:
    """Token ids of (context, continuation) as lm-eval's causal models make them: the whole string
    encoded, split where the context's own encoding ends; trailing whitespace of the context belongs to
    the continuation; an empty context is `prefix_id` (EOS), which `eos_before_context` puts first always."""
    stripped = context.rstrip()
    continuation = context[len(stripped):] + continuation
    if (not stripped or eos_before_context) and prefix_id is None:
        raise ValueError("a context is scored after the EOS token here, and this tokenizer has none")
    if not stripped:
        ids = encode(continuation)
        return ([prefix_id], ids) if ids[:1] != [prefix_id] else (ids[:1], ids[1:])
    context_ids = encode(stripped)
    first = [prefix_id] if eos_before_context else []
    return first + context_ids, encode(stripped + continuation)[len(context_ids):]


def model_device(module: torch.nn.Module) -> torch.device:
    """Where the model's inputs go (under ZeRO-3 a partitioned parameter still sits on the rank's device)."""
    return next(module.parameters()).device


@torch.no_grad()
def score_continuations(forward: Callable[[torch.Tensor], torch.Tensor],
                        pairs: Sequence[tuple[list[int], list[int]]], block_size: int,
                        device: torch.device) -> list[tuple[float, bool]]:
    """(summed log-probability, greedy?) of each continuation after its context, all pairs in one forward.

    A pair longer than block_size + 1 tokens loses its oldest; rows are padded on the right, which a
    causal model never attends to. `greedy`: every continuation token is the model's top choice.
    """
    rows = []
    for context, continuation in pairs:
        if not continuation:
            raise ValueError("a continuation that encodes to no tokens cannot be scored")
        rows.append((context + continuation)[-(block_size + 1):])
    idx = torch.zeros(len(rows), max(len(row) for row in rows) - 1, dtype=torch.long)
    for i, row in enumerate(rows):
        idx[i, : len(row) - 1] = torch.tensor(row[:-1])
    logits = forward(idx.to(device))
    scores = []
    for i, (row, (_, continuation)) in enumerate(zip(rows, pairs, strict=True)):
        n = min(len(continuation), len(row) - 1)
        targets = torch.tensor(row[len(row) - n:], device=logits.device)
        # only the continuation's positions, in at least float32 (bf16 logits are upcast, float64 kept)
        scored = logits[i, len(row) - 1 - n: len(row) - 1]
        scored = scored.to(torch.promote_types(scored.dtype, torch.float32)).log_softmax(dim=-1)
        scores.append((float(scored.gather(-1, targets[:, None]).sum()), bool((scored.argmax(-1) == targets).all())))
    return scores


def accuracy(items: Sequence[Item], scores: Sequence[Sequence[tuple[float, int]]]) -> dict[str, float]:
    """acc, acc_norm, acc_per_token and chance over `items`, given each answer's (log-probability, tokens)."""
    correct = {"acc": 0, "acc_norm": 0, "acc_per_token": 0}
    for item, item_scores in zip(items, scores, strict=True):
        sums = [s for s, _ in item_scores]
        per_char = [s / max(len(c), 1) for (s, _), c in zip(item_scores, item.choices, strict=True)]
        per_token = [s / max(n, 1) for s, n in item_scores]
        for key, values in (("acc", sums), ("acc_norm", per_char), ("acc_per_token", per_token)):
            correct[key] += max(range(len(values)), key=values.__getitem__) == item.label
    results = {key: count / max(len(items), 1) for key, count in correct.items()}
    results["chance"] = sum(1 / len(item.choices) for item in items) / max(len(items), 1)
    return results


def zero_shot_metrics(engine: torch.nn.Module, paths: Sequence[str], encode: Callable[[str], list[int]],
                      prefix_id: int | None, rank: int, world_size: int, fewshot: FewShot = FewShot(),
                      eos_before_context: bool = False) -> dict[str, float]:
    """`eval/<set>/{acc,acc_norm,acc_per_token,chance}` for each set, zero- or few-shot (collective).

    `prefix_id` (the EOS token) stands for an empty context, and goes first with `eos_before_context`.
    Rank r scores items r, r + world_size, ...; ranks with fewer items repeat one, unscored, so that every
    rank runs the same number of forwards.
    """
    module = getattr(engine, "module", engine)
    block_size, device = module.config.block_size, model_device(module)
    was_training = module.training
    engine.eval()
    results: dict[str, float] = {}
    for path_name in paths:
        path = Path(path_name)
        items = load_items(path)
        pool = shot_pool(path, items, fewshot)
        rounds = -(-len(items) // world_size)
        mine: list[tuple[int, list[tuple[float, int]]]] = []
        progress = Progress(f"{fewshot.shots}-shot {set_name(path)}, items", len(items), rank == 0)
        for k in range(rounds):
            index = min(k * world_size + rank, len(items) - 1)
            item = items[index]
            context = prompt(item, draw_shots(pool, item, index, fewshot), fewshot.separator)
            pairs = [encode_pair(encode, context, TARGET_DELIMITER + choice, prefix_id, eos_before_context)
                     for choice in item.choices]
            scores = score_continuations(engine, pairs, block_size, device)
            if k * world_size + rank < len(items):
                mine.append((index, [(logprob, len(answer))
                                     for (logprob, _), (_, answer) in zip(scores, pairs, strict=True)]))
            progress.update(min((k + 1) * world_size, len(items)))
        gathered: list[list[tuple[int, list[tuple[float, int]]]]] = [mine]
        if dist.is_initialized() and world_size > 1:
            gathered = [[] for _ in range(world_size)]
            dist.all_gather_object(gathered, mine)
        by_index = dict(pair for part in gathered for pair in part)
        for key, value in accuracy(items, [by_index[i] for i in range(len(items))]).items():
            results[f"eval/{set_name(path)}/{key}"] = value
    engine.train(was_training)
    return results


def eval_fewshot(eval_cfg: Any) -> FewShot:
    """The few-shot settings of a settings section (pretraining's `eval`, or train.evaluate's root)."""
    source = eval_cfg.fewshot_from
    return FewShot(int(eval_cfg.shots), int(eval_cfg.fewshot_seed), str(eval_cfg.fewshot_separator),
                   None if source is None else str(source))
