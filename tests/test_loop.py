"""The training loop's behaviour, in process: steps, hooks, the Checkpointer's cadence, stops and resumes.

The loop (train/loop.py) and its hooks (train/hooks.py) run here over a tiny real model and optimizer
behind `LocalEngine`, which offers the few engine methods the loop calls (backward, step, the
optimizer's groups, save and load of a checkpoint) the way a one-rank DeepSpeed engine would. What
DeepSpeed itself does is tested end to end in test_train.py and test_run_trust.py.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import torch
from torch import nn

from train.checkpointing.checkpointer import Checkpointer, ProcessRng
from train.checkpointing.layout import STATE_FILE, complete_checkpoints, writer_of
from train.hooks import after_step_hooks
from train.loop import TrainingRun, fit, train_step
from train.metrics import MetricsLogger, StartupClock
from train.optim import LearningRateSchedule
from train.run_folder import REQUEUE_MARKER
from train.settings import (
    CheckpointSettings,
    LoopSettings,
    OptimSettings,
    ScheduleSettings,
    SpikeGuardSettings,
    TrainingSettings,
    WandbSettings,
)
from train.signals import EXIT_REQUEUE
from train.spike_guard import LossSpikeGuard, SkipStepAdamW
from train.stage import Evaluation, RunSetup
from train.time_budget import TimeBudget
from train.watchdog import ProgressWatchdog


class LocalEngine:
    """One process's engine: the model, an optimizer, and checkpoints as one torch file per tag."""

    def __init__(self, model: nn.Module, optimizer: torch.optim.Optimizer) -> None:
        self.module, self.optimizer = model, optimizer

    def __call__(self, inputs: torch.Tensor) -> torch.Tensor:
        return self.module(inputs)

    def train(self) -> None:
        self.module.train()

    def backward(self, loss: torch.Tensor) -> None:
        loss.backward()

    def step(self) -> None:
        self.optimizer.step()
        self.optimizer.zero_grad()

    def get_global_grad_norm(self) -> float:
        return 0.0

    def save_checkpoint(self, folder: str, tag: str, save_latest: bool) -> None:
        (Path(folder) / tag).mkdir(parents=True, exist_ok=True)
        torch.save({"model": self.module.state_dict(), "optimizer": self.optimizer.state_dict()},
                   Path(folder) / tag / "engine.pt")

    def load_checkpoint(self, folder: str, tag: str, load_lr_scheduler_states: bool) -> None:
        state = torch.load(Path(folder) / tag / "engine.pt")
        self.module.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])


class Regression:
    """A stage: fit y = 3x with a linear layer; its data position is the step, and it counts what ran."""

    def __init__(self, total_steps: int, eval_every_s: float | None = None) -> None:
        torch.manual_seed(0)
        self.eval_every_s = eval_every_s
        self.model = nn.Linear(1, 1)
        self.total_steps = total_steps
        self.batches_seen: list[int] = []
        self.evaluated_at: list[int] = []
        self.resumed_state: dict[str, Any] | None = None

    def describe(self) -> str:
        return "regression"

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.resumed_state = state

    def start(self, step: int, metrics: MetricsLogger, resumed: bool) -> None:
        pass

    def batches(self, step: int) -> list[torch.Tensor]:
        self.batches_seen.append(step)
        return [torch.full((4, 1), float(step % 5 + 1))]

    def loss(self, engine: Any, batch: torch.Tensor) -> dict[str, torch.Tensor]:
        return {"loss": ((engine(batch) - 3 * batch) ** 2).mean()}

    def step_metrics(self, step: int, step_time_s: float) -> dict[str, float]:
        return {"train/samples_seen": 4.0 * step}

    def evaluations(self) -> list[Evaluation]:
        return [Evaluation(3, True, lambda engine, step, metrics: self.evaluated_at.append(step), "validation",
                           self.eval_every_s)]

    def state_dict(self, step: int) -> dict[str, Any]:
        return {"samples_consumed": 4 * step}

    def export(self, engine: Any, weights: dict[str, torch.Tensor], folder: Path) -> None:
        folder.mkdir(parents=True)
        torch.save(weights, folder / "weights.pt")

    def close(self) -> None:
        pass


