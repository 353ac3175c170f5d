"""What a training stage tells the trainer, and what the trainer tells it.

A stage (pretraining: train/pretrain.py; fine-tuning: train/finetune/task.py) says only what differs
between them: its model, its batches and loss, its evaluations, the extra state its checkpoints carry
and what it exports. The trainer (train/trainer.py, train/loop.py) does the rest, once.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from contextlib import AbstractContextManager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import torch
from torch import nn

from train.metrics import MetricsLogger


@dataclass(frozen=True)
class RunSetup:
    """What the trainer settles before a stage is built: where this process stands and how it computes."""

    rank: int
    world_size: int
    precision: str  # bf16 | fp32
    accum: int  # micro-batches per rank per optimizer step
    resuming: bool  # a checkpoint will be loaded over the stage's initial weights
    # the context to build the model in so that each rank holds only its partition (ZeRO-3's zero.Init), or None
    partitioned_build: Callable[[], AbstractContextManager[Any]] | None = None


@dataclass(frozen=True)
class Evaluation:
    """Something a stage runs every `every` steps (0: never), or once `every_s` seconds have passed since it
    last ran (a large model's cadence), and, with `at_end`, after the last step."""

    every: int
    at_end: bool
    run: Callable[[Any, int, MetricsLogger], None]  # (engine, step, metrics)
    name: str  # for the console: "validation", "samples", ...
    every_s: float | None = None

    def due(self, step: int, done: bool) -> bool:
        return bool(self.every and step % self.every == 0) or (done and self.at_end)


class Stage(Protocol):
    """A training stage. Built after `torch.manual_seed(seed)`."""

    model: nn.Module  # before DeepSpeed wraps it
    total_steps: int
    # fp32 weights the model starts from, by parameter name, when they came from elsewhere (continued
    # pretraining, fine-tuning), on rank 0 at least; None: a fresh initialisation
    initial_weights: dict[str, torch.Tensor] | None

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
        """The stage's own `train/` metrics of a logged step (throughput, data seen)."""
        ...

    def evaluations(self) -> list[Evaluation]:
        ...

    def state_dict(self, step: int) -> dict[str, Any]:
        """What the stage adds to `trainer_state.json` after step `step`."""
        ...

    def export(self, engine: Any, weights: dict[str, torch.Tensor], folder: Path) -> None:
        """Write the consolidated `weights` as a model that loads without the trainer."""
        ...

    def close(self) -> None:
        ...
