"""Tokenize-stage throughput against a raw sentencepiece encode, and the cost of GPT-3's 300B plan.

    python -m bench.tokenize [--raw data/raw] [--vocab 8192] [--repeat 4]

1. The sample corpus (Wikipedia extracts, Austen, news text; --repeat copies) is written as curated JSONL and a
   tokenizer trained on it. Then, on the same documents, in the same run: `spm.encode(texts,
   add_eos=True)` (the peer: no I/O at all) and the whole `curation.tokenize` stage (read JSONL,
   val split, datatrove DocumentTokenizer, write token files, hash them). Tokens per CPU-second,
   i.e. per core; target: the stage at >= 0.8x of the raw encode.
2. `python -m curation.mix mixture=gpt3 mix_plan.tokens=300e9 mix_plan.seq_len=2048 mix_plan.plan_only=true` from
   the paper's source sizes: wall time and peak RSS of the process, and the worst prefix drift of its order
   beside that of Megatron's blending loop on the same counts.

Prints a table; writes bench/results/tokenize.json.
"""

from __future__ import annotations

import sys
from pathlib import Path

# Run as `python bench/tokenize.py`, this file's folder leads sys.path and the file would shadow the
# standard library's `tokenize`, which the imports below reach; drop the folder first.
if Path(sys.path[0]).resolve() == Path(__file__).resolve().parent:
    sys.path.pop(0)

import argparse
import json
import resource
import subprocess
import tempfile
import time

import sentencepiece as spm
from datatrove.data import Document
from datatrove.pipeline.writers import JsonlWriter
from hydra import compose, initialize_config_dir

from curation.tokenize import tokenize_sources
from curation.train_tokenizer import train_tokenizer

REPO = Path(__file__).resolve().parents[1]
GPT3_SOURCES = "{commoncrawl:410e9,webtext2:19e9,books1:12e9,books2:55e9,wikipedia:3e9}"


def cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def write_curated(data_root: Path, raw: Path, repeat: int) -> list[str]:
    """The sample corpus `repeat` times over (distinct ids), so fixed per-task costs amortize as on real data."""
    wiki = json.loads((raw / "wiki/extracts/summaries_en-us.json").read_text())
    news = sorted((raw / "web/html/newspaper4k/txt").glob("*.txt"))
    sources = {
        "wikipedia": [(k, v["extract"]) for k, v in wiki.items()],
        "books": [(p.name, p.read_text()) for p in sorted((raw / "books/austen").glob("*.txt"))],
        "webtext2": [(p.name, p.read_text()) for p in news[1::2]],
        "commoncrawl": [(p.name, p.read_text()) for p in news[::2]],
    }
    for source, docs in sources.items():
        with JsonlWriter(str(data_root / "curated" / source), output_filename="${rank}.jsonl.gz") as writer:
            for copy in range(repeat):
                for doc_id, text in docs:
                    writer.write(Document(text=text, id=f"{doc_id}#{copy}"))
    return [text for docs in sources.values() for _ in range(repeat) for _, text in docs]


def bench_tokenize(raw: Path, vocab: int, repeat: int, work: Path) -> dict:
    texts = write_curated(work, raw, repeat)
    with initialize_config_dir(config_dir=str(REPO / "conf"), version_base="1.3"):
        cfg = compose("curate", overrides=[f"paths.data_root={work}", f"tokenizer.vocab_size={vocab}",
                                           "token_files.workers=1", "token_files.progress=false"])
    processor = spm.SentencePieceProcessor(model_file=str(train_tokenizer(cfg)))

    wall, cpu = time.perf_counter(), cpu_seconds()
    raw_tokens = sum(map(len, processor.encode(texts, add_eos=True)))
    raw_wall, raw_cpu = time.perf_counter() - wall, cpu_seconds() - cpu

    wall, cpu = time.perf_counter(), cpu_seconds()
    manifests = tokenize_sources(cfg)
    stage_wall, stage_cpu = time.perf_counter() - wall, cpu_seconds() - cpu
    stage_tokens = sum(m["tokens"] + m["val_tokens"] for m in manifests.values())
    assert stage_tokens == raw_tokens, (stage_tokens, raw_tokens)
    return {
        "documents": len(texts), "bytes": sum(len(t.encode()) for t in texts), "tokens": raw_tokens,
        "vocab_size": vocab,
        "raw_spm_encode": {"wall_s": raw_wall, "cpu_s": raw_cpu, "tokens_per_cpu_s": raw_tokens / raw_cpu},
        "tokenize_stage": {"wall_s": stage_wall, "cpu_s": stage_cpu, "tokens_per_cpu_s": stage_tokens / stage_cpu},
        "ratio_stage_to_raw": (stage_tokens / stage_cpu) / (raw_tokens / raw_cpu),
    }


def bench_gpt3_plan(work: Path) -> dict:
    command = [sys.executable, "-m", "curation.mix", "mixture=gpt3", "mix_plan.tokens=300e9", "mix_plan.seq_len=2048",
               "mix_plan.plan_only=true", f"mix_plan.source_tokens={GPT3_SOURCES}", f"paths.data_root={work}"]
    start = time.perf_counter()
    subprocess.run(command, check=True, cwd=REPO, capture_output=True)
    wall = time.perf_counter() - start
    mixture = json.loads((work / "mix/gpt3/mixture.json").read_text())
    return {"num_samples": mixture["num_samples"], "wall_s": wall, "max_prefix_drift": mixture["max_prefix_drift"],
            "peak_rss_gb": resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 2**20,
            "plan_bytes": sum(p.stat().st_size for p in (work / "mix/gpt3").glob("*.npy"))}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--raw", type=Path, default=REPO / "data/raw")
    parser.add_argument("--vocab", type=int, default=8192)
    parser.add_argument("--repeat", type=int, default=4, help="copies of the sample corpus to tokenize")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tokens_dir, tempfile.TemporaryDirectory() as plan_dir:
        results = {"tokenize": bench_tokenize(args.raw, args.vocab, args.repeat, Path(tokens_dir)),
                   "gpt3_plan": bench_gpt3_plan(Path(plan_dir))}

    tok, plan = results["tokenize"], results["gpt3_plan"]
    print(f"\n{tok['documents']:,} documents, {tok['bytes'] / 1e6:.1f} MB, {tok['tokens']:,} tokens "
          f"(vocab {tok['vocab_size']})")
    print(f"{'':<28}{'tokens/s per core':>18}{'wall s':>9}{'cpu s':>8}")
    for name, key in (("spm.encode (raw peer)", "raw_spm_encode"), ("curation.tokenize stage", "tokenize_stage")):
        row = tok[key]
        print(f"{name:<28}{row['tokens_per_cpu_s']:>18,.0f}{row['wall_s']:>9.2f}{row['cpu_s']:>8.2f}")
    print(f"ratio stage / raw: {tok['ratio_stage_to_raw']:.2f}x (target >= 0.8x)")
    print(f"\nGPT-3 300B-token plan from counts: {plan['num_samples']:,} samples, {plan['wall_s']:.1f} s, "
          f"peak RSS {plan['peak_rss_gb']:.2f} GB, {plan['plan_bytes'] / 2**30:.2f} GiB of .npy")
    drift = plan["max_prefix_drift"]
    print(f"worst prefix drift from the shares: {drift['samples']:.3f} samples "
          f"(Megatron's blending loop on the same counts: {drift['megatron_samples']:.3f})")
    out = REPO / "bench/results/tokenize.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(results, indent=2) + "\n")
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