def make_run(run_dir: Path, total_steps: int, *, every: int = 4, stop_at_step: int | None = None,
             time_budget_s: float | None = None, every_s: float | None = None, export: bool = False,
             keep_last: int = 2, eval_every_s: float | None = None) -> TrainingRun:
    """A one-rank run as train/trainer.py's set_up builds it, over LocalEngine."""
    settings = TrainingSettings(
        run_name="loop", run_dir=str(run_dir),
        train=LoopSettings(micro_batch_size=4, global_batch_size=4, stop_at_step=stop_at_step,
                           time_budget_s=time_budget_s),
        optim=OptimSettings(lr=0.05, betas=[0.9, 0.95], weight_decay=0.0),
        schedule=ScheduleSettings(kind="cosine", warmup_steps=2, min_lr_ratio=0.1, decay_fraction=0.2),
        checkpoint=CheckpointSettings(every=every, every_s=every_s, keep_last=keep_last, export_model=export,
                                      export_final_only=True),
        spike_guard=SpikeGuardSettings(), wandb=WandbSettings(enabled=False))
    stage = Regression(total_steps, eval_every_s)
    guard = LossSpikeGuard(**vars(settings.spike_guard))
    optimizer = SkipStepAdamW(stage.model.parameters(), lr=0.05, guard=guard)
    engine = LocalEngine(stage.model, optimizer)
    checkpointer = Checkpointer(run_dir, settings.checkpoint, world_size=1)
    run = TrainingRun(settings, RunSetup(0, 1, "fp32", 1, False), stage, engine,
                      LearningRateSchedule(settings.optim, settings.schedule, total_steps), checkpointer, guard,
                      TimeBudget(time_budget_s), ProgressWatchdog(600, 0, run_dir / REQUEUE_MARKER), StartupClock(),
                      {"model": "linear"}, total_steps=total_steps)
    checkpointer.register(None, run)
    checkpointer.register("spike_guard", guard)
    checkpointer.register("time_budget", run.budget)
    checkpointer.register("rng", ProcessRng(0, 1))
    checkpointer.attach(engine, lambda weights, folder: stage.export(engine, weights, folder))
    run.metrics = MetricsLogger(run_dir, True, settings.wandb, {}, None)
    return run


def fit_run(run: TrainingRun) -> int:
    try:
        return fit(run, after_step_hooks(run, run.stage.evaluations()))
    finally:
        run.watchdog.stop()


def logged(run_dir: Path, key: str) -> list[tuple[int, float]]:
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    return [(row["step"], row[key]) for row in rows if key in row]


def test_a_step_follows_the_schedule_and_lowers_the_loss(tmp_path: Path) -> None:
    run = make_run(tmp_path, total_steps=10)
    first = train_step(run)
    assert run.step == 1 and first.lr == pytest.approx(0.05 / 2) and not first.skipped and not first.roll_back
    outcomes = [train_step(run) for _ in range(8)]
    assert [o.lr for o in outcomes[:1]] == [0.05]
    assert outcomes[4].losses["loss"] < first.losses["loss"], "step 5 sees step 0's batch again, better fitted"
    run.watchdog.stop()


def test_fit_runs_every_step_once_with_its_hooks_and_the_checkpointers_saves(tmp_path: Path) -> None:
    run = make_run(tmp_path, total_steps=10)
    assert fit_run(run) == 0
    assert run.stage.batches_seen == list(range(10))
    assert [step for step, _ in logged(tmp_path, "train/loss")] == list(range(1, 11))
    assert run.stage.evaluated_at == [3, 6, 9, 10], "every 3 steps and at the end"
    # every 4 steps and at the last, the newest two kept
    assert [p.name for p in complete_checkpoints(tmp_path / "checkpoints")] == ["step00000008", "step00000010"]
    state = json.loads((tmp_path / "checkpoints" / "step00000010" / STATE_FILE).read_text())
    assert state["step"] == 10 and state["samples_consumed"] == 40 and state["identity"] == {"model": "linear"}
    assert set(state) >= {"spike_guard", "rng", "files", "total_steps", "wandb_run_id"}
    assert "time_budget" not in state, "no budget, nothing decided"


