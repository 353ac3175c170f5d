"""The trainer: one DeepSpeed ZeRO-3 skeleton for every training stage: set up, train, finish.

`set_up` builds a `TrainingRun` (process group, the resume plan, the stage, the engine, the restored
checkpoint, metrics and wandb), `train` hands it to the loop (train/loop.py) with its after-step hooks
(train/hooks.py), and closes it. A stage (train/stage.py) says only what differs between pretraining
and fine-tuning; the Checkpointer (train/checkpointing/) owns everything about checkpoints.
"""

from __future__ import annotations

import dataclasses
import logging
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
from omegaconf import OmegaConf

from train.checkpointing.checkpointer import Checkpointer, ProcessRng
from train.checkpointing.layout import resume_request
from train.distributed import collectives, gather_objects, init_distributed, rank_hosts, threads_per_rank
from train.ds_config import (
    build_ds_config,
    partitioned_build,
    resolve_precision,
    restore_fp32_master,
    start_engine,
)
from train.hooks import after_step_hooks
from train.loop import TrainingRun, fit
from train.metrics import MetricsLogger, StartupClock
from train.optim import LearningRateSchedule
from train.run_folder import DEEPSPEED_LOG, REQUEUE_MARKER, rewind_metrics
from train.settings import TrainingSettings
from train.stage import Evaluation, RunSetup, Stage
from train.time_budget import TimeBudget
from train.watchdog import ProgressWatchdog

log = logging.getLogger("train")

BuildStage = Callable[[Any, RunSetup], Stage]  # (the stage's settings, the run's set-up)


def train(training: TrainingRun) -> int:
    """Train the set-up run until its last step or a stop signal; returns the process exit code."""
    if training.step >= training.total_steps:
        log.info("%s is complete (%d of %d steps); nothing to do", training.run_dir, training.step,
                 training.total_steps)
        training.watchdog.stop()
        return 0
    evaluations = open_run(training)
    exit_code = fit(training, after_step_hooks(training, evaluations))
    finish(training)
    return exit_code


def set_up(settings: TrainingSettings, build_stage: BuildStage, identity: dict[str, Any]) -> TrainingRun:
    """Process group, resume plan, stage and engine, with the checkpoint to resume from loaded.

    `settings` and `identity` come from the checks before training (train/preflight.py).
    """
    startup = StartupClock()
    # the process group's own timeout lies beyond the watchdog's (a save's included), so a hang ends with the
    # watchdog's line
    longest = max(settings.train.collective_timeout_s, settings.checkpoint.timeout_s)
    dist_env = init_distributed(timeout_s=2 * longest + 60, deepspeed_log=Path(settings.run_dir) / DEEPSPEED_LOG)
    rank, world_size = dist_env.rank, dist_env.world_size
    startup.mark("process group")
    logging.basicConfig(level=logging.INFO if rank == 0 else logging.WARNING,
                        format=f"%(asctime)s [rank{rank}] %(message)s")
    log.info("ranks: %s; collectives: %s", rank_hosts(world_size), collectives())
    run_dir = Path(settings.run_dir)
    watchdog = ProgressWatchdog(settings.train.collective_timeout_s, rank, run_dir / REQUEUE_MARKER)
    torch.set_num_threads(threads_per_rank(settings.train.threads_per_rank, world_size))
    checkpointer = Checkpointer(run_dir, settings.checkpoint, world_size)
    checkpointer.long_operation = lambda: watchdog.allowing(settings.checkpoint.timeout_s)
    resume = checkpointer.plan_resume(resume_request(settings.train.resume), identity, settings.train.accept_changes)
    precision = resolve_precision(settings.precision)
    ds_config = build_ds_config(settings.deepspeed, settings.train, settings.optim.grad_clip, world_size, precision)
    if resume is not None and resume.universal:
        ds_config["checkpoint"] = {"load_universal": True}
    setup = RunSetup(rank, world_size, precision, settings.train.grad_accum_steps(world_size), resume is not None,
                     partitioned_build(settings.deepspeed, ds_config))
    torch.manual_seed(settings.seed)
    with watchdog.allowing(settings.checkpoint.timeout_s):
        stage = build_stage(settings, setup)
        startup.mark("task")
        engine, optimizer = start_engine(stage.model, settings.deepspeed, settings.optim, settings.spike_guard,
                                         ds_config)
        if precision == "bf16" and stage.initial_weights is not None and resume is None:
            restore_fp32_master(engine, stage.initial_weights)  # the bf16 cast would have rounded them
        stage.initial_weights = None
    if settings.train.compile:
        engine.compile()  # torch.compile (inductor) of the module; ZeRO-3's gather/release hooks stay eager
    training = TrainingRun(settings, setup, stage, engine, LearningRateSchedule(settings.optim, settings.schedule,
                           stage.total_steps), checkpointer, optimizer.guard,
                           TimeBudget(settings.train.time_budget_s), watchdog, startup, identity)
    register_checkpointed_parts(training)
    if resume is not None:
        checkpointer.load(resume)
        log.info("resumed from %s at step %d", resume.checkpoint, training.step)
    # after the resume: an accepted change of batch re-divides the rest; a time budget decided earlier holds
    training.total_steps = min(training.budget.total_steps or stage.total_steps, stage.total_steps)
    startup.mark("engine" + (" and resume" if resume is not None else ""))
    watchdog.beat()
    return training


