"""Preemption and time-limit signals: finish the step, checkpoint, exit for requeue.

Slurm sends SIGUSR1 (`--signal=USR1@<grace>`) before the time limit or on preemption, and SIGTERM
before killing. The handler only sets a flag; the loop checks it after each step, and all ranks
agree through an all-reduce so that they checkpoint at the same step.
"""

from __future__ import annotations

import signal
from types import FrameType

from train.distributed import on_any_rank

# sysexits.h EX_TEMPFAIL: "try again later"; slurm/pretrain.sh requeues the job on it.
EXIT_REQUEUE = 75


class StopRequest:
    """Installs the handlers; `agreed()` after each step says whether to stop there."""

    def __init__(self, signals: tuple[int, ...] = (signal.SIGUSR1, signal.SIGTERM)) -> None:
        self.received: int | None = None
        for signum in signals:
            signal.signal(signum, self._handle)

    def _handle(self, signum: int, frame: FrameType | None) -> None:
        self.received = signum

    def agreed(self) -> bool:
        """True on every rank if any rank got a signal (collective)."""
        return on_any_rank(self.received is not None)
