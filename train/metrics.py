"""Metrics to `run_dir/metrics.jsonl` and to wandb (offline unless the user has credentials), rank 0 only.

The wandb run id is kept in the checkpoint so a resumed or requeued job continues the same run.
"""

from __future__ import annotations

import json
import os
import resource
import sys
from pathlib import Path
from typing import Any

# Dense bf16/fp32 matmul throughput per rank, for MFU when metrics.peak_flops is not set.
# CPU figures: 2048^3 matmuls measured on this project's 2-core reference machine (NOTES.md),
# per core, so a rank with one thread gets half; GPU figures are the vendors' dense tensor-core peaks.
CPU_PEAK_PER_CORE = {"bf16": 615e9 / 2, "fp32": 129e9 / 2}
GPU_PEAK_BF16 = {"A100": 312e12, "H100": 989e12, "H200": 989e12, "L40S": 362e12, "A10": 125e12}


def default_peak_flops(precision: str, threads: int) -> float:
    import torch

    if torch.cuda.is_available():
        name = torch.cuda.get_device_name()
        for model, peak in GPU_PEAK_BF16.items():
            if model in name:
                return peak if precision == "bf16" else peak / 2
        return 312e12
    return CPU_PEAK_PER_CORE[precision] * threads


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
