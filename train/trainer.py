"""The trainer: one DeepSpeed ZeRO-3 skeleton for every training stage, read top to bottom.

A stage is a task object (pretraining: train/pretrain.py; fine-tuning: train/finetune/task.py)
that says only what differs: its model, its batches and loss, its evaluations, the extra state its
checkpoints carry and what it exports. Everything else is here, once: the process group, the
engine, resume (through a universal checkpoint when the rank count changed), the step loop with
gradient accumulation, skipped updates on loss spikes, the checkpoint and evaluation schedule, stop
signals and metrics. The concerns themselves live in their own small modules (checkpoint,
skip_step, metrics, signals, distributed, ds_config); this file only puts them in order.

Losses stay on the device through the step: they are averaged across ranks and read on the host
when a step is logged, never per micro-step. The one per-step read is the spike guard's verdict,
and only while the guard is on, because a roll-back is a host decision.
"""

from __future__ import annotations

import logging
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import torch
import torch.distributed as dist
from omegaconf import DictConfig, OmegaConf
from torch import nn

from train import checkpoint
from train.distributed import (
    collectives,
    gather_objects,
    init_distributed,
    mean_across_ranks,
    rank_hosts,
    threads_per_rank,
)
from train.ds_config import build_ds_config, resolve_precision, start_engine
from train.metrics import MetricsLogger, StartupClock, console_line, kernels_compiled, max_rss_gb
from train.optim import lr_at
from train.preflight import grad_accum_steps
from train.run_dir import REQUEUE_MARKER, resume_request, rewind_metrics
from train.run_identity import check_same_run
from train.signals import EXIT_REQUEUE, StopRequest
from train.time_budget import TimeBudget
from train.watchdog import ProgressWatchdog

log = logging.getLogger("train")


@dataclass(frozen=True)
class RunSetup:
    """What the trainer settles before a task is built: where this process stands and how it computes."""

    rank: int
    world_size: int
    precision: str  # bf16 | fp32
    accum: int  # micro-batches per rank per optimizer step
    resuming: bool  # a checkpoint will be loaded over the task's initial weights


@dataclass(frozen=True)
class Evaluation:
    """Something a task runs every `every` steps (0: never) and, with `at_end`, after the last step."""

    every: int
    at_end: bool
    run: Callable[[Any, int, MetricsLogger], None]  # (engine, step, metrics)
    name: str  # for the console: "validation", "samples", ...

    def due(self, step: int, done: bool) -> bool:
        return bool(self.every and step % self.every == 0) or (done and self.at_end)


class Task(Protocol):
    """What a training stage tells the trainer. Built after `torch.manual_seed(cfg.seed)`."""

    model: nn.Module  # before DeepSpeed wraps it
    total_steps: int

    def describe(self) -> str:
        """One line for the start of the log: what is trained on what."""
        ...

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Take back what `state_dict` put into the checkpoint being resumed."""
        ...

    def start(self, step: int, metrics: MetricsLogger, resumed: bool) -> None:
        """Last preparations before step `step` (collective): baselines, background data loading."""
        ...

    def batches(self, step: int) -> Sequence[Any]:
        """This rank's micro-batches of optimizer step `step` (0-based), as many as grad-accum steps."""
        ...

    def loss(self, engine: Any, batch: Any) -> dict[str, torch.Tensor]:
        """`loss` (minimised) and any parts of it, logged as `train/<name>`."""
        ...

    def step_metrics(self, step: int, step_time_s: float) -> dict[str, float]:
        """The task's own `train/` metrics of a logged step (throughput, data seen)."""
        ...

    def evaluations(self) -> list[Evaluation]:
        ...

    def state_dict(self, step: int) -> dict[str, Any]:
        """What the task adds to `trainer_state.json`."""
        ...

    def export(self, engine: Any, weights: dict[str, torch.Tensor], folder: Path) -> None:
        """Write the consolidated `weights` as a model that loads without the trainer."""
        ...

    def close(self) -> None:
        ...


