"""Our GPT against transformers' GPT2LMHeadModel on the same shapes, threads and optimizer.

    python -m bench.model [--steps 8] [--new-tokens 200] [--no-compile]

(as a module: running bench/model.py as a script would shadow the `model` package).

Training: forward + backward + AdamW step, tokens/s in fp32, under bf16 autocast, and under bf16
autocast with both models torch.compile'd, with MFU against this CPU's matmul peak measured in the
same run. Generation: greedy tokens/s with a KV cache (ours) against `generate` (theirs), fp32.
Each case runs in a fresh process (both models in it, alternating), as a training run would.
Writes bench/results/model.json.
"""

from __future__ import annotations

import argparse
import json
import platform
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import torch
from transformers import GPT2Config, GPT2LMHeadModel

from model import GPT, GPTConfig
from model.flops import flops_per_token
from model.generate import generate
from model.loss import next_token_loss

THREADS = 2
CONFIG = GPTConfig(vocab_size=8192, block_size=256, n_layer=6, n_head=6, n_embd=384)
BATCH, SEQ = 8, 256
RESULTS = Path(__file__).parent / "results" / "model.json"


def hf_model() -> GPT2LMHeadModel:
    config = GPT2Config(
        vocab_size=CONFIG.vocab_size,
        n_positions=CONFIG.block_size,
        n_layer=CONFIG.n_layer,
        n_head=CONFIG.n_head,
        n_embd=CONFIG.n_embd,
        resid_pdrop=0.0,
        embd_pdrop=0.0,
        attn_pdrop=0.0,
        attn_implementation="sdpa",
        bos_token_id=None,
        eos_token_id=None,
    )
    model = GPT2LMHeadModel(config)
    assert model.config._attn_implementation == "sdpa"
    return model


def matmul_peak(dtype: torch.dtype, size: int = 2048, repeats: int = 10) -> float:
    """FLOP/s of the fastest of `repeats` square matmuls: the ceiling MFU is measured against."""
    a, b = torch.randn(size, size, dtype=dtype), torch.randn(size, size, dtype=dtype)
    seconds = interleaved_best_seconds({"matmul": lambda: a @ b}, repeats=repeats, warmup=1)["matmul"]
    return 2 * size**3 / seconds


def train_step(name: str, bf16: bool, compiled: bool = False) -> Callable[[], None]:
    """One fwd + bwd + AdamW step on fixed random tokens; each model computes its loss its own way."""
    torch.manual_seed(0)
    model = GPT(CONFIG) if name == "ours" else hf_model()
    model.train()
    forward = torch.compile(model) if compiled else model
    optimizer = torch.optim.AdamW(model.parameters(), lr=3e-4, weight_decay=0.1, fused=True)
    x = torch.randint(0, CONFIG.vocab_size, (BATCH, SEQ))
    targets = x.roll(-1, dims=1)
    targets[:, -1] = -100  # as HF's shifted labels: no target for the last position

    def step() -> None:
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
            loss = next_token_loss(forward(x), targets) if name == "ours" else forward(input_ids=x, labels=x).loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    return step


def interleaved_best_seconds(
    runs: dict[str, Callable[[], object]], repeats: int, warmup: int
) -> dict[str, float]:
    """Fastest time of each run, alternating between them.

    On a shared machine other processes only ever add time, so the minimum is the estimate least
    disturbed by them (timeit's reasoning); alternating exposes both models to the same load.
    """
    times: dict[str, list[float]] = {name: [] for name in runs}
    for i in range(warmup + repeats):  # warm-up: allocator, oneDNN kernel choice, optimizer state
        for name, run in runs.items():
            start = time.perf_counter()
            run()
            if i >= warmup:
                times[name].append(time.perf_counter() - start)
    return {name: min(t) for name, t in times.items()}


def generation(name: str, new_tokens: int, prompt_len: int = 32) -> Callable[[], None]:
    """Greedy fp32 decoding of `new_tokens` after a random prompt, batch 1.

    fp32 because single-row bf16 matmuls are several times slower than fp32 on this CPU, for both.
    """
    torch.manual_seed(0)
    model = (GPT(CONFIG) if name == "ours" else hf_model()).eval()
    prompt = torch.randint(0, CONFIG.vocab_size, (1, prompt_len))

    def run() -> None:
        if name == "ours":
            out = generate(model, prompt, new_tokens, temperature=0)
        else:
            with torch.inference_mode():
                out = model.generate(
                    prompt,
                    max_new_tokens=new_tokens,
                    min_new_tokens=new_tokens,
                    do_sample=False,
                    pad_token_id=0,
                    eos_token_id=None,
                )
        assert out.shape[1] == prompt_len + new_tokens, out.shape

    return run


