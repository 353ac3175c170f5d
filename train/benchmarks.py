"""Zero- and few-shot benchmarks during pretraining, whichever harness scores them.

`eval.harness=builtin` scores multiple-choice JSONL sets here (train/multiple_choice.py);
`eval.harness=lm_eval` runs EleutherAI's lm-evaluation-harness tasks (train/lm_eval_adapter.py), with the
same scoring conventions, so the numbers compare. This module is the one place that chooses between them.
"""

from __future__ import annotations

from pathlib import Path

import torch

from data_contract.refusal import Refusal
from model.tokenizer import TextTokenizer
from train.multiple_choice import eval_fewshot, load_items, shot_pool, zero_shot_metrics
from train.settings import BenchmarkSettings


def check_benchmarks(benchmarks: BenchmarkSettings) -> None:
    """Refuse at the start of training what the first evaluation would fail on: a missing set or shot
    source, an lm-eval task that is not found, lm-eval not installed."""
    try:
        if benchmarks.harness == "lm_eval":
            from train.lm_eval_adapter import task_manager

            task_manager(tuple(benchmarks.tasks), tuple(benchmarks.lm_eval_include))
        else:
            for path_name in benchmarks.tasks:
                shot_pool(Path(path_name), load_items(Path(path_name)), eval_fewshot(benchmarks))
    except ValueError as bad:
        raise Refusal(f"eval.tasks: {bad}") from None


def benchmark_metrics(engine: torch.nn.Module, benchmarks: BenchmarkSettings, tokenizer: TextTokenizer,
                      batch_size: int, rank: int, world_size: int) -> dict[str, float]:
    """Pretraining's `eval.tasks` at an evaluation: JSONL sets scored here, or lm-eval's tasks with
    `eval.harness=lm_eval` (`batch_size` requests per forward); the same metrics on every rank (collective)."""
    fewshot = eval_fewshot(benchmarks)
    if benchmarks.harness == "lm_eval":
        from train.lm_eval_adapter import lm_eval_metrics

        return lm_eval_metrics(engine, tokenizer, list(benchmarks.tasks), list(benchmarks.lm_eval_include),
                               fewshot, batch_size, rank, world_size, benchmarks.eos_before_context)
    return zero_shot_metrics(engine, list(benchmarks.tasks), tokenizer.encode, tokenizer.eos_id, rank, world_size,
                             fewshot, benchmarks.eos_before_context)