def register_checkpointed_parts(training: TrainingRun) -> None:
    """What each checkpoint carries besides DeepSpeed's state, and how the stage exports its model."""
    checkpointer, stage, engine = training.checkpointer, training.stage, training.engine
    checkpointer.register(None, training)
    if training.guard is not None:
        checkpointer.register("spike_guard", training.guard)
    checkpointer.register("time_budget", training.budget)
    checkpointer.register("rng", ProcessRng(training.setup.rank, training.setup.world_size))
    checkpointer.attach(engine, lambda weights, folder: stage.export(engine, weights, folder))


def open_run(training: TrainingRun) -> list[Evaluation]:
    """The run's config and metrics (one wandb run across resumes), then the stage's start; returns the
    stage's evaluations."""
    run_dir, rank = training.run_dir, training.setup.rank
    resumed = training.checkpointer.resumed_from is not None
    values = dataclasses.asdict(training.settings)
    if rank == 0:
        run_dir.mkdir(parents=True, exist_ok=True)
        (run_dir / "config.yaml").write_text(OmegaConf.to_yaml(OmegaConf.create(values)))
        dropped = rewind_metrics(run_dir, training.step if resumed else -1)
        if dropped:
            log.info("metrics.jsonl: %d rows logged after step %d by an earlier job dropped", dropped, training.step)
    training.metrics = MetricsLogger(run_dir, rank == 0, training.settings.wandb, values, training.wandb_run_id)
    training.wandb_run_id = gather_objects(training.metrics.run_id, training.setup.world_size)[0]
    training.startup.mark("metrics and wandb")
    settings, setup = training.settings, training.setup
    log.info("%s; %d steps of %d; grad accum %d; %s; %d ranks", training.stage.describe(), training.total_steps,
             settings.train.global_batch_size, setup.accum, setup.precision, setup.world_size)
    training.stage.start(training.step, training.metrics, resumed=resumed)
    evaluations = training.stage.evaluations()
    training.startup.mark("task start")
    training.watchdog.beat()
    return evaluations


def finish(training: TrainingRun) -> None:
    training.watchdog.stop()
    training.stage.close()
    if training.step:
        log.info("metrics in %s", training.metrics.path)
        if training.metrics.run_path:
            log.info("wandb run: %s", training.metrics.run_path)
    training.metrics.finish()
    if dist.is_initialized():
        dist.barrier()
    sys.stdout.flush()
