"""What runs after each training step, one small hook per concern, in the order the loop calls them.

Each takes the run and the step's outcome (train/loop.py); the concerns themselves live in their own
modules (time_budget, metrics, spike_guard, signals, watchdog), these only connect them to the loop.
"""

from __future__ import annotations

import logging
import time

import torch

from train.distributed import mean_across_ranks, on_any_rank
from train.loop import Hook, StepOutcome, TrainingRun
from train.metrics import console_line, kernels_compiled, max_rss_gb
from train.signals import StopRequest
from train.stage import Evaluation

log = logging.getLogger("train")


class DecideTimeBudget:
    """`train.time_budget_s`: once the probe steps have run, the schedule's last step (train/time_budget.py)."""

    def after_step(self, run: TrainingRun, outcome: StepOutcome) -> None:
        budget = run.budget
        if not budget.active or budget.total_steps is not None:
            return
        agreed_time = float(mean_across_ranks(torch.tensor(outcome.time_s)))  # every rank decides alike
        if budget.observe(run.step, agreed_time, run.total_steps) is not None:
            run.total_steps = budget.total_steps  # type: ignore[assignment]
            log.info(budget.describe())


class LogSteps:
    """Every `train.log_every` steps and every skipped one: the metrics (metrics.jsonl, wandb) and a console line."""

    def __init__(self, run: TrainingRun) -> None:
        self.started, self.first_step = time.perf_counter(), run.step

    def after_step(self, run: TrainingRun, outcome: StepOutcome) -> None:
        if run.step % run.settings.train.log_every and not outcome.skipped:
            return
        names = list(outcome.losses)
        means = mean_across_ranks(torch.stack([outcome.losses[name] for name in names])).tolist()
        grad_norm = run.engine.get_global_grad_norm()
        values = {
            **{f"train/{name}": value for name, value in zip(names, means, strict=True)}, "train/lr": outcome.lr,
            "train/grad_norm": float(grad_norm) if grad_norm is not None else float("nan"),
            "train/step_time_s": outcome.time_s, **run.stage.step_metrics(run.step, outcome.time_s),
            **({"train/skipped_steps": run.guard.skipped_total} if run.guard is not None else {}),
            "sys/max_rss_gb": max_rss_gb(),
        }
        run.metrics.log(run.step, values)
        log.info(console_line(run.step, run.total_steps, values, time.perf_counter() - self.started,
                              run.step - self.first_step))
        if outcome.skipped and run.guard is not None:
            log.warning("step %d: loss %.4f looks like a spike; update skipped (%d in a row)", run.step,
                        values["train/loss"], run.guard.consecutive)


class ReportStartup:
    """After the first step of a job: where its start-up time went, and any CPU kernel it still compiled."""

    def __init__(self, run: TrainingRun) -> None:
        self.clock, self.first_step = run.startup, run.step

    def after_step(self, run: TrainingRun, outcome: StepOutcome) -> None:
        if run.step != self.first_step + 1:
            return
        self.clock.mark("first step")
        log.info(self.clock.line())
        compiled = kernels_compiled()
        if compiled and not torch.cuda.is_available() and not run.settings.train.compile:
            log.info("the first step compiled %d CPU kernel(s) not in inductor's cache; `python -m train.prebuild "
                     "--ranks-per-node <ranks on each node> <this run's overrides>` builds them ahead of a launch",
                     compiled)


class RollBackOnSpikes:
    """After `spike_guard.max_consecutive` skipped updates: back to the last checkpoint's weights."""

    def after_step(self, run: TrainingRun, outcome: StepOutcome) -> None:
        if not outcome.roll_back or run.guard is None:
            return
        last = run.checkpointer.roll_back()
        if last is not None:
            run.guard.rolled_back()
            run.metrics.log(run.step, {"train/rollbacks": run.guard.rollbacks})
            log.warning("rolled back to %s; continuing with the data after step %d", last.name, run.step)


class BeatWatchdog:
    """A finished step is progress (train/watchdog.py)."""

    def after_step(self, run: TrainingRun, outcome: StepOutcome) -> None:
        run.watchdog.beat()


class RunEvaluations:
    """The stage's evaluations that are due at this step (and at the last one), or whose `every_s` has passed
    on any rank since they last ran."""

    def __init__(self, evaluations: list[Evaluation]) -> None:
        self.evaluations = evaluations
        self.last_run = {evaluation.name: time.monotonic() for evaluation in evaluations}

    def after_step(self, run: TrainingRun, outcome: StepOutcome) -> None:
        for evaluation in self.evaluations:
            if evaluation.due(run.step, run.done) or self.time_is_up(evaluation):
                began = time.perf_counter()
                evaluation.run(run.engine, run.step, run.metrics)
                log.info("step %d: %s took %.1f s", run.step, evaluation.name, time.perf_counter() - began)
                self.last_run[evaluation.name] = time.monotonic()
                run.watchdog.beat()

    def time_is_up(self, evaluation: Evaluation) -> bool:
        if not evaluation.every_s:
            return False
        return on_any_rank(time.monotonic() - self.last_run[evaluation.name] >= evaluation.every_s)


class StopOnSignal:
    """A preemption or time-limit signal on any rank (train/signals.py), or `train.stop_at_step`: checkpoint
    and exit for a restart."""

    def __init__(self, stop_at_step: int | None) -> None:
        self.request = StopRequest()
        self.stop_at_step = stop_at_step

    def after_step(self, run: TrainingRun, outcome: StepOutcome) -> None:
        if self.request.agreed():
            run.stop_reason = f"signal {self.request.received}"
        elif run.step == self.stop_at_step:
            run.stop_reason = f"train.stop_at_step={self.stop_at_step}"


def after_step_hooks(run: TrainingRun, evaluations: list[Evaluation]) -> list[Hook]:
    """The hooks in the order a step's aftermath has always run."""
    return [DecideTimeBudget(), LogSteps(run), ReportStartup(run), RollBackOnSpikes(), BeatWatchdog(),
            RunEvaluations(evaluations), StopOnSignal(run.settings.train.stop_at_step)]
