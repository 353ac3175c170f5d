"""Supervised fine-tuning the GPT-1 way, on the pretraining trainer's parts.

    python -m train.finetune task=reuters init=runs/tiny-demo [overrides]
    deepspeed --num_gpus 2 --module train.finetune task=next_sentence init=... train.epochs=3

The pretrained GPT (`init`: run, checkpoint or saved-model dir) gets GPT-1's start, delimiter and
extract tokens (model.resize), a linear head (train.heads) and the task's input layout
(train.task_data); it is trained with DeepSpeed ZeRO-3, AdamW, checkpoints and metrics exactly as
in pretraining. Examples are visited in a fresh seeded permutation per epoch, so the data order is
a function of (seed, step) and a resumed run continues where it stopped, with any rank count.
Validation (accuracy, or Pearson/Spearman for similarity) runs at `eval.every` and at the end.
Each checkpoint exports `model/`: the GPT with its grown vocabulary (loadable by model.generate),
`head.safetensors` and `task.json` (task, labels, special token ids).
"""

from __future__ import annotations

import json
import logging
import math
import sys
import time
from pathlib import Path
from typing import Any

import hydra
import numpy as np
import torch
import torch.distributed as dist
from omegaconf import DictConfig, OmegaConf

from model.pretrained import TOKENIZER_FILE, load_pretrained, resolve_model_dir, save_pretrained
from model.resize import add_tokens
from train import checkpoint
from train.distributed import (
    gather_objects,
    init_distributed,
    mean_across_ranks,
    strip_launcher_args,
    threads_per_rank,
)
from train.ds_config import ConfigError, build_ds_config, grad_accum_steps, resolve_precision, start_engine
from train.heads import TaskModel, objective
from train.metrics import MetricsLogger, max_rss_gb
from train.optim import lr_at
from train.preflight import exit_after
from train.task_data import IGNORE, Example, SpecialTokens, TaskError, TaskSpec, collate, load_examples

log = logging.getLogger("train.finetune")
HEAD_FILE = "head.safetensors"
TASK_FILE = "task.json"


