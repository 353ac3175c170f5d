"""Curation throughput on the sample WARCs: our web chain against datatrove's FineWeb-style chain.

    python -m bench.curation [--raw data/raw]     # from the repo root (bench/curation.py would shadow the package)

Both chains read the same WARC files in the same run, one task each. Ours adds read-side
bookkeeping (LedgerStep) and PII masking; the "same steps" ratio drops PII from ours. MinHash
signature throughput is measured on our chain's output. Reference figure: Dolma reports
~8 GB of extracted text per CPU-hour for its filters + language ID (Soldaini et al., 2024).
Writes bench/results/curation.json.
"""

from __future__ import annotations

import argparse
import json
import resource
import statistics
import tempfile
import time
from pathlib import Path

from datatrove.pipeline.dedup import MinhashConfig, MinhashDedupSignature
from datatrove.pipeline.extractors import Trafilatura
from datatrove.pipeline.filters import (
    C4QualityFilter,
    FineWebQualityFilter,
    GopherQualityFilter,
    GopherRepetitionFilter,
)
from datatrove.pipeline.readers import JsonlReader, WarcReader
from datatrove.pipeline.writers import JsonlWriter

from curation.assets import ensure_lid_model
from curation.filter import filter_pipeline
from curation.filters import OfflineLanguageFilter, OfflineURLFilter
from curation.layout import Layout
from curation.sources import selected_sources
from tests.curation_fixtures import curate_config

WARCS = ("derived/real_pages.warc.gz", "web/warc/at.warc.gz")


def run_pipeline(pipeline: list) -> float:
    start = time.perf_counter()
    data = None
    for step in pipeline:
        data = step(data, 0, 1)
    if data is not None:
        for _ in data:
            pass
    return time.perf_counter() - start


def reference_chain(raw: Path, out: Path, lid: Path) -> list:
    return [WarcReader(str(raw), paths_file=str(out / "paths.txt")),
            OfflineURLFilter(), Trafilatura(favour_precision=True),
            OfflineLanguageFilter(model_path=str(lid), languages=["en"]),
            GopherRepetitionFilter(), GopherQualityFilter(), C4QualityFilter(filter_no_terminal_punct=False),
            FineWebQualityFilter(), JsonlWriter(str(out / "reference"))]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--raw", type=Path, default=Path("data/raw"))
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    raw = args.raw.resolve()
    lid = ensure_lid_model()
    mb = sum((raw / w).stat().st_size for w in WARCS) / 1e6
    results: dict[str, dict] = {}
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp)
        (out / "paths.txt").write_text("".join(f"{w}\n" for w in WARCS))
        chains = {"datatrove_reference": lambda: reference_chain(raw, out, lid)}
        for name, overrides in (("ours_same_steps", ["~sources.commoncrawl.steps.pii"]), ("ours_full", [])):
            cfg = curate_config(f"paths.raw_root={raw}", f"paths.data_root={out / name}", "only=[commoncrawl]",
                                *overrides)
            source = selected_sources(cfg)[0]
            chains[name] = lambda source=source, name=name: filter_pipeline(source, Layout(out / name))
        for build in chains.values():  # warm-up: model load, block lists, caches
            run_pipeline(build())
        # Rounds alternate the chains so that load on a shared machine hits all of them alike; medians.
        timings: dict[str, list[float]] = {name: [] for name in chains}
        for _ in range(args.rounds):
            for name, build in chains.items():
                timings[name].append(run_pipeline(build()))
        for name, runs in timings.items():
            seconds = statistics.median(runs)
            results[name] = {"seconds": seconds, "mb_per_s_per_core": mb / seconds, "runs": runs}
        for name in ("ours_same_steps", "ours_full"):
            reader = JsonlReader(str(out / name / "work/commoncrawl/filtered"))
            results[name]["docs_kept"] = sum(1 for _ in reader.run(None, 0, 1))
            results[name]["docs_per_s_per_core"] = 85 / results[name]["seconds"]
        texts = [d.text for d in JsonlReader(str(out / "ours_full/work/commoncrawl/extracted")).run(None, 0, 1)]
        signer = MinhashDedupSignature(str(out / "sigs"), config=MinhashConfig())
        start = time.perf_counter()
        for text in texts * 20:
            signer.get_signature(signer.get_shingles(text))
        seconds = time.perf_counter() - start
        chars = sum(map(len, texts)) * 20
        results["minhash_signatures"] = {"docs_per_s_per_core": len(texts) * 20 / seconds,
                                         "mb_text_per_s_per_core": chars / 1e6 / seconds}
    ref = results["datatrove_reference"]["seconds"]
    results["ratio_same_steps"] = ref / results["ours_same_steps"]["seconds"]
    results["ratio_full"] = ref / results["ours_full"]["seconds"]
    results["peak_rss_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    results["input_mb_gz"] = mb
    results["dolma_reference_gb_per_cpu_hour"] = 8.0

    print(f"{'chain':<22}{'s':>8}{'MB/s/core':>12}")
    for name in ("datatrove_reference", "ours_same_steps", "ours_full"):
        r = results[name]
        print(f"{name:<22}{r['seconds']:>8.2f}{r['mb_per_s_per_core']:>12.3f}")
    m = results["minhash_signatures"]
    print(f"minhash signatures: {m['docs_per_s_per_core']:.0f} docs/s, {m['mb_text_per_s_per_core']:.2f} MB text/s per core")
    print(f"ours / reference (same steps): {results['ratio_same_steps']:.2f}x   (full chain: {results['ratio_full']:.2f}x)")
    print(f"peak RSS {results['peak_rss_mb']:.0f} MB; Dolma reference: ~8 GB extracted text per CPU-hour")
    Path("bench/results").mkdir(parents=True, exist_ok=True)
    Path("bench/results/curation.json").write_text(json.dumps(results, indent=2) + "\n")


if __name__ == "__main__":
    main()
