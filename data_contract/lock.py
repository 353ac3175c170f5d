"""hold_lock: one process at a time on a folder (a data root, a run folder), held until the process ends."""

from __future__ import annotations

import fcntl
import os
import socket
import time
from pathlib import Path
from typing import TextIO

from data_contract.refusal import Refusal

_held_locks: list[TextIO] = []  # a lock lives as long as the process that took it


def hold_lock(path: Path, busy: str, wait_for: str | None = None, wait_s: float = 60.0) -> None:
    """Hold an exclusive lock on `path` until this process ends, however it ends (the kernel releases it).

    The holder writes its host and pid (and Slurm job, when there is one) into the file, so a refused
    process can say who holds it: the refusal is `busy` with `{holder}` filled in. When the holder's line
    contains `wait_for` (a requeued job waiting for its previous incarnation to exit), the lock is retried
    for up to `wait_s` seconds first. On a shared filesystem the lock is as good as its flock support.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    handle = open(path, "a+")  # noqa: SIM115 (held open until the process ends)
    deadline = time.monotonic() + wait_s
    while True:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
            break
        except BlockingIOError:
            handle.seek(0)
            holder = handle.read().strip() or "another process"
            if wait_for is None or wait_for not in holder or time.monotonic() > deadline:
                handle.close()
                raise Refusal(busy.format(holder=holder)) from None
            time.sleep(1.0)
    handle.seek(0)
    handle.truncate()
    job = os.environ.get("SLURM_JOB_ID")
    handle.write(f"{socket.gethostname()} pid {os.getpid()}{f' (slurm job {job})' if job else ''}\n")
    handle.flush()
    _held_locks.append(handle)
