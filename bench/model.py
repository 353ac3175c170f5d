"""Our GPT against transformers' GPT2LMHeadModel on the same shapes, threads and optimizer.

    python -m bench.model [--steps 8] [--new-tokens 200] [--no-compile]

(as a module: running bench/model.py as a script would shadow the `model` package).

Training: forward + backward + AdamW step, tokens/s in fp32, under bf16 autocast, and under bf16
autocast with both models torch.compile'd, with MFU against this CPU's matmul peak measured in the
same run. Generation: greedy tokens/s with a KV cache (ours) against `generate` (theirs), fp32.
Each model and case runs in its own process, as a training run does, ours and HF alternating over
rounds; a process reports the median of its timed steps, a model the best of its rounds.
Writes bench/results/model.json.
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
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
    a @ b  # warm-up: oneDNN kernel choice
    seconds = min(timed(lambda: a @ b) for _ in range(repeats))  # other processes only ever add time
    return 2 * size**3 / seconds


def timed(run: Callable[[], object]) -> float:
    start = time.perf_counter()
    run()
    return time.perf_counter() - start


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


def measure(case: str, name: str, steps: int, new_tokens: int) -> float:
    """Tokens/s of one model in one case: the median over `steps` timed runs after warm-up."""
    if case == "generate_fp32":
        run, tokens, warmup, steps = generation(name, new_tokens), new_tokens, 1, 3
    else:
        run, tokens, warmup = train_step(name, case.startswith("bf16"), case.endswith("compiled")), BATCH * SEQ, 3
    for _ in range(warmup):  # allocator growth, oneDNN kernel choice, optimizer state, compilation
        run()
    return tokens / statistics.median(timed(run) for _ in range(steps))


def measure_in_fresh_process(case: str, name: str, args: argparse.Namespace) -> float:
    """One model and case per interpreter, as a training run is: what an earlier case or the other model
    left in the heap (glibc keeps freed memory, so a grown heap spares page faults) cannot help it."""
    command = [sys.executable, "-m", "bench.model", "--case", case, "--model", name, "--steps", str(args.steps),
               "--new-tokens", str(args.new_tokens)]
    result = subprocess.run(command, cwd=Path(__file__).resolve().parents[1], capture_output=True, text=True)
    if result.returncode != 0:
        sys.exit(f"bench.model: {name} {case} failed:\n{result.stderr[-3000:]}")
    return float(result.stdout.splitlines()[-1])


def measure_case(case: str, args: argparse.Namespace) -> dict[str, float]:
    """Ours and HF in alternating processes over `rounds`; the best round of each, since on a shared
    machine other processes only ever add time."""
    tokens_per_s: dict[str, list[float]] = {"ours": [], "hf": []}
    for _ in range(args.rounds):
        for name, results in tokens_per_s.items():
            results.append(measure_in_fresh_process(case, name, args))
    return {name: max(results) for name, results in tokens_per_s.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--steps", type=int, default=10, help="timed training steps per process (median of)"
    )
    parser.add_argument("--new-tokens", type=int, default=200, help="generated tokens per generation case")
    parser.add_argument("--no-compile", action="store_true", help="skip the torch.compile (both models) bf16 row")
    parser.add_argument("--rounds", type=int, default=2, help="processes per model and case (best of)")
    parser.add_argument("--case", help="with --model: measure this one case in this process, print tokens/s")
    parser.add_argument("--model", choices=("ours", "hf"))
    args = parser.parse_args()
    torch.set_num_threads(THREADS)
    if args.case:
        print(measure(args.case, args.model, args.steps, args.new_tokens))
        return

    peaks = [{"fp32": matmul_peak(torch.float32), "bf16": matmul_peak(torch.bfloat16)}]
    flops = flops_per_token(CONFIG, SEQ)
    cases = ("fp32", "bf16") if args.no_compile else ("fp32", "bf16", "bf16_compiled")
    train = {case: measure_case(case, args) for case in cases}
    gen = measure_case("generate_fp32", args)
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
