"""Metrics to `run_dir/metrics.jsonl` and to wandb (offline unless the user has credentials), rank 0 only.

The wandb run id is kept in the checkpoint so a resumed or requeued job continues the same run.
"""

from __future__ import annotations

import json
import logging
import os
import resource
import sys
import time
from pathlib import Path
from typing import Any

import torch

# Vendors' dense tensor-core peaks; fp32 is taken as half (TF32 is not what the trainer runs).
GPU_PEAK_BF16 = {"A100": 312e12, "H100": 989e12, "H200": 989e12, "L40S": 362e12, "A10": 125e12}


def measure_matmul_flops(dtype: torch.dtype, size: int = 2048, budget_s: float = 0.5) -> float:
    """FLOP/s of the fastest of a few `size`^3 matmuls run with this process's torch threads.

    A CPU's sustainable matmul rate depends on its ISA (AMX, AVX-512), clocks and the threads a
    rank gets, none of which a lookup table knows; half a second of measurement does. The fastest
    repeat is kept because other processes on a shared machine can only slow a repeat down. Inputs
    come from a private generator, so the global RNG stream (and exact resume) is untouched.
    """
    generator = torch.Generator().manual_seed(0)
    a = torch.randn(size, size, generator=generator).to(dtype)
    b = torch.randn(size, size, generator=generator).to(dtype)
    torch.mm(a, b)  # first call: oneDNN picks and JIT-compiles its kernel
    seconds: list[float] = []
    deadline = time.perf_counter() + budget_s
    while len(seconds) < 3 or time.perf_counter() < deadline:
        started = time.perf_counter()
        torch.mm(a, b)
        seconds.append(time.perf_counter() - started)
    return 2 * size**3 / min(seconds)


def default_peak_flops(precision: str) -> float:
    """Per-rank peak for MFU when `metrics.peak_flops` is not set: a GPU's datasheet, a CPU's measured rate.

    A GPU missing from the table gets no guessed peak: NaN (MFU is then not reported) and one warning
    naming the device and the setting that supplies it.
    """
    if torch.cuda.is_available():
        name = torch.cuda.get_device_name()
        peak = next((value for model, value in GPU_PEAK_BF16.items() if model in name), None)
        if peak is None:
            logging.getLogger("train").warning(
                "MFU not reported: %s is not in train/metrics.py's table of GPU peaks; set metrics.peak_flops "
                "(dense %s FLOP/s of one device)", name, precision)
            return float("nan")
        return peak if precision == "bf16" else peak / 2
    return measure_matmul_flops(torch.bfloat16 if precision == "bf16" else torch.float32)


def _clock(seconds: float) -> str:
    minutes, secs = divmod(int(seconds), 60)
    hours, minutes = divmod(minutes, 60)
    return f"{hours}:{minutes:02d}:{secs:02d}"


def console_line(step: int, total_steps: int, values: dict[str, Any], elapsed_s: float, steps_run: int) -> str:
    """A logged step as the console shows it (rank 0), nanoGPT/litgpt style: progress, loss, lr,
    throughput, MFU, elapsed time of this job and the time left at its average step time so far."""
    parts = [f"step {step}/{total_steps}", f"loss {values['train/loss']:.4f}", f"lr {values['train/lr']:.2e}"]
    if "train/tokens_per_sec" in values:
        parts.append(f"{values['train/tokens_per_sec']:,.0f} tok/s")
    if "train/mfu" in values:
        parts.append(f"mfu {100 * values['train/mfu']:.1f}%")
    parts.append(f"{values['train/step_time_s']:.2f} s/step")
    parts.append(f"elapsed {_clock(elapsed_s)}")
    parts.append(f"eta {_clock(elapsed_s / max(steps_run, 1) * (total_steps - step))}")
    return " | ".join(parts)


