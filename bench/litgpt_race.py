"""The trainer against litgpt's `pretrain`: same plan samples, model shape, batch, schedule and steps, 2 CPU ranks each.

    python -m bench.litgpt_race [--steps 30] [--rounds 1]   # from the repo root

Ours: `python -m train` under `deepspeed --num_gpus 2` (ZeRO-3, 2 ranks x 1 thread), run as bench/train.py
runs it, its final checkpoint carrying the consolidated model. Theirs: `litgpt.pretrain.main` (Lightning
AI's litgpt, the LITGPT_VERSION pinned below) under Fabric with 2 CPU processes x 1 thread, DDP because Lightning refuses
FSDP without a GPU (bench/peers/litgpt_pretrain.py), fed the trainer's first plan samples in the trainer's
order. litgpt lives in its own virtual environment, bench/.venv-litgpt, which this benchmark builds on
first use with the project's torch version; it is never a dependency of the project. Where that build
fails (no network) the benchmark prints why and exits 0, so the other benchmarks still run.

Per run: wall time from launch to exit (start-up, compilation, steps, final checkpoint), the median step
time after warm-up (the trainer's metrics.jsonl, litgpt's logged iter times), and the val loss and bits
per byte of the final weights under one evaluator: the project's validation (train/val_loss.py) on the
same val batches, litgpt's model read back as a torch.export program (bench/peers/litgpt_export.py).
Both train in the precision bench/train.py picks for this CPU; both are scored in fp32. Rounds alternate
which side runs first. Writes bench/results/litgpt_race.json.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import numpy as np
import torch
from omegaconf import DictConfig, OmegaConf

from bench.train import (
    CORES,
    GLOBAL_BATCH,
    MICRO_BATCH,
    PRECISION,
    RANKS,
    SHAPE,
    WARMUP_STEPS,
    data_root,
    run_trainer,
)
from model import GPTConfig
from model.flops import flops_per_token
from model.saved_model import load_pretrained
from model.tokenizer import load_tokenizer
from train.data import MixtureData
from train.val_loss import val_loss_metrics

REPO = Path(__file__).resolve().parents[1]
RESULTS = REPO / "bench" / "results" / "litgpt_race.json"
LITGPT_VERSION = "0.5.13"
PEER_ENV = REPO / "bench" / ".venv-litgpt"
PEER_PYTHON = PEER_ENV / "bin" / "python"
PEER_SCRIPTS = REPO / "bench" / "peers"
# Inductor's compiled kernels for litgpt's torch.compile, kept with its environment as the trainer's JIT-built
# DeepSpeed op is kept with .venv: later runs start warm.
INDUCTOR_CACHE = PEER_ENV / "inductor-cache"
# litgpt 0.5.13 does not declare `requests`, which its checkpoint saving needs (jsonargparse re-reads argv).
PEER_REQUIREMENTS = (f"litgpt=={LITGPT_VERSION}", "requests")
# Lightning's names for bench/train.py's precisions; bf16-mixed keeps fp32 master weights, as DeepSpeed's bf16 does.
LITGPT_PRECISION = {"fp32": "32-true", "bf16": "bf16-mixed"}
# One line per step from litgpt's loop: rank 0's loss (litgpt does not average it over ranks) and iter time.
STEP_LINE = re.compile(r"loss train: ([0-9.]+), val: \S+ \| iter time: ([0-9.]+) ms")
TARGET_STEP_RATIO = 1.5
DIFFERENCES = (
    "positions: a learned position table (trainer, GPT-2) vs RoPE over every head dimension (litgpt has no "
    "learned positions); the trainer has block_size x n_embd more parameters",
    "init: GPT-2's N(0, 0.02), residual projections 0.02 / sqrt(2 n_layer) (trainer) vs litgpt pretrain's "
    "GPT-NeoX init, N(0, sqrt(2 / (5 n_embd))), output projections 1 / (sqrt(n_embd) n_layer)",
    "weight decay: the trainer decays matrices only; litgpt's AdamW decays every parameter (biases, LayerNorm, "
    "embedding)",
    "AdamW kernel: torch's fused AdamW (trainer) vs torch's CPU default, the op-by-op loop (litgpt asks for "
    "fused on CUDA only)",
    "vocabulary: both pad embedding and head to a multiple of 64; the trainer's loss sees the real vocabulary "
    "only, litgpt's softmax also spans the padding rows (the evaluator drops them for both)",
    "schedule: the same peak, warmup steps, cosine floor and clip; the trainer's step s warms up at "
    "peak*(s+1)/warmup and reaches the floor at the last step, litgpt's at peak*s/warmup (its first step "
    "at lr 0) and one step after the last",
    "parallelism: ZeRO-3 shards parameters, gradients and optimizer states over the 2 ranks; Lightning's DDP "
    "replicates them (Lightning refuses FSDP, litgpt's multi-device choice, on CPU)",
    "compilation: litgpt's pretrain always torch.compiles the model (inductor); the trainer runs eager "
    "(train.compile=false, its default)",
    "per step: the trainer's loss-spike guard reads one flag back each step; litgpt has none. At start the "
    "trainer measures the matmul peak and a unigram baseline, litgpt validates 2 batches and counts FLOPs",
)


def cpu_name() -> str:
    """The CPU's model name: its vector units decide both sides' speed (NOTES: AMX vs AVX2-only machines)."""
    try:
        lines = Path("/proc/cpuinfo").read_text().splitlines()
    except OSError:
        return platform.processor() or "unknown CPU"
    return next((line.split(":", 1)[1].strip() for line in lines if line.startswith("model name")), "unknown CPU")


def last_error_line(output: str) -> str:
    """pip's reason for failing: its last ERROR line (its WARNING lines name every index it skipped)."""
    lines = [line for line in output.splitlines() if line.strip()]
    errors = [line for line in lines if line.startswith("ERROR")]
    return (errors or lines or ["no output"])[-1]