def example_order(step: int, global_batch: int, n_examples: int, seed: int) -> list[int]:
    """Example indices of global batch `step`: positions [step*B, (step+1)*B) of the epochs laid end
    to end, each epoch a permutation seeded by (seed, epoch)."""
    positions = range(step * global_batch, (step + 1) * global_batch)
    permutations = {epoch: np.random.default_rng([seed, epoch]).permutation(n_examples)
                    for epoch in {p // n_examples for p in positions}}
    return [int(permutations[p // n_examples][p % n_examples]) for p in positions]


@torch.no_grad()
def validate(engine: Any, spec: TaskSpec, examples: list[Example], micro_batch: int, pad_id: int,
             lm_weight: float, rank: int, world_size: int) -> dict[str, float]:
    """Validation metrics over every example (collective: all ranks run the same number of forwards)."""
    from scipy.stats import pearsonr, spearmanr

    engine.eval()
    mine = list(range(rank, len(examples), world_size))
    rounds = math.ceil(math.ceil(len(examples) / world_size) / micro_batch)
    predictions: list[tuple[int, float, float]] = []  # (index, prediction, target)
    task_nats = lm_nats = lm_tokens = 0.0
    for k in range(rounds):
        chunk = mine[k * micro_batch:(k + 1) * micro_batch]
        batch = collate([examples[i] for i in chunk or [0]], pad_id)
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
    return results


def run(cfg: DictConfig) -> int:
    dist_env = init_distributed()
    rank, world_size = dist_env.rank, dist_env.world_size
    logging.basicConfig(level=logging.INFO if rank == 0 else logging.WARNING,
                        format=f"%(asctime)s [rank{rank}] %(message)s")
    torch.set_num_threads(threads_per_rank(cfg, world_size))
    import sentencepiece as spm

    spec = TaskSpec.from_cfg(cfg.task)
    if cfg.init is None:
        raise TaskError("init=PATH is required: the pretraining run dir, checkpoint dir or saved-model dir")
    try:
        model_dir = resolve_model_dir(cfg.init)
    except ValueError as bad:
        raise TaskError(f"init={cfg.init}: {bad}") from None
    tokenizer_path = model_dir / TOKENIZER_FILE
    if not tokenizer_path.is_file():
        raise TaskError(f"init={cfg.init}: no {TOKENIZER_FILE} in {model_dir}; the model's sentencepiece model "
                        "must sit beside it (the trainer's checkpoints export it there)")
    tokenizer = spm.SentencePieceProcessor(model_file=str(tokenizer_path))
    eos_id = tokenizer.eos_id() if tokenizer.eos_id() >= 0 else None

    torch.manual_seed(cfg.seed)
    gpt = load_pretrained(model_dir).train()
    special = None
    if spec.needs_special_tokens:
        special = SpecialTokens(*add_tokens(gpt, 3, torch.Generator().manual_seed(cfg.seed)))
    max_len = min(cfg.train.max_len or gpt.config.block_size, gpt.config.block_size)
    train_set = load_examples(spec, Path(cfg.task.train), tokenizer.encode, special, eos_id, max_len)
    val_set = load_examples(spec, Path(cfg.task.validation), tokenizer.encode, special, eos_id, max_len)
    pad_id = eos_id if eos_id is not None else 0

    precision = resolve_precision(cfg.precision)
    accum = grad_accum_steps(cfg.train.global_batch_size, cfg.train.micro_batch_size, world_size)
    global_batch, micro_batch = cfg.train.global_batch_size, cfg.train.micro_batch_size
    total_steps = max(1, math.ceil(cfg.train.epochs * len(train_set) / global_batch))
    if cfg.train.max_steps:
        total_steps = min(total_steps, int(cfg.train.max_steps))
    OmegaConf.update(cfg, "schedule.warmup_steps", round(cfg.schedule.warmup_fraction * total_steps),
                     force_add=True)

    run_dir = Path(cfg.run_dir)
    checkpoints_dir = run_dir / "checkpoints"
    resume = checkpoint.plan_resume(checkpoints_dir, cfg.train.resume, world_size)
    ds_config = build_ds_config(cfg, world_size, precision)
    if resume is not None and resume.universal:
        ds_config["checkpoint"] = {"load_universal": True}

    model = TaskModel(gpt, spec.kind, spec.num_outputs, cfg.head_dropout)
    engine, _ = start_engine(model, cfg, ds_config)
    step, wandb_run_id = 0, None
    if resume is not None:
        checkpoint.load(engine, resume)
        step, wandb_run_id = resume.state["step"], resume.state["wandb_run_id"]
        log.info("resumed from %s at step %d", resume.checkpoint, step)
    if not checkpoint.start_run(run_dir, cfg, rank, step, total_steps):
        return 0
    if rank == 0:
        log.info("fine-tuning %s (%s) from %s: %d train / %d validation examples, %d steps of %d; %s; %d ranks",
                 spec.name, spec.kind, model_dir, len(train_set), len(val_set), total_steps, global_batch,
                 precision, world_size)
    resolved = OmegaConf.to_container(cfg, resolve=True)
    metrics = MetricsLogger(run_dir, rank == 0, cfg.wandb, resolved, wandb_run_id)  # type: ignore[arg-type]
    wandb_run_id = gather_objects(metrics.run_id, world_size)[0]
    task_info = {"name": spec.name, "type": spec.kind, "labels": spec.labels, "init": str(model_dir),
                 "special_tokens": special.__dict__ if special else None,
                 "prompt_template": spec.prompt_template or None,
                 "prompt_template_no_input": spec.prompt_template_no_input or None}

    def export(weights: dict[str, torch.Tensor], folder: Path) -> None:
        from safetensors.torch import save_file

        save_pretrained(engine.module.gpt, folder, tokenizer=tokenizer_path,
                        state_dict={k.removeprefix("gpt."): v for k, v in weights.items() if k.startswith("gpt.")})
        head = {k.removeprefix("head."): v.contiguous() for k, v in weights.items() if k.startswith("head.")}
        if head:
            save_file(head, folder / HEAD_FILE)
        (folder / TASK_FILE).write_text(json.dumps(task_info, indent=1) + "\n")

    def run_validation() -> None:
        results = validate(engine, spec, val_set, cfg.eval.micro_batch_size, pad_id, cfg.lm_weight, rank, world_size)
        metrics.log(step, results)
        log.info("step %d: %s", step, " ".join(f"{k} {v:.4f}" for k, v in results.items()))

    engine.train()
    while step < total_steps:
        started = time.perf_counter()
        lr = lr_at(step, total_steps, cfg)
        for group in engine.optimizer.param_groups:
            group["lr"] = lr
        mine = example_order(step, global_batch, len(train_set), cfg.seed)[rank * micro_batch * accum:]
        sums = {"loss": 0.0, "task_loss": 0.0, "lm_loss": 0.0}
        for k in range(accum):
            batch = collate([train_set[i] for i in mine[k * micro_batch:(k + 1) * micro_batch]], pad_id)
            loss, task, lm, _ = objective(engine, batch, spec.kind, cfg.lm_weight)
            engine.backward(loss)
            engine.step()
            for key, value in (("loss", loss), ("task_loss", task), ("lm_loss", lm)):
                sums[key] += value.item() / accum if value is not None else 0.0
        step += 1
        if step % cfg.train.log_every == 0:
            grad_norm = engine.get_global_grad_norm()
            values = {f"train/{key}": mean_across_ranks(value) for key, value in sums.items()}
            if spec.kind == "instruction":
                del values["train/task_loss"]
            metrics.log(step, {**values, "train/lr": lr, "train/examples_seen": step * global_batch,
                               "train/epoch": step * global_batch / len(train_set),
                               "train/grad_norm": float(grad_norm) if grad_norm is not None else float("nan"),
                               "train/step_time_s": time.perf_counter() - started, "sys/max_rss_gb": max_rss_gb()})
        done = step == total_steps
        if done or (cfg.eval.every and step % cfg.eval.every == 0):
            run_validation()
        if done or (cfg.checkpoint.every and step % cfg.checkpoint.every == 0):
            trainer_state = {"step": step, "world_size": world_size, "total_steps": total_steps,
                             "global_batch_size": global_batch, "wandb_run_id": wandb_run_id, "task": task_info}
            path = checkpoint.save(engine, checkpoints_dir, step, trainer_state, cfg.checkpoint.keep_last,
                                   cfg.checkpoint.export_model, tokenizer_path, export=export)
            log.info("checkpoint %s", path)
    metrics.finish()
    if dist.is_initialized():
        dist.barrier()
    sys.stdout.flush()
    return 0


@hydra.main(config_path="../conf", config_name="finetune", version_base=None)
def main(cfg: DictConfig) -> None:
    exit_after("finetune", lambda: run(cfg), (ConfigError, TaskError))


if __name__ == "__main__":
    strip_launcher_args()
    main()