def process_age_s() -> float:
    """Seconds since this process started (Linux /proc; 0 elsewhere): imports happen before any clock of ours."""
    try:
        start_ticks = int(Path("/proc/self/stat").read_text().rsplit(")", 1)[1].split()[19])
        uptime = float(Path("/proc/uptime").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return 0.0
    return max(uptime - start_ticks / os.sysconf("SC_CLK_TCK"), 0.0)


class Progress:
    """`<what>: done/total (elapsed)` on the console every `every_s` seconds, and at the end of one that
    printed along the way: a long evaluation shows it moves, a short one stays quiet."""

    def __init__(self, what: str, total: int, enabled: bool, every_s: float = 30.0) -> None:
        self.what, self.total, self.enabled, self.every_s = what, total, enabled, every_s
        self.started = self.last = time.perf_counter()
        self.printed = False

    def update(self, done: int) -> None:
        now = time.perf_counter()
        if self.enabled and (now - self.last >= self.every_s or (done == self.total and self.printed)):
            self.last, self.printed = now, True
            logging.getLogger("train").info("%s: %d/%d (%s)", self.what, done, self.total, _clock(now - self.started))


class StartupClock:
    """Where the time from process start to the end of the first step goes, as one console line."""

    def __init__(self) -> None:
        self.phases = [("imports and checks", process_age_s())]
        self.last = time.perf_counter()

    def mark(self, phase: str) -> None:
        now = time.perf_counter()
        self.phases.append((phase, now - self.last))
        self.last = now

    def line(self) -> str:
        total = sum(seconds for _, seconds in self.phases)
        parts = ", ".join(f"{phase} {seconds:.1f}" for phase, seconds in self.phases)
        return f"start-up: {total:.1f} s from process start to the end of the first step ({parts})"


def kernels_compiled() -> int:
    """Inductor graphs this process compiled rather than found in inductor's cache (torch.compile's
    FX graph cache): on CPU, kernels `python -m train.prebuild` would have built ahead of the launch."""
    from torch._dynamo.utils import counters

    return int(counters["inductor"]["fxgraph_cache_miss"])


def max_rss_gb() -> float:
    """Peak resident memory of this process (Linux reports KiB, macOS bytes)."""
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak / (1 << 30) if sys.platform == "darwin" else peak / (1 << 20)


class MetricsLogger:
    def __init__(self, run_dir: Path, enabled: bool, wandb_cfg: Any, config: dict[str, Any],
                 run_id: str | None) -> None:
        self.enabled = enabled
        self.run = None
        self.path = run_dir / "metrics.jsonl"
        if not enabled:
            return
        run_dir.mkdir(parents=True, exist_ok=True)
        if wandb_cfg.enabled:
            import wandb

            mode = wandb_cfg.mode
            if mode == "online" and not (os.environ.get("WANDB_API_KEY") or Path("~/.netrc").expanduser().exists()):
                mode = "offline"
            self.run = wandb.init(project=wandb_cfg.project, entity=wandb_cfg.entity, id=run_id, resume="allow",
                                  dir=str(run_dir), config=config, mode=mode, name=run_dir.name)

    @property
    def run_id(self) -> str | None:
        return self.run.id if self.run is not None else None

    @property
    def run_path(self) -> str | None:
        return str(Path(self.run.dir).parent) if self.run is not None else None

    def log(self, step: int, values: dict[str, Any]) -> None:
        if not self.enabled:
            return
        with open(self.path, "a") as fh:
            fh.write(json.dumps({"step": step, **values}) + "\n")
        if self.run is not None:
            self.run.log(values, step=step)

    def log_text(self, step: int, key: str, text: str) -> None:
        if not self.enabled:
            return
        with open(self.path, "a") as fh:
            fh.write(json.dumps({"step": step, key: text}) + "\n")
        if self.run is not None:
            import wandb

            self.run.log({key: wandb.Html(f"<pre>{text}</pre>")}, step=step)

    def finish(self) -> None:
        if self.run is not None:
            self.run.finish()
