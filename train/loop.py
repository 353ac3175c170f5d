"""The training loop, read top to bottom: a step, then the hooks, then the checkpointer's turn.

`train_step` runs one optimizer step (gradient accumulation, the spike guard's verdict) and returns
what happened; everything else that follows a step (logging, evaluations, the time budget, stop
signals, the watchdog, roll-backs) is a hook (train/hooks.py), and the Checkpointer decides itself
whether a save is due. Set-up, which builds the `TrainingRun`, is train/trainer.py.

Losses stay on the device through the step: they are averaged across ranks and read on the host
when a step is logged, never per micro-step. The one per-step read is the spike guard's verdict,
and only while the guard is on, because a roll-back is a host decision.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import torch

from train.checkpointing.checkpointer import Checkpointer
from train.distributed import mean_across_ranks
from train.metrics import MetricsLogger, StartupClock
from train.optim import LearningRateSchedule
from train.run_folder import REQUEUE_MARKER
from train.settings import TrainingSettings
from train.signals import EXIT_REQUEUE
from train.spike_guard import LossSpikeGuard
from train.stage import RunSetup, Stage
from train.time_budget import TimeBudget
from train.watchdog import ProgressWatchdog

log = logging.getLogger("train")


@dataclass
class TrainingRun:
    """Everything a step and its hooks work with; its own position is a checkpointed part (`state_dict`)."""

    settings: TrainingSettings
    setup: RunSetup
    stage: Stage
    engine: Any
    schedule: LearningRateSchedule
    checkpointer: Checkpointer
    guard: LossSpikeGuard | None
    budget: TimeBudget
    watchdog: ProgressWatchdog
    startup: StartupClock
    identity: dict[str, Any]
    step: int = 0
    total_steps: int = 0
    wandb_run_id: str | None = None
    stop_reason: str | None = None  # set by a hook: checkpoint now and exit for a restart
    metrics: MetricsLogger = field(init=False)

    @property
    def done(self) -> bool:
        return self.step == self.total_steps

    @property
    def run_dir(self) -> Path:
        return Path(self.settings.run_dir)

    def state_dict(self) -> dict[str, Any]:
        return {"step": self.step, "world_size": self.setup.world_size,
                "global_batch_size": self.settings.train.global_batch_size, "total_steps": self.total_steps,
                "wandb_run_id": self.wandb_run_id, "identity": self.identity, **self.stage.state_dict(self.step)}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.step, self.wandb_run_id = state["step"], state["wandb_run_id"]
        self.stage.load_state_dict(state)


@dataclass(frozen=True)
class StepOutcome:
    """One optimizer step: its losses (this rank's means over micro-batches, on the device), learning
    rate, the spike guard's verdict and its wall time."""

    losses: dict[str, torch.Tensor]
    lr: float
    skipped: bool
    roll_back: bool
    time_s: float


class Hook(Protocol):
    def after_step(self, run: TrainingRun, outcome: StepOutcome) -> None:
        ...


def train_step(run: TrainingRun) -> StepOutcome:
    """Optimizer step `run.step` over this rank's micro-batches; advances `run.step`."""
    started = time.perf_counter()
    engine, guard, accum = run.engine, run.guard, run.setup.accum
    batches = run.stage.batches(run.step)
    lr = run.schedule.lr_at(run.step, run.total_steps)
    for group in engine.optimizer.param_groups:
        group["lr"] = lr
    sums: dict[str, torch.Tensor] = {}
    for k, batch in enumerate(batches):
        parts = run.stage.loss(engine, batch)
        engine.backward(parts["loss"])
        for name, value in parts.items():
            value = value.detach().double()
            sums[name] = sums[name] + value if name in sums else value
        if k == accum - 1 and guard is not None and guard.enabled:
            guard.observe(mean_across_ranks(sums["loss"] / accum))  # judged before the update
        engine.step()
    run.step += 1
    skipped, roll_back = guard.settle() if guard is not None else (False, False)
    losses = {name: total / accum for name, total in sums.items()}
    return StepOutcome(losses, lr, skipped, roll_back, time.perf_counter() - started)


def fit(run: TrainingRun, hooks: list[Hook]) -> int:
    """Step until the last step or a stop; returns the process exit code (EXIT_REQUEUE after a stop)."""
    run.engine.train()
    while run.step < run.total_steps:
        outcome = train_step(run)
        for hook in hooks:
            hook.after_step(run, outcome)
        if run.checkpointer.maybe_save(run.step, final=run.done, stopping=run.stop_reason is not None) is not None:
            run.watchdog.beat()
        if run.stop_reason is not None and not run.done:
            log.info("stopping at step %d of %d for a restart (%s)", run.step, run.total_steps, run.stop_reason)
            if run.setup.rank == 0:
                (run.run_dir / REQUEUE_MARKER).write_text(f"{run.step}\n")
            return EXIT_REQUEUE
    return 0