def measure_case(case: str, steps: int, new_tokens: int) -> dict[str, float]:
    """Tokens/s of ours and HF for one case, alternating between them in this process."""
    if case == "generate_fp32":
        decodes = {name: generation(name, new_tokens) for name in ("ours", "hf")}
        return {name: new_tokens / t for name, t in interleaved_best_seconds(decodes, repeats=3, warmup=1).items()}
    bf16, compiled = case.startswith("bf16"), case.endswith("compiled")
    runs = {name: train_step(name, bf16, compiled) for name in ("ours", "hf")}
    seconds = interleaved_best_seconds(runs, repeats=steps, warmup=3 if compiled else 2)
    return {name: BATCH * SEQ / t for name, t in seconds.items()}


def case_in_fresh_process(case: str, args: argparse.Namespace) -> dict[str, float]:
    """Each case in its own interpreter, as a training run starts: the heap an earlier case grew (fp32
    activations are twice the size) would spare the later one page faults a real run pays."""
    command = [sys.executable, "-m", "bench.model", "--case", case, "--steps", str(args.steps),
               "--new-tokens", str(args.new_tokens)]
    result = subprocess.run(command, cwd=Path(__file__).resolve().parents[1], capture_output=True, text=True)
    if result.returncode != 0:
        sys.exit(f"bench.model: case {case} failed:\n{result.stderr[-3000:]}")
    return json.loads(result.stdout.splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--steps", type=int, default=8, help="timed training steps per model and precision (best of)"
    )
    parser.add_argument("--new-tokens", type=int, default=200, help="generated tokens per generation case")
    parser.add_argument("--no-compile", action="store_true", help="skip the torch.compile (both models) bf16 row")
    parser.add_argument("--case", help="measure this one case and print its JSON (what main runs per process)")
    args = parser.parse_args()
    torch.set_num_threads(THREADS)
    if args.case:
        print(json.dumps(measure_case(args.case, args.steps, args.new_tokens)))
        return

    peaks = [{"fp32": matmul_peak(torch.float32), "bf16": matmul_peak(torch.bfloat16)}]
    flops = flops_per_token(CONFIG, SEQ)
    cases = ("fp32", "bf16") if args.no_compile else ("fp32", "bf16", "bf16_compiled")
    train = {case: case_in_fresh_process(case, args) for case in cases}
    gen = case_in_fresh_process("generate_fp32", args)
    # Measured again at the end: the better of the two is the less disturbed by other processes.
    peaks.append({"fp32": matmul_peak(torch.float32), "bf16": matmul_peak(torch.bfloat16)})
    peak = {precision: max(p[precision] for p in peaks) for precision in ("fp32", "bf16")}

    print(
        f"GPT {CONFIG.n_layer}x{CONFIG.n_embd}x{CONFIG.n_head}h, vocab {CONFIG.vocab_size}, seq {SEQ}, "
        f"batch {BATCH}, {THREADS} threads; matmul peak fp32 {peak['fp32'] / 1e9:.0f} GFLOP/s, "
        f"bf16 {peak['bf16'] / 1e9:.0f} GFLOP/s; {flops / 1e6:.1f} MFLOP/token (fwd+bwd)"
    )
    print(f"{'case':<26} {'ours tok/s':>10} {'HF tok/s':>9} {'ours/HF':>8} {'ours MFU':>9} {'HF MFU':>7}")
    results: dict = {
        "config": CONFIG.to_dict(),
        "batch": BATCH,
        "seq": SEQ,
        "threads": THREADS,
        "peak_flops": peak,
        "flops_per_token": flops,
        "cases": {},
        "cpu": platform.processor(),
    }
    for case, tokens_per_sec in train.items():
        ours, hf = tokens_per_sec["ours"], tokens_per_sec["hf"]
        precision = case.split("_")[0]
        mfu_ours, mfu_hf = ours * flops / peak[precision], hf * flops / peak[precision]
        print(
            f"{'train step ' + case:<26} {ours:>10.0f} {hf:>9.0f} {ours / hf:>7.2f}x {mfu_ours:>8.1%} {mfu_hf:>7.1%}"
        )
        results["cases"][f"train_{case}"] = {
            "ours": ours,
            "hf": hf,
            "ratio": ours / hf,
            "mfu_ours": mfu_ours,
            "mfu_hf": mfu_hf,
        }
    print(
        f"{'generate fp32 (cached)':<26} {gen['ours']:>10.0f} {gen['hf']:>9.0f} {gen['ours'] / gen['hf']:>7.2f}x"
    )
    results["cases"]["generate_fp32"] = {**gen, "ratio": gen["ours"] / gen["hf"]}
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(results, indent=2) + "\n")
    print(f"wrote {RESULTS}")


if __name__ == "__main__":
    main()
