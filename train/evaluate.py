"""`python -m train.evaluate init=MODEL 'tasks=[...]' [shots=k] [harness=lm_eval]`: score a saved model.

`init` is anything a model can be started from (run dir, checkpoint dir, saved-model dir, Hugging Face
GPT-2 dir), with either tokenizer kind. The built-in harness scores multiple-choice JSONL sets with
train/multiple_choice.py; `harness=lm_eval` runs EleutherAI's lm-evaluation-harness tasks through
train/lm_eval_adapter.py (the same scoring conventions, so the numbers compare). Prints a table with the
chance baseline beside the accuracies and, on the last line, the metrics as JSON (the names pretraining
logs them under). Config: conf/evaluate.yaml.
"""

from __future__ import annotations

import json
import logging
import sys

import hydra
import torch
from omegaconf import DictConfig

from model.gpt import GPT
from model.load import load_model_and_tokenizer
from model.tokenizer import TextTokenizer
from train.multiple_choice import eval_fewshot, zero_shot_metrics

HARNESSES = ("builtin", "lm_eval")
TABLE_COLUMNS = {"acc": "acc", "acc_norm": "acc_norm", "acc_per_token": "acc/token", "chance": "chance"}


def evaluate(cfg: DictConfig) -> dict[str, float]:
    """The metrics of `cfg.init` on `cfg.tasks`; ValueError names a bad setting or input."""
    if cfg.init is None or not cfg.tasks:
        raise ValueError("give init=RUN_CHECKPOINT_OR_MODEL_DIR and tasks=[...] (JSONL sets; lm-eval task names "
                         "with harness=lm_eval)")
    if cfg.harness not in HARNESSES:
        raise ValueError(f"harness={cfg.harness} is not one of {', '.join(HARNESSES)}")
    fewshot = eval_fewshot(cfg)
    if cfg.harness == "builtin":
        model, tokenizer = load(cfg.init, cfg.tokenizer, cfg.device, cfg.threads)
        return zero_shot_metrics(model, list(cfg.tasks), tokenizer.encode, tokenizer.eos_id, 0, 1, fewshot,
                                 cfg.eos_before_context)
    from train.lm_eval_adapter import lm_eval_metrics, task_manager  # optional: refused here when missing

    task_manager(tuple(cfg.tasks), tuple(cfg.lm_eval_include))  # unknown names refused before the model loads
    model, tokenizer = load(cfg.init, cfg.tokenizer, cfg.device, cfg.threads)
    return lm_eval_metrics(model, tokenizer, list(cfg.tasks), list(cfg.lm_eval_include), fewshot, int(cfg.batch_size),
                           eos_before_context=cfg.eos_before_context)


def load(init: str, tokenizer_dir: str | None, device: str, threads: int | None) -> tuple[GPT, TextTokenizer]:
    """The model at `init` in any of its forms, and its tokenizer of either kind (or `tokenizer_dir`'s)."""
    model, tokenizer, _ = load_model_and_tokenizer(init, tokenizer_dir, device)
    torch.set_num_threads(threads or torch.get_num_threads())
    return model, tokenizer


def table(results: dict[str, float], shots: int) -> list[str]:
    """One line per set: the multiple-choice accuracies and chance in columns, other metrics after them."""
    lines = [f"{f'set ({shots}-shot)':<32}" + "".join(f" {title:>9}" for title in TABLE_COLUMNS.values())]
    for name in dict.fromkeys(key.split("/")[1] for key in results):
        values = {key.split("/", 2)[2]: value for key, value in results.items() if key.startswith(f"eval/{name}/")}
        cells = "".join(f" {values[c]:9.4f}" if c in values else f" {'-':>9}" for c in TABLE_COLUMNS)
        others = "".join(f"  {metric}={value:.4f}" for metric, value in values.items()
                         if metric not in TABLE_COLUMNS and "stderr" not in metric)
        lines.append(f"{name:<32}{cells}{others}")
    return lines


@hydra.main(config_path="../conf", config_name="evaluate", version_base=None)
def main(cfg: DictConfig) -> None:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")  # progress of long sets
    try:
        results = evaluate(cfg)
    except ValueError as bad:
        sys.exit(f"evaluate: {bad}")
    print("\n".join(table(results, int(cfg.shots))))
    print(json.dumps(results))


if __name__ == "__main__":
    main()
