"""What a run learned, in a few lines: `python -m train.summary run_dir=RUN_DIR` (printed at the end of `make demo`).

Config: conf/summary.yaml.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import hydra
from omegaconf import DictConfig

# Fine-tuning's validation metrics (train/finetune/task.py) and the baselines they are read against.
TASK_METRICS = ("val/accuracy", "val/pearson", "val/spearman")
BASELINES = ("val/majority_baseline", "val/chance_baseline")


def summarize(run_dir: Path) -> str:
    """Losses, bits per byte against the unigram floor (pretraining) or the task's metrics against its
    baselines (fine-tuning), the last sample and where the run's files are."""
    metrics_path = run_dir / "metrics.jsonl"
    if not metrics_path.is_file():
        raise SystemExit(f"summary: no {metrics_path}; has the run started?")
    records = [json.loads(line) for line in metrics_path.read_text().splitlines() if line.strip()]
    val = [(r["step"], r["val/bpb"], r["val/loss"]) for r in records if "val/bpb" in r]
    train = [r for r in records if "train/loss" in r]
    unigram = next((r["val/unigram_bpb"] for r in records if "val/unigram_bpb" in r), None)
    samples = [r["samples/text"] for r in records if "samples/text" in r]
    lines = [f"run: {run_dir}"]
    if train:
        last = train[-1]
        progress = [f"trained {last['step']} steps"]  # pretraining counts tokens, fine-tuning epochs
        if "train/tokens_seen" in last:
            progress.append(f"{last['train/tokens_seen'] / 1e6:.2f}M tokens")
        elif "train/epoch" in last:
            progress.append(f"{last['train/epoch']:.2f} epochs")
        line = f"{', '.join(progress)}; train loss {train[0]['train/loss']:.3f} -> {last['train/loss']:.3f}"
        if "train/tokens_per_sec" in last:
            line += f"; {last['train/tokens_per_sec']:.0f} tokens/s, MFU {last['train/mfu']:.1%}"
        lines.append(line)
    if val:
        (first_step, first_bpb, _), (last_step, last_bpb, last_loss) = val[0], val[-1]
        lines.append(f"val bpb: {first_bpb:.3f} (step {first_step}) -> {last_bpb:.3f} (step {last_step}); "
                     f"val loss {last_loss:.3f}")
    if unigram is not None and val:
        verdict = "below" if val[-1][1] < unigram else "NOT below"
        lines.append(f"unigram model of the training tokens: {unigram:.3f} bpb; the model is {verdict} it")
    task_evals = [r for r in records if any(k in r for k in TASK_METRICS)]
    if task_evals:
        last = task_evals[-1]
        scores = ", ".join(f"{key.removeprefix('val/')} {last[key]:.3f}" for key in TASK_METRICS if key in last)
        baselines = ", ".join(f"{key.removeprefix('val/').replace('_', ' ')} {last[key]:.3f}"
                              for key in BASELINES if key in last)
        lines.append(f"val at step {last['step']}: {scores}" + (f" (against {baselines})" if baselines else ""))
    if samples:
        lines.append(f"sample: {samples[-1]!r}")
    wandb_runs = sorted((run_dir / "wandb").glob("offline-run-*"))
    if wandb_runs:
        lines.append(f"wandb (offline): {wandb_runs[-1]}  (upload with `wandb sync {wandb_runs[-1]}`)")
    latest = run_dir / "checkpoints" / "latest"
    if latest.is_file():
        lines.append(f"checkpoint: {run_dir / 'checkpoints' / latest.read_text().strip()}  "
                     f"(python -m model.generate checkpoint={run_dir} prompt=...)")
    return "\n".join(lines)


@hydra.main(config_path="../conf", config_name="summary", version_base=None)
def main(cfg: DictConfig) -> None:
    if cfg.run_dir is None:
        sys.exit("summary: give run_dir=RUN_DIR")
    print(summarize(Path(cfg.run_dir)))
    sys.stdout.flush()


if __name__ == "__main__":
    main()