def build_peer_env() -> str | None:
    """Create bench/.venv-litgpt with litgpt on the project's torch, unless it is already there; None when
    ready, else why it could not be built. Torch goes in first, by exact version: pip then takes the CPU
    wheel this machine caches instead of resolving a multi-GB CUDA build, and naming it again beside
    litgpt keeps the resolver from replacing it."""
    torch_pin = f"torch=={torch.__version__.split('+')[0]}"
    stamp = PEER_ENV / f".installed-litgpt-{LITGPT_VERSION}-{torch_pin}"
    if stamp.is_file():
        return None
    print(f"building the litgpt peer environment in {PEER_ENV} (once)", flush=True)
    pip = [str(PEER_PYTHON), "-m", "pip", "install", "-q", "--disable-pip-version-check"]
    for command in ([sys.executable, "-m", "venv", str(PEER_ENV)], [*pip, torch_pin],
                    [*pip, *PEER_REQUIREMENTS, torch_pin]):
        result = subprocess.run(command, capture_output=True, text=True)
        if result.returncode:
            return f"`{' '.join(command[2:])}` failed: {last_error_line(result.stderr + result.stdout)}"
    stamp.write_text("")
    return None


def peer_versions() -> dict[str, str]:
    probe = ("import json; from importlib.metadata import version; "
             "print(json.dumps({p: version(p) for p in ('litgpt', 'lightning', 'torch')}))")
    return json.loads(subprocess.run([str(PEER_PYTHON), "-c", probe], capture_output=True, text=True,
                                     check=True).stdout)


def trainer_settings() -> DictConfig:
    """The trainer's defaults (optimizer, schedule, seed, evaluation), which the race gives litgpt too."""
    return OmegaConf.load(REPO / "conf" / "pretrain.yaml")


def litgpt_config(config: GPTConfig) -> dict[str, Any]:
    """litgpt's Config fields for the trainer's GPT, as near as litgpt allows (DIFFERENCES lists the rest)."""
    return {
        "name": "gptpipe-race", "block_size": config.block_size, "vocab_size": config.vocab_size,
        "padding_multiple": config.vocab_multiple, "n_layer": config.n_layer, "n_head": config.n_head,
        "n_embd": config.n_embd, "bias": config.bias, "norm_class_name": "LayerNorm",
        "norm_eps": config.layer_norm_eps,
        "parallel_residual": False,  # GPT-2's sequential block: x + attn(ln_1(x)), then + mlp(ln_2(x))
        "mlp_class_name": "GptNeoxMLP", "intermediate_size": 4 * config.n_embd, "gelu_approximate": "tanh",
        "rotary_percentage": 1.0,
    }


