"""The whole trainer against transformers' GPT2LMHeadModel on the same cores, model and global batch.

    python -m bench.train [--steps 20] [--rounds 2] [--compile]   # from the repo root

Ours: `python -m train` under `deepspeed --num_gpus 2` (ZeRO-3, 2 ranks x 1 thread), with its
data loading, spike guard and metrics; tokens/s from its metrics.jsonl. Theirs: GPT2LMHeadModel in
this process with 2 threads, the same precision (bf16 autocast), fused AdamW with the same hyperparameters and gradient
clipping, on the same plan batches (built before timing). Trainer runs and HF runs alternate; each
figure is the median step time after warm-up over all rounds. Also: the share of the trainer's step
time spent waiting for data, and rank 0's peak RSS with 2 ranks vs 1 rank (ZeRO-3 shards parameters,
gradients and optimizer state). MFU of both is against the trainer's own per-rank matmul probe
(`sys/peak_flops`) times two: the same two cores. Writes bench/results/train.json.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch
from transformers import GPT2Config, GPT2LMHeadModel

from model import GPT, GPTConfig
from model.flops import flops_per_token
from train.data import MixtureData
from train.ds_config import cpu_has_bf16

REPO = Path(__file__).resolve().parents[1]
RESULTS = REPO / "bench" / "results" / "train.json"
SHAPE = {"n_layer": 6, "n_embd": 384, "n_head": 6}
MICRO_BATCH, RANKS = 8, 2
# bf16 where the CPU computes it fast (AMX, AVX512-BF16), else fp32 for both: emulated bf16 would time the emulation
PRECISION = "bf16" if cpu_has_bf16() else "fp32"
GLOBAL_BATCH = MICRO_BATCH * RANKS
CORES = 2
WARMUP_STEPS = 3  # first steps: oneDNN kernel selection, allocator growth, ZeRO-3 trace recording
TARGET_RATIO, TARGET_WAIT = 1.5, 0.01
# Mixed-precision Adam keeps 16 bytes per parameter: bf16 weights and gradients, fp32 master weights and
# two moments (Rajbhandari et al. 2020, ZeRO, section 3.1). ZeRO-3 splits them across the ranks.
MODEL_STATE_BYTES_PER_PARAM = 16


def data_root(scratch: Path) -> tuple[Path, str]:
    """The demo mixture under data/ when `make data` built it; else a small real one from data/raw."""
    demo = REPO / "data"
    if (demo / "mix" / "demo" / "mixture.json").is_file() and (demo / "tokenizer" / "spm.model").is_file():
        return demo, "demo mixture in data/"
    corpus = REPO / "data" / "raw"
    if not (corpus / "books" / "austen").is_dir():
        sys.exit(f"bench.train: no demo mixture in {demo}/mix/demo and no sample corpus in {corpus}; "
                 "run `make data` (or `python -m curation.sample_data dest=data/raw`) first")
    from tests.train_fixtures import make_data_root

    return make_data_root(scratch / "data", corpus, seq_len=256), "tests.train_fixtures on data/raw"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def run_trainer(ranks: int, steps: int, root: Path, run_dir: Path, *extra: str) -> list[dict]:
    """One `python -m train` under the deepspeed launcher; returns its metrics.jsonl records."""
    overrides = [
        f"run_dir={run_dir}", f"paths.data_root={root}", "mixture=demo", f"precision={PRECISION}",
        *(f"model.{key}={value}" for key, value in SHAPE.items()),
        f"train.micro_batch_size={MICRO_BATCH}", f"train.global_batch_size={GLOBAL_BATCH}",
        f"train.threads_per_rank={CORES // ranks}", f"train.max_steps={steps}", "train.resume=never",
        "eval.every=0", "eval.sample_every=0", "checkpoint.every=0", "checkpoint.export_model=false",
        "wandb.enabled=false", *extra,
    ]
    cmd = [str(Path(sys.executable).parent / "deepspeed"), "--num_gpus", str(ranks), "--master_port",
           str(free_port()), "--module", "train", *overrides]
    env = {**os.environ, "DS_ACCELERATOR": "cpu", "OMP_NUM_THREADS": str(CORES // ranks)}
    result = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True)
    if result.returncode != 0:
        sys.exit(f"bench.train: {' '.join(cmd)} exited {result.returncode}:\n{result.stderr[-3000:]}")
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


def trainer_figures(records: list[dict]) -> dict[str, float | list[float]]:
    steps = [r for r in records if "train/step_time_s" in r][WARMUP_STEPS:]
    peak = next(r["sys/peak_flops"] for r in records if "sys/peak_flops" in r)
    return {
        "step_times_s": [r["train/step_time_s"] for r in steps],
        "data_wait_s": sum(r["train/data_wait_s"] for r in steps),
        "max_rss_gb": max(r["sys/max_rss_gb"] for r in records if "sys/max_rss_gb" in r),
        "peak_flops_per_rank": peak,
    }


class HFRun:
    """GPT2LMHeadModel trained in this process on the trainer's first plan batches."""

    def __init__(self, data: MixtureData, steps: int) -> None:
        config = GPT2Config(
            vocab_size=data.vocab_size, n_positions=data.seq_len, **SHAPE, resid_pdrop=0.0, embd_pdrop=0.0,
            attn_pdrop=0.0, attn_implementation="sdpa", bos_token_id=None, eos_token_id=None,
        )
        torch.manual_seed(0)
        self.model = GPT2LMHeadModel(config).train()
        self.optimizer = torch.optim.AdamW(self.model.parameters(), lr=6e-4, betas=(0.9, 0.95), eps=1e-8,
                                           weight_decay=0.1, fused=True)
        self.batches = [data.batch(step * GLOBAL_BATCH, GLOBAL_BATCH)[:, :-1] for step in range(steps)]

    def step_times(self) -> list[float]:
        times = []
        for inputs in self.batches:
            started = time.perf_counter()
            with torch.autocast("cpu", dtype=torch.bfloat16, enabled=PRECISION == "bf16"):
                loss = self.model(input_ids=inputs, labels=inputs).loss
            loss.backward()
            torch.nn.utils.clip_grad_norm_(self.model.parameters(), 1.0)
            self.optimizer.step()
            self.optimizer.zero_grad(set_to_none=True)
            loss.item()
            times.append(time.perf_counter() - started)
        return times[WARMUP_STEPS:]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--steps", type=int, default=20, help=f"steps per run ({WARMUP_STEPS} warm-up)")
    parser.add_argument("--rounds", type=int, default=2, help="alternating trainer/HF rounds")
    parser.add_argument("--compile", action="store_true", help="also time the trainer with train.compile=true")
    args = parser.parse_args()
    torch.set_num_threads(CORES)

    with tempfile.TemporaryDirectory(prefix="bench-train-") as scratch_dir:
        scratch = Path(scratch_dir)
        root, data_source = data_root(scratch)
        data = MixtureData(root / "mix" / "demo", root)
        hf = HFRun(data, args.steps)
        variants = {"trainer": ()} | ({"trainer_compile": ("train.compile=true",)} if args.compile else {})
        runs: dict[str, list[dict]] = {name: [] for name in variants}
        hf_times: list[float] = []
        for round_idx in range(args.rounds):
            for name, extra in variants.items():
                runs[name].append(trainer_figures(
                    run_trainer(RANKS, args.steps, root, scratch / f"{name}{round_idx}", *extra)))
                print(f"round {round_idx + 1}: {name} done", flush=True)
            hf_times += hf.step_times()
            print(f"round {round_idx + 1}: HF done", flush=True)
        one_rank = trainer_figures(run_trainer(1, WARMUP_STEPS + 3, root, scratch / "one_rank"))

    seq = data.seq_len
    config = GPTConfig(vocab_size=data.vocab_size, block_size=seq, **SHAPE)
    flops = flops_per_token(config, seq)
    peak_per_rank = statistics.median(r["peak_flops_per_rank"] for r in runs["trainer"])
    peak = peak_per_rank * RANKS
    tokens = GLOBAL_BATCH * seq

    def case(step_times: list[float], **more: float) -> dict[str, float]:
        step = statistics.median(step_times)
        return {"step_s": step, "tokens_per_sec": tokens / step, "mfu": tokens / step * flops / peak, **more}

    cases = {}
    for name, rounds in runs.items():
        step_times = [t for r in rounds for t in r["step_times_s"]]
        cases[name] = case(step_times, data_wait_share=sum(r["data_wait_s"] for r in rounds) / sum(step_times),
                           max_rss_gb=max(r["max_rss_gb"] for r in rounds))
    cases["trainer_1rank"] = case(one_rank["step_times_s"], max_rss_gb=one_rank["max_rss_gb"],
                                  data_wait_share=one_rank["data_wait_s"] / sum(one_rank["step_times_s"]))
    cases["hf"] = case(hf_times)
    ratios = {name: cases[name]["tokens_per_sec"] / cases["hf"]["tokens_per_sec"] for name in runs}
    with torch.device("meta"):
        params = sum(p.numel() for p in GPT(config).parameters())
    model_state_gb = params * MODEL_STATE_BYTES_PER_PARAM / (1 << 30)

    labels = {"trainer": f"trainer {RANKS} ranks x 1 thread", "trainer_compile": "  same, train.compile=true",
              "trainer_1rank": f"trainer 1 rank x {CORES} threads", "hf": f"HF GPT2LMHeadModel, {CORES} threads"}
    print(f"GPT {SHAPE['n_layer']}x{SHAPE['n_embd']}x{SHAPE['n_head']}h, vocab {data.vocab_size}, seq {seq}, "
          f"global batch {GLOBAL_BATCH}, {PRECISION}, {data_source}; {flops / 1e6:.1f} MFLOP/token; peak "
          f"{peak_per_rank / 1e12:.2f} TFLOP/s per rank (trainer's probe) x {RANKS}")
    print(f"{'case':<32} {'tok/s':>7} {'MFU':>6} {'step s':>7} {'data wait':>9} {'rank-0 RSS GB':>13}")
    for name, figures in cases.items():
        wait = f"{figures['data_wait_share']:.2%}" if "data_wait_share" in figures else "-"
        rss = f"{figures['max_rss_gb']:.2f}" if "max_rss_gb" in figures else "-"
        print(f"{labels[name]:<32} {figures['tokens_per_sec']:>7.0f} {figures['mfu']:>6.1%} "
              f"{figures['step_s']:>7.3f} {wait:>9} {rss:>13}")
    for name, ratio in ratios.items():
        print(f"{labels[name].strip()} / HF: {ratio:.2f}x (target >= {TARGET_RATIO}x)")
    print(f"data wait share: {cases['trainer']['data_wait_share']:.3%} of step time (target < {TARGET_WAIT:.0%})")
    print(f"rank-0 peak RSS: {cases['trainer']['max_rss_gb']:.3f} GB with {RANKS} ranks, "
          f"{cases['trainer_1rank']['max_rss_gb']:.3f} GB with 1 rank (model states {model_state_gb:.3f} GB "
          f"unsharded, {MODEL_STATE_BYTES_PER_PARAM} B x {params / 1e6:.1f}M parameters)")

    results = {
        "config": config.to_dict(), "seq_len": seq, "global_batch": GLOBAL_BATCH, "micro_batch": MICRO_BATCH,
        "cores": CORES, "steps": args.steps, "warmup_steps": WARMUP_STEPS, "rounds": args.rounds,
        "data": data_source, "parameters": params, "model_state_gb": model_state_gb, "flops_per_token": flops, "peak_flops_per_rank": peak_per_rank, "cases": cases,
        "ratio_vs_hf": ratios, "targets": {"ratio_vs_hf": TARGET_RATIO, "data_wait_share": TARGET_WAIT},
        "cpu": platform.processor(), "torch": torch.__version__, "precision": PRECISION,
    }
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(results, indent=2) + "\n")
    print(f"wrote {RESULTS}")


if __name__ == "__main__":
    main()