def run(cfg: DictConfig, build_task: Callable[[DictConfig, RunSetup], Task], identity: dict[str, Any]) -> int:
    """Train the task until its last step or a stop signal; returns the process exit code.

    `cfg` and `identity` come from the checks before training (train/preflight.py).
    """
    startup = StartupClock()
    # gloo's own timeout lies beyond the watchdog's, so a hang ends with the watchdog's line.
    dist_env = init_distributed(timeout_s=2 * cfg.train.collective_timeout_s + 60)
    rank, world_size = dist_env.rank, dist_env.world_size
    startup.mark("process group")
    logging.basicConfig(level=logging.INFO if rank == 0 else logging.WARNING,
                        format=f"%(asctime)s [rank{rank}] %(message)s")
    log.info("ranks: %s; collectives: %s", rank_hosts(world_size), collectives())
    watchdog = ProgressWatchdog(cfg.train.collective_timeout_s, rank, Path(cfg.run_dir) / REQUEUE_MARKER)
    torch.set_num_threads(threads_per_rank(cfg, world_size))
    global_batch = cfg.train.global_batch_size
    run_dir = Path(cfg.run_dir)
    checkpoints_dir = run_dir / "checkpoints"
    # Decided before the task is built (a resumed task need not load its initial weights) and before
    # deepspeed.initialize (loading a universal checkpoint is a DeepSpeed config flag).
    resume = checkpoint.plan_resume(checkpoints_dir, resume_request(cfg), world_size)
    if resume is not None:  # the verified checkpoint may be older than the one preflight compared with
        for accepted in check_same_run(resume.state.get("identity"), identity, list(cfg.train.accept_changes),
                                       resume.checkpoint):
            log.warning("continuing %s with changed settings, as accepted: %s", resume.checkpoint, accepted)
    setup = RunSetup(rank, world_size, resolve_precision(cfg.precision),
                     grad_accum_steps(global_batch, cfg.train.micro_batch_size, world_size), resume is not None)
    torch.manual_seed(cfg.seed)
    task = build_task(cfg, setup)
    startup.mark("task")

    ds_config = build_ds_config(cfg, world_size, setup.precision)
    if resume is not None and resume.universal:
        ds_config["checkpoint"] = {"load_universal": True}
    engine, optimizer = start_engine(task.model, cfg, ds_config)
    if cfg.train.get("compile"):
        engine.compile()  # torch.compile (inductor) of the module; ZeRO-3's gather/release hooks stay eager
    guard = optimizer.guard

    step, wandb_run_id = 0, None
    if resume is not None:
        checkpoint.load(engine, resume, checkpoints_dir)
        state = resume.state
        step = state["step"]
        # A run_dir started from another run's checkpoint (train.resume=<path>) is a wandb run of its own.
        wandb_run_id = state["wandb_run_id"] if resume.checkpoint.parent == checkpoints_dir else None
        if guard is not None:
            guard.load_state_dict(state["spike_guard"])
        # Another rank count means other ranks' streams; fine-tuning checkpoints of before the shared
        # trainer carry none.
        if not resume.universal and "rng" in state:
            checkpoint.restore_rng(state["rng"][rank])
        task.load_state_dict(state)
        log.info("resumed from %s at step %d", resume.checkpoint, step)
    budget = TimeBudget.from_state(cfg.train.get("time_budget_s"), resume.state if resume is not None else None)
    # after the resume: an accepted change of batch re-divides the rest; a time budget decided earlier holds
    total_steps = min(budget.total_steps or task.total_steps, task.total_steps)
    startup.mark("engine" + (" and resume" if resume is not None else ""))
    watchdog.beat()

    if step >= total_steps:
        log.info("%s is complete (%d of %d steps); nothing to do", run_dir, step, total_steps)
        watchdog.stop()
        return 0
    if rank == 0:
        run_dir.mkdir(parents=True, exist_ok=True)
        (run_dir / "config.yaml").write_text(OmegaConf.to_yaml(cfg, resolve=True))
        dropped = rewind_metrics(run_dir, step if resume is not None else -1)
        if dropped:
            log.info("metrics.jsonl: %d rows logged after step %d by an earlier job dropped", dropped, step)
    resolved = OmegaConf.to_container(cfg, resolve=True)
    metrics = MetricsLogger(run_dir, rank == 0, cfg.wandb, resolved, wandb_run_id)  # type: ignore[arg-type]
    wandb_run_id = gather_objects(metrics.run_id, world_size)[0]
    startup.mark("metrics and wandb")
    log.info("%s; %d steps of %d; grad accum %d; %s; %d ranks", task.describe(), total_steps, global_batch,
             setup.accum, setup.precision, world_size)
    task.start(step, metrics, resumed=resume is not None)
    evaluations = task.evaluations()
    startup.mark("task start")
    watchdog.beat()

    def save_checkpoint() -> None:
        trainer_state = {"step": step, "world_size": world_size, "global_batch_size": global_batch,
                         "total_steps": total_steps, "wandb_run_id": wandb_run_id, "identity": identity,
                         **task.state_dict(step)}
        if guard is not None:
            trainer_state["spike_guard"] = guard.state_dict()
        if budget.state_dict() is not None:
            trainer_state["time_budget"] = budget.state_dict()
        trainer_state["rng"] = gather_objects(checkpoint.rng_state(), world_size)
        export = (lambda weights, folder: task.export(engine, weights, folder)) if cfg.checkpoint.export_model else None
        began = time.perf_counter()
        path = checkpoint.save(engine, checkpoints_dir, step, trainer_state, cfg.checkpoint.keep_last, export)
        log.info("checkpoint %s written in %.1f s", path, time.perf_counter() - began)
        watchdog.beat()

    stop = StopRequest()
    stop_at = int(cfg.train.stop_at_step) if cfg.train.get("stop_at_step") else None
    engine.train()
    loop_started, first_step = time.perf_counter(), step
    exit_code = 0
    while step < total_steps:
        started = time.perf_counter()
        batches = task.batches(step)
        lr = lr_at(step, total_steps, cfg)
        for group in engine.optimizer.param_groups:
            group["lr"] = lr
        sums: dict[str, torch.Tensor] = {}
        for k, batch in enumerate(batches):
            parts = task.loss(engine, batch)
            engine.backward(parts["loss"])
            for name, value in parts.items():
                value = value.detach().double()
                sums[name] = sums[name] + value if name in sums else value
            if k == setup.accum - 1 and guard is not None and guard.enabled:
                guard.observe(mean_across_ranks(sums["loss"] / setup.accum))  # judged before the update
            engine.step()
        step += 1
        skipped, roll_back = guard.settle() if guard is not None else (False, False)
        step_time = time.perf_counter() - started
        if budget.active and budget.total_steps is None:  # every rank decides on the same (mean) times
            agreed_time = float(mean_across_ranks(torch.tensor(step_time)))
            if budget.observe(step, agreed_time, total_steps) is not None:
                total_steps = budget.total_steps
                log.info(budget.describe())

        if step % cfg.train.log_every == 0 or skipped:
            names = list(sums)
            means = mean_across_ranks(torch.stack([sums[name] for name in names]) / setup.accum).tolist()
            losses = dict(zip(names, means, strict=True))
            grad_norm = engine.get_global_grad_norm()
            values = {
                **{f"train/{name}": value for name, value in losses.items()}, "train/lr": lr,
                "train/grad_norm": float(grad_norm) if grad_norm is not None else float("nan"),
                "train/step_time_s": step_time, **task.step_metrics(step, step_time),
                **({"train/skipped_steps": guard.skipped_total} if guard is not None else {}),
                "sys/max_rss_gb": max_rss_gb(),
            }
            metrics.log(step, values)
            log.info(console_line(step, total_steps, values, time.perf_counter() - loop_started, step - first_step))
        if step == first_step + 1:
            startup.mark("first step")
            log.info(startup.line())
            compiled = kernels_compiled()
            if compiled and not torch.cuda.is_available() and not cfg.train.get("compile"):
                log.info("the first step compiled %d CPU kernel(s) not in inductor's cache; `python -m train.prebuild "
                         "--ranks-per-node <ranks on each node> <this run's overrides>` builds them ahead of a launch",
                         compiled)
            if skipped:
                log.warning("step %d: loss %.4f looks like a spike; update skipped (%d in a row)", step,
                            losses["loss"], guard.consecutive)
        if roll_back:
            last = checkpoint.roll_back(engine, checkpoints_dir)
            if last is not None:
                guard.rolled_back()
                metrics.log(step, {"train/rollbacks": guard.rollbacks})
                log.warning("rolled back to %s; continuing with the data after step %d", last.name, step)

        done = step == total_steps
        watchdog.beat()
        for evaluation in evaluations:
            if evaluation.due(step, done):
                began = time.perf_counter()
                evaluation.run(engine, step, metrics)
                log.info("step %d: %s took %.1f s", step, evaluation.name, time.perf_counter() - began)
                watchdog.beat()
        stopping = stop.agreed() or step == stop_at
        if done or stopping or (cfg.checkpoint.every and step % cfg.checkpoint.every == 0):
            save_checkpoint()
        if stopping and not done:
            log.info("stopping at step %d of %d for a restart (signal %s)", step, total_steps, stop.received)
            if rank == 0:
                (run_dir / REQUEUE_MARKER).write_text(f"{step}\n")
            exit_code = EXIT_REQUEUE
            break

    watchdog.stop()
    task.close()
    if step:
        log.info("metrics in %s", metrics.path)
        if metrics.run_path:
            log.info("wandb run: %s", metrics.run_path)
    metrics.finish()
    if dist.is_initialized():
        dist.barrier()
    sys.stdout.flush()
    return exit_code