def litgpt_spec(config: GPTConfig, settings: DictConfig, steps: int) -> dict[str, Any]:
    """The trainer's settings in litgpt's terms; with a run's paths, what bench/peers/ reads."""
    optim, schedule = settings.optim, settings.schedule
    if schedule.kind != "cosine":
        sys.exit(f"bench.litgpt_race: schedule.kind={schedule.kind} in conf/pretrain.yaml; litgpt's pretrain "
                 "has warmup-cosine only")
    return {
        "steps": steps, "devices": RANKS, "precision": LITGPT_PRECISION[PRECISION], "seed": settings.seed,
        "config": litgpt_config(config),
        "train": {"global_batch_size": GLOBAL_BATCH, "micro_batch_size": MICRO_BATCH,
                  "max_tokens": steps * GLOBAL_BATCH * config.block_size, "lr_warmup_steps": schedule.warmup_steps,
                  "min_lr": optim.lr * schedule.min_lr_ratio, "max_norm": optim.grad_clip, "tie_embeddings": True,
                  "log_interval": 1, "save_interval": None},
        "optimizer": {"class_path": "torch.optim.AdamW",
                      "init_args": {"lr": optim.lr, "betas": list(optim.betas), "eps": optim.eps,
                                    "weight_decay": optim.weight_decay}},
    }


def export_rows(data: MixtureData, steps: int, val_max_batches: int, folder: Path) -> tuple[Path, Path]:
    """The trainer's first `steps` global batches in plan order, and the evaluator's val rows (litgpt's sanity
    check reads two of them), as int32 .npy files litgpt's data module reads."""
    train_rows, val_rows = folder / "train_rows.npy", folder / "val_rows.npy"
    np.save(train_rows, data.batch(0, steps * GLOBAL_BATCH).numpy().astype(np.int32))
    val = [batch[real] for source in data.sources
           for batch, real in data.val_batches(source, MICRO_BATCH, val_max_batches, rank=0, world_size=1)]
    np.save(val_rows, torch.cat(val).numpy().astype(np.int32))
    return train_rows, val_rows


class ScoredModel:
    """The engine interface train/val_loss.py reads, over a forward already in eval mode (an exported
    program cannot switch modes), with logits cut to the real vocabulary."""

    def __init__(self, forward: Callable[[torch.Tensor], torch.Tensor], vocab_size: int) -> None:
        self.forward, self.vocab_size = forward, vocab_size
        self.module = SimpleNamespace(training=False)

    def eval(self) -> None:
        """Already in eval mode."""

    def train(self, mode: bool = True) -> None:
        """Stays in eval mode: nothing trains after scoring."""

    def __call__(self, ids: torch.Tensor) -> torch.Tensor:
        return self.forward(ids)[..., : self.vocab_size]


