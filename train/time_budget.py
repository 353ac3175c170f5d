"""`train.time_budget_s`: a run that fits its training steps into a wall-clock budget.

The step count a machine can afford is known only once it has run a few steps, and the learning-rate
schedule needs the step count (cosine decays to its floor at the last step). So the run starts with the
plan's length, times `PROBE_STEPS` steps after its first (which pays for warm-up work: kernel
compilation, allocator growth), and then fixes the schedule's last step to the steps the rest of the
budget holds at their median time, never more than the plan allows. With warmup at least as long as
the probe, the learning rates before the decision are already the final schedule's (warmup does not
depend on the length). The decision is recorded in every checkpoint, so a resumed or requeued run
keeps it (a run stopped before deciding probes again). The budget counts training steps: evaluations
and checkpoints come on top of it.
"""

from __future__ import annotations

import statistics
from typing import Any

PROBE_STEPS = 4


class TimeBudget:
    """Decides, once, the last step that fits the budget."""

    def __init__(self, budget_s: float | None) -> None:
        self.budget_s = budget_s
        self.total_steps: int | None = None  # decided (now or by an earlier job of the run), or None
        self.step_times: list[float] = []
        self.spent_s = 0.0

    @property
    def active(self) -> bool:
        return self.budget_s is not None

    def observe(self, step: int, step_time_s: float, plan_total: int) -> int | None:
        """After step `step` took `step_time_s`: the decided last step, the first time it is decided."""
        if self.budget_s is None or self.total_steps is not None:
            return None
        self.spent_s += step_time_s
        self.step_times.append(step_time_s)
        if len(self.step_times) <= PROBE_STEPS:
            return None
        median = statistics.median(self.step_times[1:])
        affordable = int(max(self.budget_s - self.spent_s, 0.0) / median)
        self.total_steps = min(plan_total, step + max(affordable, 1))
        return self.total_steps

    def describe(self) -> str:
        median = statistics.median(self.step_times[1:])
        return (f"time budget {self.budget_s:g} s: {self.total_steps} steps at {median:.2f} s/step "
                f"(median of {len(self.step_times) - 1} steps after the first); the schedule ends there")

    def state_dict(self) -> dict[str, Any] | None:
        if self.total_steps is None:
            return None
        return {"budget_s": self.budget_s, "total_steps": self.total_steps}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """An earlier job's decision holds when it was taken for the same budget."""
        if state.get("budget_s") == self.budget_s:
            self.total_steps = state.get("total_steps")
