"""The trainer against a nanoGPT-style plain PyTorch loop on one GPU: same model, tokens, batch and precision.

    python -m bench.gpu [--steps 25]        # from the repo root; `make gpu-check` runs it after the gpu tests

Ours: `python -m train model=gpt2-124m` (DeepSpeed ZeRO-3 on one rank, bf16, its data loading, spike
guard and metrics); tokens/s and MFU from its metrics.jsonl. Theirs: the same GPT module in this
process with bf16 autocast, fused AdamW with the same hyperparameters and gradient clipping, on the
same plan batches, timed with CUDA synchronisation. Both figures are medians over the steps after
warm-up; MFU of both is against the device's datasheet peak (train/metrics.py). Without a CUDA
device it says so and exits 0. Writes bench/results/gpu.json.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

from model import GPT, GPTConfig
from model.flops import flops_per_token
from model.loss import next_token_loss
from train.data import MixtureData
from train.metrics import default_peak_flops

REPO = Path(__file__).resolve().parents[1]
RESULTS = REPO / "bench" / "results" / "gpu.json"
SEQ_LEN, BATCH, WARMUP_STEPS = 512, 8, 5
SHAPE = {"block_size": 1024, "n_layer": 12, "n_head": 12, "n_embd": 768}  # GPT-2 124M


def trainer_figures(root: Path, run_dir: Path, steps: int) -> dict[str, float]:
    subprocess.run([sys.executable, "-m", "train", f"run_dir={run_dir}", f"paths.data_root={root}", "model=gpt2-124m",
                    f"train.seq_len={SEQ_LEN}", f"train.micro_batch_size={BATCH}", f"train.global_batch_size={BATCH}",
                    f"train.max_steps={steps}", "precision=bf16", "eval.every=0", "eval.sample_every=0",
                    "checkpoint.every=0", "checkpoint.export_model=false", "wandb.enabled=false"],
                   cwd=REPO, check=True)
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    timed = [r for r in rows if "train/tokens_per_sec" in r and r["step"] > WARMUP_STEPS]
    return {"tokens_per_sec": statistics.median(r["train/tokens_per_sec"] for r in timed),
            "mfu": statistics.median(r["train/mfu"] for r in timed)}


def plain_figures(root: Path, steps: int) -> dict[str, float]:
    data = MixtureData(root / "mix" / "demo", root)
    config = GPTConfig(vocab_size=data.vocab_size, **SHAPE)
    torch.manual_seed(0)
    model = GPT(config).cuda().train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=6e-4, betas=(0.9, 0.95), eps=1e-8, weight_decay=0.1,
                                  fused=True)
    batches = [data.batch(step * BATCH, BATCH).cuda() for step in range(steps)]
    seconds = []
    for batch in batches:
        torch.cuda.synchronize()
        started = time.perf_counter()
        with torch.autocast("cuda", dtype=torch.bfloat16):
            loss = next_token_loss(model(batch[:, :-1]), batch[:, 1:])
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        torch.cuda.synchronize()
        seconds.append(time.perf_counter() - started)
    step_s = statistics.median(seconds[WARMUP_STEPS:])
    tokens_per_sec = BATCH * SEQ_LEN / step_s
    return {"tokens_per_sec": tokens_per_sec,
            "mfu": flops_per_token(config, SEQ_LEN) * tokens_per_sec / default_peak_flops("bf16")}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=25)
    args = parser.parse_args()
    if not torch.cuda.is_available():
        print("bench.gpu: no CUDA device here; nothing to measure")
        return
    corpus = REPO / "data" / "raw"
    if not (corpus / "books" / "austen").is_dir():
        sys.exit(f"bench.gpu: no sample corpus in {corpus}; run `make data` first")
    from tests.train_fixtures import make_data_root

    with tempfile.TemporaryDirectory() as scratch:
        root = make_data_root(Path(scratch) / "data", corpus, seq_len=SEQ_LEN)
        ours = trainer_figures(root, Path(scratch) / "run", args.steps)
        theirs = plain_figures(root, args.steps)
    ratio = ours["tokens_per_sec"] / theirs["tokens_per_sec"]
    print(f"GPT-2 124M, {BATCH} x {SEQ_LEN} tokens per step, bf16, on {torch.cuda.get_device_name()}:")
    print(f"  trainer (ZeRO-3, 1 rank)   {ours['tokens_per_sec']:>10,.0f} tok/s   MFU {100 * ours['mfu']:.1f}%")
    print(f"  plain PyTorch (nanoGPT)    {theirs['tokens_per_sec']:>10,.0f} tok/s   MFU {100 * theirs['mfu']:.1f}%")
    print(f"  trainer / plain: {ratio:.2f}x")
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps({"device": torch.cuda.get_device_name(), "trainer": ours, "plain": theirs,
                                   "ratio": ratio}, indent=1) + "\n")


if __name__ == "__main__":
    main()
