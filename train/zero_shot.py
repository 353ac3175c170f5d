"""Zero-shot multiple choice: pick the answer the model finds most likely after the context.

Each answer is scored by the log-likelihood of its tokens given the context, as in the GPT-3 paper
(Brown et al. 2020, section 2.4) and EleutherAI's lm-evaluation-harness:
  acc           the answer with the highest summed log-probability;
  acc_norm      ... divided by the answer's length in UTF-8 bytes (lm-eval's `acc_norm`);
  acc_per_token ... divided by its number of tokens (the GPT-3 paper's normalisation).
Every context starts with EOS, i.e. as a new document did in pretraining; a context too long for
the model loses its oldest tokens.

Two JSONL formats are read: this project's `{"context", "choices", "label"}` (written by
`python -m train.build_task_sets`) and HellaSwag's released files (`ctx_a`, `ctx_b`, `activity_label`,
`endings`, `label`), prepared the way lm-eval prepares them. The same code scores a saved model
(`python -m train.evaluate`, train/evaluate.py) and runs in pretraining's evaluations
(`eval.tasks=[...]`), where every rank takes its share of the items and all ranks run the same
number of forwards, as ZeRO-3 requires.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.distributed as dist

from train.metrics import Progress

SPLIT_NAMES = frozenset({"train", "validation", "val", "dev", "test"})


@dataclass(frozen=True)
class Item:
    """One question: a context, its candidate answers, and the index of the right one."""

    context: str
    choices: list[str]
    label: int


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


@torch.no_grad()
def choice_logprobs(forward: Callable[[torch.Tensor], torch.Tensor], item: Item,
                    encode: Callable[[str], list[int]], bos_id: int | None,
                    block_size: int) -> list[tuple[float, int]]:
    """(summed log-probability, token count) of each answer after the context, in one forward."""
    context = ([bos_id] if bos_id is not None else []) + encode(item.context)
    answers = [encode(choice) for choice in item.choices]
    rows = []
    for answer in answers:
        row = (context + answer)[-(block_size + 1):]
        rows.append(row)
    length = max(len(row) for row in rows) - 1
    idx = torch.zeros(len(rows), length, dtype=torch.long)
    for i, row in enumerate(rows):
        idx[i, : len(row) - 1] = torch.tensor(row[:-1])
    logprobs = forward(idx).float().log_softmax(dim=-1)
    scores = []
    for i, (row, answer) in enumerate(zip(rows, answers, strict=True)):
        n = min(len(answer), len(row) - 1)
        positions = torch.arange(len(row) - 1 - n, len(row) - 1)
        targets = torch.tensor(row[-n:])
        scores.append((float(logprobs[i, positions, targets].sum()), n))
    return scores


def accuracy(items: Sequence[Item], scores: Sequence[Sequence[tuple[float, int]]]) -> dict[str, float]:
    """acc, acc_norm and acc_per_token over `items`, given each answer's (log-probability, tokens)."""
    correct = {"acc": 0, "acc_norm": 0, "acc_per_token": 0}
    for item, item_scores in zip(items, scores, strict=True):
        sums = [s for s, _ in item_scores]
        per_byte = [s / max(len(c.encode("utf-8")), 1) for (s, _), c in zip(item_scores, item.choices, strict=True)]
        per_token = [s / max(n, 1) for s, n in item_scores]
        for key, values in (("acc", sums), ("acc_norm", per_byte), ("acc_per_token", per_token)):
            correct[key] += max(range(len(values)), key=values.__getitem__) == item.label
    return {key: count / max(len(items), 1) for key, count in correct.items()}


def zero_shot_metrics(engine: torch.nn.Module, paths: Sequence[str], encode: Callable[[str], list[int]],
                      bos_id: int | None, rank: int, world_size: int) -> dict[str, float]:
    """`eval/<set>/{acc,acc_norm,acc_per_token}` for each set, in the training loop (collective).

    Rank r scores items r, r + world_size, ...; ranks with fewer items repeat one, unscored, so
    that every rank runs the same number of forwards.
    """
    module = getattr(engine, "module", engine)
    block_size = module.config.block_size
    was_training = module.training
    engine.eval()
    results: dict[str, float] = {}
    for path_name in paths:
        path = Path(path_name)
        items = load_items(path)
        rounds = -(-len(items) // world_size)
        mine: list[tuple[int, list[tuple[float, int]]]] = []
        progress = Progress(f"zero-shot {set_name(path)}, items", len(items), rank == 0)
        for k in range(rounds):
            index = k * world_size + rank
            scores = choice_logprobs(engine, items[min(index, len(items) - 1)], encode, bos_id, block_size)
            if index < len(items):
                mine.append((index, scores))
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
