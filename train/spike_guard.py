"""Skipped updates on loss spikes: the guard that judges a step's loss and the AdamW that obeys it.

A loss more than `zscore` standard deviations above the mean of the last `window` accepted
losses (after `min_history` of them), or a non-finite one, is a spike; the update of that step is
skipped outright: no moment update, no weight decay, no move. After `max_consecutive` skips in a
row the trainer rolls back to the last checkpoint (train/checkpointing/checkpointer.py) and carries on
with the data after the offending batches (the PaLM recipe, Chowdhery et al. 2022, section 5.1).

Modelled on OLMo-core's skip-step optimizer: the judgement is tensor arithmetic on the loss's device
and reaches the optimizer as the `found_inf` flag that torch's fused AdamW kernel already honours
(the one GradScaler sets), so deciding needs no host sync. The trainer reads the outcome back once
per step, when it must know whether to roll back.
"""

from __future__ import annotations

from typing import Any

import torch


class LossSpikeGuard:
    """The spike test and its history, kept as tensors on `device`; `rollbacks` is counted on the host."""

    def __init__(self, enabled: bool, zscore: float, window: int, min_history: int, max_consecutive: int,
                 device: torch.device | None = None) -> None:
        self.enabled, self.zscore, self.window = enabled, zscore, window
        self.min_history, self.max_consecutive = min_history, max_consecutive
        device = device or torch.device("cpu")
        self.history = torch.zeros(window, dtype=torch.float64, device=device)  # a ring of accepted losses
        self.accepted = torch.zeros((), dtype=torch.int64, device=device)  # ever written to the ring
        self._consecutive = torch.zeros((), dtype=torch.int64, device=device)
        self._skipped_total = torch.zeros((), dtype=torch.int64, device=device)
        self._spike = torch.zeros((), dtype=torch.bool, device=device)
        # Host copies, refreshed by settle(): what the trainer logs and decides on.
        self.consecutive = self.skipped_total = self.rollbacks = 0
        self.skip_update: torch.Tensor | None = None  # 1.0 when this step's update is to be skipped

    def observe(self, loss: torch.Tensor) -> None:
        """Judge this step's loss (the mean over ranks, so every rank decides alike) and record it."""
        if not self.enabled:
            return
        loss = loss.to(self.history.device, torch.float64)
        count = self.accepted.clamp(max=self.window)
        filled = torch.arange(self.window, device=self.history.device) < count
        mean = (self.history * filled).sum() / count.clamp(min=1)
        std = (((self.history - mean) * filled).square().sum() / count.clamp(min=1)).sqrt()
        high = loss > mean + self.zscore * torch.maximum(std, 1e-3 * mean.abs())
        spike = ~torch.isfinite(loss) | ((count >= self.min_history) & high)
        slot = (self.accepted % self.window).view(1)
        self.history.index_put_((slot,), torch.where(spike, self.history[slot], loss.view(1)))
        self.accepted += (~spike).long()
        self._consecutive = torch.where(spike, self._consecutive + 1, torch.zeros_like(self._consecutive))
        self._skipped_total += spike.long()
        self._spike = spike
        self.skip_update = spike.float()

    def settle(self) -> tuple[bool, bool]:
        """(this step's update was skipped, it is time to roll back): the one host read per step."""
        if not self.enabled:
            return False, False
        spike, self.consecutive, self.skipped_total = torch.stack(
            [self._spike.long(), self._consecutive, self._skipped_total]).tolist()
        return bool(spike), bool(spike) and self.consecutive >= self.max_consecutive

    def rolled_back(self) -> None:
        self.rollbacks += 1
        self.consecutive = 0
        self._consecutive.zero_()

    def state_dict(self) -> dict[str, Any]:
        """The history oldest first, as `trainer_state.json` has always held it."""
        count = int(self.accepted)
        if count <= self.window:
            history = self.history[:count]
        else:
            start = count % self.window
            history = torch.cat([self.history[start:], self.history[:start]])
        return {"history": history.tolist(), "consecutive": self.consecutive,
                "skipped_total": self.skipped_total, "rollbacks": self.rollbacks}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        history = state["history"][-self.window:]
        self.history.zero_()
        self.history[: len(history)] = torch.tensor(history, dtype=torch.float64)
        self.accepted.fill_(len(history))
        self.consecutive, self.skipped_total, self.rollbacks = (
            state["consecutive"], state["skipped_total"], state["rollbacks"])
        self._consecutive.fill_(self.consecutive)
        self._skipped_total.fill_(self.skipped_total)


class SkipStepAdamW(torch.optim.AdamW):
    """AdamW whose update is skipped when its guard judged the step's loss a spike.

    DeepSpeed calls `step()` at every gradient-accumulation boundary (once per ZeRO sub-group) and
    zeroes the gradients afterwards; the trainer has the guard observe the step's loss before that
    boundary. Fused by default: one vectorised pass over each of ZeRO's flat fp32 partitions, where
    torch's CPU default is the op-by-op loop, and the fused kernel is the one that takes `found_inf`.
    """

    def __init__(self, *args: Any, guard: LossSpikeGuard | None = None, fused: bool = True, **kwargs: Any) -> None:
        super().__init__(*args, fused=fused, **kwargs)
        self.guard = guard

    @torch.no_grad()
    def step(self, closure: Any = None) -> Any:
        self.found_inf = self.guard.skip_update if self.guard is not None else None
        return super().step(closure)
