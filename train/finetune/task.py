"""Fine-tuning, as a stage of the trainer: a pretrained GPT with GPT-1's special tokens and a linear head.

The pretrained GPT (`init`: run, checkpoint or saved-model dir) gets GPT-1's start, delimiter and
extract tokens (model.resize), a linear head (train/finetune/heads.py) and the task's input layout
(train/finetune/examples.py); the trainer (train/trainer.py) trains it with DeepSpeed ZeRO-3,
AdamW, checkpoints and metrics exactly as in pretraining. Examples are visited in a fresh seeded
permutation per epoch, so the data order is a function of (seed, step) and a resumed run continues
where it stopped, with any rank count. Validation (accuracy, or Pearson/Spearman for similarity)
runs at `eval.every` and at the end. Each checkpoint exports `model/`: the GPT with its grown
vocabulary (loadable by model.generate), `head.safetensors` and `task.json` (task, labels, special
token ids). The command is `python -m train.finetune` (train/finetune/__main__.py).
"""

from __future__ import annotations

import json
import logging
import math
from pathlib import Path
from typing import Any

import numpy as np
import torch

from data_contract.refusal import Refusal
from model.load import load_model_and_tokenizer
from model.resize import add_tokens
from model.saved_model import save_pretrained
from train.distributed import engine_device, gather_objects
from train.finetune.examples import (
    IGNORE,
    Batch,
    Example,
    SpecialTokens,
    TaskSpec,
    collate,
    load_examples,
)
from train.finetune.heads import TaskModel, objective
from train.metrics import MetricsLogger
from train.settings import FinetuneSettings
from train.stage import Evaluation, RunSetup

log = logging.getLogger("train.finetune")
HEAD_FILE = "head.safetensors"
TASK_FILE = "task.json"


