"""A job whose rank stopped, or whose node is gone, ends instead of hanging.

Every collective waits for all ranks. If one rank is frozen (SIGSTOP, a wedged driver) or its node
disappeared, the others would wait forever: gloo's own timeout covers gloo operations only, and
DeepSpeed's shared-memory kernel (train/cpu_shm_collectives.py) spins without one. So the trainer
marks progress (`beat`) between phases: each step, each evaluation, each checkpoint; a save, a load or
the engine's start may take `checkpoint.timeout_s` instead (`allowing`). A watcher
thread that sees no progress for `train.collective_timeout_s` prints one line and exits with code 75
(requeue me; rank 0 also leaves the requeue marker, since srun reports the status of the ranks it
killed), so Slurm's requeue (slurm/pretrain.sh) or a resubmission resumes from the last verified
checkpoint. A native timer (faulthandler) backs it up in case the stuck call holds the GIL:
it dumps the stacks and exits.
"""

from __future__ import annotations

import contextlib
import faulthandler
import os
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

from train.signals import EXIT_REQUEUE


class ProgressWatchdog:
    def __init__(self, timeout_s: float, rank: int, requeue_marker: Path) -> None:
        self.timeout_s, self.rank, self.requeue_marker = timeout_s, rank, requeue_marker
        self.last_beat = time.monotonic()
        self.beat()
        threading.Thread(target=self._watch, name="progress-watchdog", daemon=True).start()

    def beat(self) -> None:
        self.last_beat = time.monotonic()
        faulthandler.dump_traceback_later(self.timeout_s + 30, exit=True)

    def _watch(self) -> None:
        while True:
            time.sleep(min(5.0, self.timeout_s / 4))
            idle = time.monotonic() - self.last_beat
            if idle > self.timeout_s:
                print(f"train: rank {self.rank} made no progress for {idle:.0f} s (train.collective_timeout_s="
                      f"{self.timeout_s:g}): a collective waits for a rank that stopped or whose node is gone; "
                      f"exiting with {EXIT_REQUEUE} so the job is requeued and resumes from its last checkpoint",
                      file=sys.stderr, flush=True)
                if self.rank == 0:
                    with contextlib.suppress(OSError):  # exiting matters more than the marker
                        self.requeue_marker.write_text("no progress\n")
                os._exit(EXIT_REQUEUE)

    @contextlib.contextmanager
    def allowing(self, seconds: float) -> Iterator[None]:
        """A long operation (a checkpoint save or load, building the engine) may take up to `seconds` without
        a beat; the usual timeout applies again after it."""
        usual, self.timeout_s = self.timeout_s, max(self.timeout_s, seconds)
        self.beat()
        try:
            yield
        finally:
            self.timeout_s = usual
            self.beat()

    def stop(self) -> None:
        faulthandler.cancel_dump_traceback_later()
        self.timeout_s = float("inf")
