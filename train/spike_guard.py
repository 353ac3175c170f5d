"""Loss-spike guard: skip updates whose loss is non-finite or far above the recent losses.

A loss more than `zscore` standard deviations above the mean of the last `window` accepted
losses (after `min_history` of them) is a spike; its update is skipped. After
`max_consecutive` skips in a row the loop rolls back to the last checkpoint and carries on with
the data after the offending batches (the PaLM recipe, Chowdhery et al. 2022, section 5.1).
"""

from __future__ import annotations

import math
from collections import deque
from typing import Any


class SpikeGuard:
    def __init__(self, enabled: bool, zscore: float, window: int, min_history: int, max_consecutive: int) -> None:
        self.enabled, self.zscore, self.min_history, self.max_consecutive = enabled, zscore, min_history, max_consecutive
        self.history: deque[float] = deque(maxlen=window)
        self.consecutive = 0
        self.skipped_total = 0
        self.rollbacks = 0

    def is_spike(self, loss: float) -> bool:
        if not self.enabled:
            return False
        if not math.isfinite(loss):
            return True
        if len(self.history) < self.min_history:
            return False
        mean = sum(self.history) / len(self.history)
        std = math.sqrt(sum((x - mean) ** 2 for x in self.history) / len(self.history))
        return loss > mean + self.zscore * max(std, 1e-3 * abs(mean))

    def record(self, loss: float, skipped: bool) -> bool:
        """Account for one step; True when it is time to roll back."""
        if skipped:
            self.consecutive += 1
            self.skipped_total += 1
            return self.consecutive >= self.max_consecutive
        self.consecutive = 0
        self.history.append(loss)
        return False

    def state_dict(self) -> dict[str, Any]:
        return {"history": list(self.history), "consecutive": self.consecutive,
                "skipped_total": self.skipped_total, "rollbacks": self.rollbacks}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.history.clear()
        self.history.extend(state["history"])
        self.consecutive, self.skipped_total, self.rollbacks = (
            state["consecutive"], state["skipped_total"], state["rollbacks"])