def test_a_stop_checkpoints_that_step_and_asks_for_a_requeue_and_a_resume_continues_there(tmp_path: Path) -> None:
    run = make_run(tmp_path, total_steps=10, stop_at_step=5)
    assert fit_run(run) == EXIT_REQUEUE
    assert run.step == 5 and (tmp_path / REQUEUE_MARKER).read_text() == "5\n"
    assert complete_checkpoints(tmp_path / "checkpoints")[-1].name == "step00000005"
    weights = run.stage.model.weight.detach().clone()

    half_written = tmp_path / "checkpoints" / "step00000007.tmp"
    half_written.mkdir()
    resumed = make_run(tmp_path, total_steps=10)
    resume = resumed.checkpointer.plan_resume("auto", {"model": "linear"}, [])
    assert not half_written.exists(), "what a killed save left is swept at the next start"
    assert resume is not None and not resume.universal
    resumed.checkpointer.load(resume)
    assert resumed.step == 5 and resumed.stage.resumed_state["samples_consumed"] == 20
    assert torch.equal(resumed.stage.model.weight, weights)
    assert fit_run(resumed) == 0
    assert resumed.stage.batches_seen == [5, 6, 7, 8, 9], "the data continues after the stop, none repeated"


def test_a_time_budget_ends_the_schedule_early_and_its_decision_is_checkpointed(tmp_path: Path) -> None:
    run = make_run(tmp_path, total_steps=1000, every=0, time_budget_s=1e-9)
    assert fit_run(run) == 0
    assert run.total_steps < 1000 and run.step == run.total_steps
    state = json.loads((complete_checkpoints(tmp_path / "checkpoints")[-1] / STATE_FILE).read_text())
    assert state["time_budget"] == {"budget_s": 1e-9, "total_steps": run.total_steps}


def test_a_changed_identity_is_refused_by_the_checkpointers_resume_plan(tmp_path: Path) -> None:
    run = make_run(tmp_path, total_steps=4)
    assert fit_run(run) == 0
    again = make_run(tmp_path, total_steps=4)
    with pytest.raises(SystemExit, match="was trained with other settings"):
        again.checkpointer.plan_resume("auto", {"model": "another"}, [])
    again.watchdog.stop()


def test_each_rank_hashes_the_files_it_wrote() -> None:
    assert writer_of("zero_pp_rank_3_mp_rank_00_optim_states.pt", 8) == 3
    assert writer_of("zero_pp_rank_11_mp_rank_00_model_states.pt", 8) == 3
    assert writer_of("model/model.safetensors", 8) == writer_of("mp_rank_00_model_states.pt", 8) == 0


def test_wall_clock_cadence_saves_and_evaluates_and_the_model_is_exported_at_the_end_only(tmp_path: Path) -> None:
    run = make_run(tmp_path, total_steps=3, every=0, every_s=1e-9, export=True, keep_last=0, eval_every_s=1e-9)
    assert fit_run(run) == 0
    saved = complete_checkpoints(tmp_path / "checkpoints")
    assert [p.name for p in saved] == ["step00000001", "step00000002", "step00000003"], "a save whenever time is up"
    assert run.stage.evaluated_at == [1, 2, 3], "and an evaluation"
    assert [(p / "model" / "weights.pt").is_file() for p in saved] == [False, False, True]
    weights = torch.load(saved[-1] / "model" / "weights.pt")
    assert torch.equal(weights["weight"], run.stage.model.weight.detach())