def run_litgpt(spec_path: Path, folder: Path, steps: int) -> tuple[float, list[float], list[float]]:
    """One litgpt pretrain run: its wall time from launch, and each step's iter time and train loss."""
    env = {**os.environ, "OMP_NUM_THREADS": str(CORES // RANKS), "TORCHINDUCTOR_CACHE_DIR": str(INDUCTOR_CACHE)}
    command = [str(PEER_PYTHON), str(PEER_SCRIPTS / "litgpt_pretrain.py"), str(spec_path)]
    started = time.perf_counter()
    result = subprocess.run(command, cwd=folder, env=env, capture_output=True, text=True)
    wall = time.perf_counter() - started
    if result.returncode:
        sys.exit(f"bench.litgpt_race: {' '.join(command)} exited {result.returncode}:\n{result.stderr[-3000:]}")
    logged = STEP_LINE.findall(result.stdout)
    if len(logged) != steps:
        sys.exit(f"bench.litgpt_race: litgpt logged {len(logged)} steps, not {steps}:\n{result.stdout[-3000:]}")
    return wall, [float(ms) / 1000 for _, ms in logged], [float(loss) for loss, _ in logged]


def export_litgpt(spec_path: Path) -> None:
    command = [str(PEER_PYTHON), str(PEER_SCRIPTS / "litgpt_export.py"), str(spec_path)]
    result = subprocess.run(command, capture_output=True, text=True)
    if result.returncode:
        sys.exit(f"bench.litgpt_race: {' '.join(command)} exited {result.returncode}:\n{result.stderr[-3000:]}")


def run_figures(wall: float, step_times: list[float], train_losses: list[float],
                scores: dict[str, float]) -> dict[str, Any]:
    return {"wall_s": wall, "median_step_s": statistics.median(step_times[WARMUP_STEPS:]),
            "outside_steps_s": wall - sum(step_times), "step_times_s": step_times, "train_losses": train_losses,
            "val_loss": scores["val/loss"], "val_bpb": scores["val/bpb"]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--steps", type=int, default=30, help=f"optimizer steps per run ({WARMUP_STEPS} warm-up)")
    parser.add_argument("--rounds", type=int, default=1, help="trainer/litgpt rounds, alternating who runs first")
    args = parser.parse_args()
    why_not = build_peer_env()
    if why_not is not None:
        print(f"bench.litgpt_race: skipped, the litgpt peer environment could not be built: {why_not}")
        return
    versions = peer_versions()
    torch.set_num_threads(CORES)
    settings = trainer_settings()
    inductor_cache_warm = INDUCTOR_CACHE.is_dir() and any(INDUCTOR_CACHE.iterdir())

    with tempfile.TemporaryDirectory(prefix="bench-litgpt-race-") as scratch_dir:
        scratch = Path(scratch_dir)
        root, data_source = data_root(scratch)
        data = MixtureData(root / "mix" / "demo", root)
        steps = min(args.steps, len(data) // GLOBAL_BATCH)
        if steps < args.steps:
            print(f"the plan holds {len(data)} samples: {steps} steps of {GLOBAL_BATCH}, not {args.steps}")
        if steps <= WARMUP_STEPS:
            sys.exit(f"bench.litgpt_race: {steps} steps leave none after {WARMUP_STEPS} warm-up steps")
        config = GPTConfig(vocab_size=data.vocab_size, block_size=data.seq_len, **SHAPE)
        spec = litgpt_spec(config, settings, steps)
        train_rows, val_rows = export_rows(data, steps, settings.eval.max_batches, scratch)
        token_bytes = load_tokenizer(root / "tokenizer").token_byte_lengths()

        def score(model: Callable[[torch.Tensor], torch.Tensor]) -> dict[str, float]:
            return val_loss_metrics(ScoredModel(model, data.vocab_size), data, token_bytes, MICRO_BATCH,
                                    settings.eval.max_batches, rank=0, world_size=1)

        def race_trainer(round_dir: Path) -> dict[str, Any]:
            run_dir = round_dir / "trainer"
            started = time.perf_counter()
            records = run_trainer(RANKS, steps, root, run_dir, "checkpoint.export_model=true")
            wall = time.perf_counter() - started
            steps_logged = [r for r in records if "train/step_time_s" in r]
            peak = next(r["sys/peak_flops"] for r in records if "sys/peak_flops" in r)
            return {**run_figures(wall, [r["train/step_time_s"] for r in steps_logged],
                                  [r["train/loss"] for r in steps_logged], score(load_pretrained(run_dir).eval())),
                    "peak_flops_per_rank": peak}

        def race_litgpt(round_dir: Path) -> dict[str, Any]:
            folder = round_dir / "litgpt"
            folder.mkdir(parents=True)
            model_path = folder / "model.pt2"
            spec_path = folder / "spec.json"
            spec_path.write_text(json.dumps({
                **spec, "train_rows": str(train_rows), "val_rows": str(val_rows), "out_dir": str(folder),
                "export": {"path": str(model_path), "shape": [MICRO_BATCH, config.block_size]}}, indent=2))
            wall, step_times, train_losses = run_litgpt(spec_path, folder, steps)
            export_litgpt(spec_path)
            return run_figures(wall, step_times, train_losses, score(torch.export.load(model_path).module()))

        runs: dict[str, list[dict[str, Any]]] = {"trainer": [], "litgpt": []}
        sides = {"trainer": race_trainer, "litgpt": race_litgpt}
        for round_idx in range(args.rounds):
            order = ["trainer", "litgpt"] if round_idx % 2 == 0 else ["litgpt", "trainer"]
            for name in order:
                runs[name].append(sides[name](scratch / f"round{round_idx}"))
                print(f"round {round_idx + 1}: {name} done", flush=True)

    def pooled_median_step(name: str) -> float:
        return statistics.median(t for run in runs[name] for t in run["step_times_s"][WARMUP_STEPS:])

    step_ratio = pooled_median_step("litgpt") / pooled_median_step("trainer")
    wall_ratio = (statistics.median(r["wall_s"] for r in runs["litgpt"])
                  / statistics.median(r["wall_s"] for r in runs["trainer"]))
    labels = {"trainer": f"trainer: DeepSpeed ZeRO-3, {RANKS} x 1 thread",
              "litgpt": f"litgpt {versions['litgpt']} pretrain: Fabric DDP, {RANKS} x 1 thread"}
    print(f"GPT {SHAPE['n_layer']}x{SHAPE['n_embd']}x{SHAPE['n_head']}h, vocab {data.vocab_size}, seq {data.seq_len}, "
          f"global batch {GLOBAL_BATCH} ({MICRO_BATCH} x {RANKS} ranks), {steps} steps, {PRECISION}, {data_source}; "
          f"{cpu_name()}; torch {versions['torch']}, lightning {versions['lightning']}; litgpt's inductor cache "
          f"{'warm' if inductor_cache_warm else 'cold'} at start")
    print(f"{'round':<6}{'case':<46}{'wall s':>8}{'outside steps s':>16}{'median step s':>14}{'val loss':>9}"
          f"{'val bpb':>8}")
    for round_idx in range(args.rounds):
        for name in ("trainer", "litgpt"):
            run = runs[name][round_idx]
            print(f"{round_idx + 1:<6}{labels[name]:<46}{run['wall_s']:>8.1f}{run['outside_steps_s']:>16.1f}"
                  f"{run['median_step_s']:>14.3f}{run['val_loss']:>9.4f}{run['val_bpb']:>8.4f}")
    print(f"litgpt / trainer median step: {step_ratio:.2f}x (target >= {TARGET_STEP_RATIO}x); "
          f"litgpt / trainer wall: {wall_ratio:.2f}x (target > 1x); same precision ({PRECISION}); "
          "val scored by train/val_loss.py for both")
    # Both compute the same FLOPs per token (model.flops: the positions' lookup or rotation is negligible), so the
    # share of the machine's matmul rate (the trainer's probe, train/metrics.py) bounds what any ratio can be.
    flops_per_step = flops_per_token(config, data.seq_len) * GLOBAL_BATCH * data.seq_len
    peak = statistics.median(run["peak_flops_per_rank"] for run in runs["trainer"]) * RANKS
    share = {name: flops_per_step / pooled_median_step(name) / peak for name in runs}
    print(f"share of the measured {PRECISION} matmul rate ({peak / 1e9:.0f} GFLOP/s over {RANKS} ranks): trainer "
          f"{share['trainer']:.0%}, litgpt {share['litgpt']:.0%}; a {TARGET_STEP_RATIO}x faster step than litgpt's "
          f"needs {TARGET_STEP_RATIO * share['litgpt']:.0%}")
    print("what differs:")
    for difference in DIFFERENCES:
        print(f"  - {difference}")

    results = {
        "config": config.to_dict(), "litgpt_config": spec["config"], "litgpt_train": spec["train"],
        "litgpt_optimizer": spec["optimizer"], "litgpt_precision": spec["precision"], "precision": PRECISION,
        "seq_len": data.seq_len, "global_batch": GLOBAL_BATCH, "micro_batch": MICRO_BATCH, "ranks": RANKS,
        "threads_per_rank": CORES // RANKS, "steps": steps, "warmup_steps": WARMUP_STEPS, "rounds": args.rounds,
        "data": data_source, "cpu": cpu_name(), "versions": versions, "litgpt_strategy": "ddp",
        "inductor_cache_warm_at_start": inductor_cache_warm, "runs": runs,
        "median_step_s": {name: pooled_median_step(name) for name in runs},
        "ratio_litgpt_over_trainer": {"median_step": step_ratio, "wall": wall_ratio},
        "targets": {"median_step": TARGET_STEP_RATIO, "wall": 1.0}, "differences": list(DIFFERENCES),
        "flops_per_step": flops_per_step, "peak_flops": peak, "share_of_peak": share,
    }
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(results, indent=2) + "\n")
    print(f"wrote {RESULTS}")


if __name__ == "__main__":
    main()