def example_order(first: int, global_batch: int, n_examples: int, seed: int) -> list[int]:
    """Example indices of the global batch at positions [first, first+B) of the epochs laid end to end,
    each epoch a permutation seeded by (seed, epoch)."""
    positions = range(first, first + global_batch)
    permutations = {epoch: np.random.default_rng([seed, epoch]).permutation(n_examples)
                    for epoch in {p // n_examples for p in positions}}
    return [int(permutations[p // n_examples][p % n_examples]) for p in positions]


@torch.no_grad()
def validate(engine: Any, spec: TaskSpec, examples: list[Example], micro_batch: int, pad_id: int,
             lm_weight: float, rank: int, world_size: int) -> dict[str, float]:
    """Validation metrics over every example (collective: all ranks run the same number of forwards).

    Accuracy comes with what it must beat: the share of the validation set's most frequent class
    (`val/majority_baseline`, classification and entailment) or one over the number of answers
    (`val/chance_baseline`, multiple choice), since a skewed set makes a high accuracy cheap."""
    from scipy.stats import pearsonr, spearmanr

    engine.eval()
    mine = list(range(rank, len(examples), world_size))
    rounds = math.ceil(math.ceil(len(examples) / world_size) / micro_batch)
    predictions: list[tuple[int, float, float]] = []  # (index, prediction, target)
    task_nats = lm_nats = lm_tokens = 0.0
    for k in range(rounds):
        chunk = mine[k * micro_batch:(k + 1) * micro_batch]
        batch = collate([examples[i] for i in chunk or [0]], pad_id).to(engine_device(engine))
        _, task, lm, outputs = objective(engine, batch, spec.kind, lm_weight)
        if not chunk:  # this rank ran out of examples: the forward only keeps the others company
            continue
        tokens = float((batch.lm_targets != IGNORE).sum())
        lm_nats, lm_tokens = lm_nats + float(lm) * tokens, lm_tokens + tokens
        if outputs is not None and task is not None:
            task_nats += float(task) * len(chunk)
            values = outputs.float() if spec.kind == "similarity" else outputs.float().argmax(-1)
            predictions += zip(chunk, values.tolist(), batch.targets.tolist(), strict=True)
    engine.train()
    gathered = gather_objects((predictions, task_nats, lm_nats, lm_tokens), world_size)
    predictions = [p for part in gathered for p in part[0]]
    task_nats, lm_nats, lm_tokens = (sum(part[i] for part in gathered) for i in (1, 2, 3))
    results = {"val/lm_loss": lm_nats / max(lm_tokens, 1.0)}
    if spec.kind == "instruction":
        results["val/loss"] = results["val/lm_loss"]
        results["val/ppl"] = math.exp(min(results["val/loss"], 50.0))
        return results
    results["val/loss"] = task_nats / len(examples)
    predicted = [p for _, p, _ in predictions]
    targets = [t for _, _, t in predictions]
    if spec.kind == "similarity":
        results["val/pearson"] = float(pearsonr(predicted, targets).statistic)
        results["val/spearman"] = float(spearmanr(predicted, targets).statistic)
    else:
        results["val/accuracy"] = sum(p == t for p, t in zip(predicted, targets, strict=True)) / len(targets)
        if spec.kind == "multiple_choice":
            results["val/chance_baseline"] = 1.0 / len(examples[0].rows)
        else:
            results["val/majority_baseline"] = max(targets.count(t) for t in set(targets)) / len(targets)
    return results


class FineTuning:
    """A pretrained GPT with GPT-1's special tokens and a head, trained on one task's examples."""

    def __init__(self, settings: FinetuneSettings, setup: RunSetup) -> None:
        self.settings, self.setup = settings, setup
        self.spec = spec = TaskSpec.from_cfg(settings.task)
        try:
            gpt, tokenizer, self.model_dir = load_model_and_tokenizer(settings.init)
        except ValueError as bad:
            raise Refusal(f"init={settings.init}: {bad}") from None
        eos_id = tokenizer.eos_id
        gpt.train()
        special = None
        if spec.needs_special_tokens:
            special = SpecialTokens(*add_tokens(gpt, 3, torch.Generator().manual_seed(settings.seed)))
        max_len = min(settings.train.max_len or gpt.config.block_size, gpt.config.block_size)
        self.train_set = load_examples(spec, Path(settings.task.train), tokenizer.encode, special, eos_id, max_len)
        self.val_set = load_examples(spec, Path(settings.task.validation), tokenizer.encode, special, eos_id, max_len)
        self.pad_id = eos_id if eos_id is not None else 0

        self.global_batch, self.micro_batch = settings.train.global_batch_size, settings.train.micro_batch_size
        self.resumed_at = (0, 0)  # (step, examples consumed) of the checkpoint resumed from
        self.total_steps = max(1, math.ceil(settings.train.epochs * len(self.train_set) / self.global_batch))
        if settings.train.max_steps:
            self.total_steps = min(self.total_steps, int(settings.train.max_steps))
        self.model = TaskModel(gpt, spec.kind, spec.num_outputs, settings.head_dropout)
        # the pretrained weights, for a bf16 run's fp32 master copy (built whole: fine-tuning is not partitioned)
        self.initial_weights = ({name: p.detach().clone() for name, p in self.model.named_parameters()}
                                if setup.precision == "bf16" and not setup.resuming else None)
        self.info = {"name": spec.name, "type": spec.kind, "labels": spec.labels, "init": str(self.model_dir),
                     "special_tokens": special.__dict__ if special else None,
                     "prompt_template": spec.prompt_template or None,
                     "prompt_template_no_input": spec.prompt_template_no_input or None}

    def describe(self) -> str:
        return (f"fine-tuning {self.spec.name} ({self.spec.kind}) from {self.model_dir}: "
                f"{len(self.train_set)} train / {len(self.val_set)} validation examples")

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """The data position: examples consumed at the resumed step (an accepted change of batch
        re-divides the rest of the epochs)."""
        step, consumed = state["step"], state.get("examples_consumed", state["step"] * self.global_batch)
        self.resumed_at = (step, consumed)
        self.total_steps = step + max(0, math.ceil((self.settings.train.epochs * len(self.train_set) - consumed)
                                                   / self.global_batch))
        if self.settings.train.max_steps:
            self.total_steps = min(self.total_steps, int(self.settings.train.max_steps))

    def examples_consumed(self, step: int) -> int:
        resumed_step, resumed_examples = self.resumed_at
        return resumed_examples + (step - resumed_step) * self.global_batch

    def start(self, step: int, metrics: MetricsLogger, resumed: bool) -> None:
        """Nothing to prepare: examples are tokenized up front."""

    def batches(self, step: int) -> list[Batch]:
        accum = self.setup.accum
        mine = example_order(self.examples_consumed(step), self.global_batch, len(self.train_set), self.settings.seed)
        mine = mine[self.setup.rank * self.micro_batch * accum:]
        return [collate([self.train_set[i] for i in mine[k * self.micro_batch:(k + 1) * self.micro_batch]], self.pad_id)
                for k in range(accum)]

    def loss(self, engine: Any, batch: Batch) -> dict[str, torch.Tensor]:
        loss, task, lm, _ = objective(engine, batch.to(engine_device(engine)), self.spec.kind, self.settings.lm_weight)
        return {"loss": loss, "lm_loss": lm, **({"task_loss": task} if task is not None else {})}

    def step_metrics(self, step: int, step_time_s: float) -> dict[str, float]:
        return {"train/examples_seen": self.examples_consumed(step),
                "train/epoch": self.examples_consumed(step) / len(self.train_set)}

    def evaluations(self) -> list[Evaluation]:
        return [Evaluation(self.settings.eval.every, True, self.validate, "validation")]

    def validate(self, engine: Any, step: int, metrics: MetricsLogger) -> None:
        results = validate(engine, self.spec, self.val_set, self.settings.eval.micro_batch_size, self.pad_id,
                           self.settings.lm_weight, self.setup.rank, self.setup.world_size)
        metrics.log(step, results)
        log.info("step %d: %s", step, " ".join(f"{k} {v:.4f}" for k, v in results.items()))

    def state_dict(self, step: int) -> dict[str, Any]:
        return {"task": self.info, "examples_consumed": self.examples_consumed(step)}

    def export(self, engine: Any, weights: dict[str, torch.Tensor], folder: Path) -> None:
        from safetensors.torch import save_file

        save_pretrained(engine.module.gpt, folder, tokenizer=self.model_dir,
                        state_dict={k.removeprefix("gpt."): v for k, v in weights.items() if k.startswith("gpt.")})
        head = {k.removeprefix("head."): v.contiguous() for k, v in weights.items() if k.startswith("head.")}
        if head:
            save_file(head, folder / HEAD_FILE)
        (folder / TASK_FILE).write_text(json.dumps(self.info, indent=1) + "\n")

    def close(self) -> None:
        """Nothing runs in the background."""
