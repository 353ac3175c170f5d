"""ZeRO-3's memory per rank, measured at 1, 2 and 4 ranks against the ZeRO paper's model-state arithmetic.

    python -m bench.zero3_memory [--ranks 1 2 4]        # from the repo root

GPT-2 124M with a short context (64 tokens, micro batch 1), so that model states dominate what a rank
holds. Each rank builds the model as the trainer does (partitioned, under zero.Init: train/ds_config.py),
starts the trainer's DeepSpeed engine (ZeRO-3, its AdamW) and takes two steps; its peak resident memory
above what it held before the model existed is the measured figure. Predicted: the model states of the
memory plan (train/plan.py), Adam's 16 bytes per parameter (Rajbhandari et al. 2020, ZeRO, section 3.1:
weights, gradients, two moments and, in mixed precision, a master copy) divided by the ranks. Ranks run
on this machine under torchrun; which node a rank sits on does not change what it holds. Writes
bench/results/zero3_memory.json.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
from pathlib import Path

from train.plan import MODEL_STATE_BYTES

REPO = Path(__file__).resolve().parents[1]
RESULTS = REPO / "bench" / "results" / "zero3_memory.json"
SHAPE = {"vocab_size": 50304, "block_size": 64, "n_layer": 12, "n_head": 12, "n_embd": 768}
GB = 1 << 30


def _rss_gb() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024 / GB
    return 0.0


def rank_job(out_dir: Path) -> None:
    """One rank: baseline, model, engine, two steps, peak; written to out_dir/rank<r>.json."""
    import torch

    from model import GPT, GPTConfig
    from model.flops import parameter_count
    from model.loss import next_token_loss
    from train.distributed import init_distributed
    from train.ds_config import build_ds_config, partitioned_build, start_engine
    from train.typed_settings import pretrain_settings

    dist_env = init_distributed()
    torch.set_num_threads(1)
    settings = pretrain_settings(["model=gpt2-124m", "train.seq_len=64", "train.micro_batch_size=1",
                                  f"train.global_batch_size={dist_env.world_size}", "precision=fp32"])
    ds_config = build_ds_config(settings.deepspeed, settings.train, settings.optim.grad_clip, dist_env.world_size,
                                "fp32")
    build = partitioned_build(settings.deepspeed, ds_config)
    baseline = _rss_gb()
    torch.manual_seed(0)
    config = GPTConfig(**SHAPE)
    with build() if build is not None else torch.no_grad():
        model = GPT(config)
    params = parameter_count(config)
    engine, _ = start_engine(model, settings.deepspeed, settings.optim, settings.spike_guard, ds_config)
    del model
    ids = torch.randint(0, SHAPE["vocab_size"], (1, SHAPE["block_size"] + 1), generator=torch.Generator().manual_seed(1))
    for _ in range(2):
        engine.backward(next_token_loss(engine(ids[:, :-1]), ids[:, 1:]))
        engine.step()
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 / GB
    (out_dir / f"rank{dist_env.rank}.json").write_text(json.dumps(
        {"params": params, "baseline_gb": baseline, "peak_gb": peak, "after_steps_gb": _rss_gb()}))


def measure(ranks: int, scratch: Path) -> dict[str, float]:
    out_dir = scratch / f"ranks{ranks}"
    out_dir.mkdir()
    subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", str(ranks), "--master_port",
                    str(33500 + ranks), "-m", "bench.zero3_memory", "--job", str(out_dir)],
                   cwd=REPO, check=True, env={**os.environ, "OMP_NUM_THREADS": "1", "DS_ACCELERATOR": "cpu"})
    reports = [json.loads(p.read_text()) for p in sorted(out_dir.glob("rank*.json"))]
    params = reports[0]["params"]
    measured = max(r["peak_gb"] - r["baseline_gb"] for r in reports)
    predicted = MODEL_STATE_BYTES * params / ranks / GB
    return {"ranks": ranks, "params": params, "measured_gb": measured, "predicted_gb": predicted,
            "ratio": measured / predicted}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--ranks", type=int, nargs="+", default=[1, 2, 4])
    parser.add_argument("--job", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.job is not None:
        rank_job(args.job)
        return
    with tempfile.TemporaryDirectory() as scratch:
        rows = [measure(ranks, Path(scratch)) for ranks in args.ranks]
    print(f"ZeRO-3 memory per rank, GPT-2 124M ({rows[0]['params'] / 1e6:.0f}M parameters), fp32 on CPU:")
    print(f"  {'ranks':>5}  {'measured GB':>11}  {'16P/N GB (the plan)':>19}  {'measured/predicted':>18}")
    for row in rows:
        print(f"  {row['ranks']:>5}  {row['measured_gb']:>11.2f}  {row['predicted_gb']:>19.2f}  {row['ratio']:>18.2f}")
    fit = None
    if len(rows) >= 2:  # measured = fixed + partitioned / ranks, least squares
        xs, ys = [1 / row["ranks"] for row in rows], [row["measured_gb"] for row in rows]
        mean_x, mean_y = sum(xs) / len(xs), sum(ys) / len(ys)
        slope = sum((x - mean_x) * (y - mean_y) for x, y in zip(xs, ys, strict=True)) / sum((x - mean_x) ** 2 for x in xs)
        fit = {"partitioned_bytes_per_param": slope * GB / rows[0]["params"], "unpartitioned_gb": mean_y - slope * mean_x}
        print(f"  fit: {fit['partitioned_bytes_per_param']:.1f} bytes per parameter divided among the ranks "
              f"(ZeRO: {MODEL_STATE_BYTES}), {fit['unpartitioned_gb']:.2f} GB on every rank")
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps({"rows": rows, "fit": fit}, indent=1) + "\n")


if __name__ == "__main__":
    main()
