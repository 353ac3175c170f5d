"""GPT-3's AdamW parameter groups and the learning-rate schedules (the optimizer itself: train/spike_guard.py)."""

from __future__ import annotations

import math
from typing import Any

from torch import nn

from train.settings import OptimSettings, ScheduleSettings


def param_groups(model: nn.Module, weight_decay: float) -> list[dict[str, Any]]:
    """Decay matrices only: biases, LayerNorm gains and embeddings are not decayed (GPT-3 / nanoGPT practice)."""
    no_decay_types = (nn.LayerNorm, nn.Embedding)
    decay, no_decay, seen = [], [], set()
    for module in model.modules():
        for name, param in module.named_parameters(recurse=False):
            if id(param) in seen or not param.requires_grad:
                continue
            seen.add(id(param))
            if isinstance(module, no_decay_types) or name.endswith("bias"):
                no_decay.append(param)
            else:
                decay.append(param)
    return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]


class LearningRateSchedule:
    """Learning rate for optimizer step `step` (0-based) of a run of `total_steps`.

    cosine: linear warmup, then cosine decay to min_lr_ratio x peak at the last step (GPT-3, Brown et
    al. 2020, section 2.3/appendix B). wsd: warmup, constant, then linear decay over the last
    decay_fraction of steps (warmup-stable-decay, Hu et al. 2024, MiniCPM). The warmup is fixed from the
    steps the stage plans, so a time budget that shortens the run later does not move it.
    """

    def __init__(self, optim: OptimSettings, schedule: ScheduleSettings, planned_steps: int) -> None:
        self.peak, self.floor = optim.lr, optim.lr * schedule.min_lr_ratio
        self.kind, self.decay_fraction = schedule.kind, schedule.decay_fraction
        self.warmup_steps = schedule.warmup(planned_steps)

    def lr_at(self, step: int, total_steps: int) -> float:
        peak, floor = self.peak, self.floor
        warmup = min(self.warmup_steps, max(total_steps - 1, 0))
        if step < warmup:
            return peak * (step + 1) / warmup
        if self.kind == "cosine":
            progress = (step - warmup) / max(total_steps - 1 - warmup, 1)
            return floor + (peak - floor) * 0.5 * (1 + math.cos(math.pi * min(progress, 1.0)))
        decay_steps = max(int(total_steps * self.decay_fraction), 1)
        decay_start = total_steps - decay_steps
        if step < decay_start:
            return peak
        return peak - (peak - floor) * min((step - decay_start + 1) / decay_steps, 1.0)
