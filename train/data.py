"""Training and validation samples from a mixture plan (`curation.mix` output), read via memmap.

The contract (data_contract/mixture_spec.py; written by curation/mix.py): `mix/<name>/plan_source.npy` and `plan_sample.npy`
give, for plan position p, a source index and a window index w; window w of a source is tokens
[w*L, w*L + L + 1) of the concatenation of its train token files, in `mixture.json` order.
Global batch i is plan positions [i*B, (i+1)*B); rank r reads its contiguous slice of it, so the
order of training is a pure function of the plan and resuming needs only the step.
"""

from __future__ import annotations

import math
import queue
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from data_contract.mixture_spec import PLAN_SAMPLE, PLAN_SOURCE, read_mixture_spec
from data_contract.refusal import Refusal


class TokenStream:
    """Several `.ds` token files read as one array, without loading them."""

    def __init__(self, paths: list[Path], dtype: np.dtype) -> None:
        self.arrays = []
        for path in paths:
            if not path.exists():
                raise Refusal(f"token file {path} is missing; rerun `python -m curation.tokenize`")
            if path.stat().st_size % dtype.itemsize:
                raise Refusal(f"token file {path} is {path.stat().st_size} bytes, not a multiple of "
                                f"{dtype} ({dtype.itemsize} bytes): truncated or wrong dtype; re-tokenize")
            self.arrays.append(np.memmap(path, dtype=dtype, mode="r"))
        self.ends = np.cumsum([len(a) for a in self.arrays], dtype=np.int64)

    def __len__(self) -> int:
        return int(self.ends[-1]) if len(self.ends) else 0

    def read(self, start: int, length: int) -> np.ndarray:
        out = np.empty(length, dtype=np.int64)
        filled = 0
        file_idx = int(np.searchsorted(self.ends, start, side="right"))
        while filled < length:
            file_start = int(self.ends[file_idx - 1]) if file_idx else 0
            offset = start + filled - file_start
            chunk = self.arrays[file_idx][offset:offset + length - filled]
            out[filled:filled + len(chunk)] = chunk
            filled += len(chunk)
            file_idx += 1
        return out


@dataclass(frozen=True)
class SourceInfo:
    name: str
    stream: TokenStream
    val_stream: TokenStream | None


class MixtureData:
    """The plan of one mixture and its sources' token streams."""

    def __init__(self, mix_dir: Path, data_root: Path) -> None:
        self.spec = read_mixture_spec(mix_dir)
        self.seq_len = int(self.spec["seq_len"])
        self.vocab_size = int(self.spec["vocab_size"])
        self.eos_id = int(self.spec["eos_id"])
        dtype = np.dtype(self.spec["dtype"]).newbyteorder("<")
        self.plan_source = np.load(mix_dir / PLAN_SOURCE, mmap_mode="r")
        self.plan_sample = np.load(mix_dir / PLAN_SAMPLE, mmap_mode="r")
        if len(self.plan_source) != len(self.plan_sample):
            raise Refusal(f"{mix_dir}: plan_source.npy and plan_sample.npy differ in length; rebuild the mix")
        self.sources = []
        for source in self.spec["sources"]:
            train = TokenStream([data_root / f["path"] for f in source["token_files"]], dtype)
            val_files = source.get("val_files") or []
            val = TokenStream([data_root / f["path"] for f in val_files], dtype) if val_files else None
            self.sources.append(SourceInfo(source["name"], train, val))

    def __len__(self) -> int:
        return len(self.plan_source)

    def sample(self, position: int) -> np.ndarray:
        """Plan position -> L + 1 token ids (inputs are [:-1], targets [1:])."""
        source = self.sources[int(self.plan_source[position])]
        return source.stream.read(int(self.plan_sample[position]) * self.seq_len, self.seq_len + 1)

    def batch(self, first_position: int, size: int) -> torch.Tensor:
        return torch.from_numpy(np.stack([self.sample(first_position + i) for i in range(size)]))

    def val_batches(self, source: SourceInfo, batch_size: int, max_batches: int, rank: int,
                    world_size: int) -> list[tuple[torch.Tensor, torch.Tensor]]:
        """This rank's share of a source's validation windows, as (batch, mask of the real rows).

        The set is the source's first `max_batches` x `batch_size` windows whatever the number of ranks (so
        val metrics compare across runs): the windows are dealt out to the ranks in turn, and every rank
        runs the same number of batches, as ZeRO-3's collective forwards require, a short one padded with
        rows its mask leaves out. More ranks than batches still evaluate every window.
        """
        if source.val_stream is None:
            return []
        windows = min(max_batches * batch_size, (len(source.val_stream) - 1) // self.seq_len)
        return [(torch.from_numpy(np.stack([source.val_stream.read(w * self.seq_len, self.seq_len + 1)
                                            for w in rows])), torch.tensor(real))
                for rows, real in val_rounds(windows, batch_size, rank, world_size)]


def val_rounds(windows: int, batch_size: int, rank: int, world_size: int) -> list[tuple[list[int], list[bool]]]:
    """Rank `rank`'s batches of windows `rank, rank + world_size, ...` of `windows`, with which rows are real:
    as many batches on every rank, the last ones padded with window 0."""
    mine = list(range(rank, windows, world_size))
    rounds = math.ceil(math.ceil(windows / world_size) / batch_size)
    batches = []
    for k in range(rounds):
        rows = mine[k * batch_size:(k + 1) * batch_size]
        real = [True] * len(rows) + [False] * (batch_size - len(rows))
        batches.append((rows + [0] * (batch_size - len(rows)), real))
    return batches


class Prefetcher:
    """Builds the next micro-batches in a background thread; measures how long the loop waits for them.

    Micro-batch k of rank r in optimizer step s covers plan positions
    p + (s-s0)*B + r*(m*a) + k*m ... + m, with p the samples consumed before step s0 (where the job
    started), B global batch, m micro batch, a grad-accum steps.
    """

    def __init__(self, data: MixtureData, start_step: int, first_sample: int, global_batch: int, micro_batch: int,
                 accum: int, rank: int, depth: int) -> None:
        self.data, self.global_batch, self.micro_batch, self.accum, self.rank = data, global_batch, micro_batch, accum, rank
        self.offset = first_sample - start_step * global_batch
        self.queue: queue.Queue[tuple[int, list[torch.Tensor]]] = queue.Queue(maxsize=max(depth, 1))
        self.wait_s = 0.0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._fill, args=(start_step,), daemon=True)
        self._thread.start()

    def step_batches(self, step: int) -> list[torch.Tensor]:
        base = self.offset + step * self.global_batch + self.rank * self.micro_batch * self.accum
        batches = [self.data.batch(base + k * self.micro_batch, self.micro_batch) for k in range(self.accum)]
        # pinned, a batch goes to the GPU while the step before it still computes (non_blocking copies)
        return [batch.pin_memory() for batch in batches] if torch.cuda.is_available() else batches

    def _fill(self, step: int) -> None:
        steps_available = (len(self.data) - self.offset) // self.global_batch
        while not self._stop.is_set() and step < steps_available:
            item = (step, self.step_batches(step))
            while not self._stop.is_set():
                try:
                    self.queue.put(item, timeout=0.1)
                    break
                except queue.Full:
                    continue
            step += 1

    def get(self, step: int) -> list[torch.Tensor]:
        started = time.perf_counter()
        got_step, batches = self.queue.get()
        self.wait_s += time.perf_counter() - started
        if got_step != step:
            raise RuntimeError(f"prefetcher delivered step {got_step}, the loop expected {step}")
        return batches

    def close(self) -> None:
        self._stop.set()
        self._thread.join()
