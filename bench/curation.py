"""Curation throughput on the sample WARCs: our web chain against datatrove's FineWeb-style chain.

    python -m bench.curation [--raw data/raw]     # from the repo root (bench/curation.py would shadow the package)

Both chains read the same WARC files in the same run, one task each. The sample WARCs carry no
WARC-Identified-Payload-Type header (CommonCrawl's do), so datatrove's WarcReader falls back to
libmagic, which calls 14 of the 99 HTML pages "application/javascript" and drops them (a third of
the HTML bytes); ours reads the HTTP Content-Type. So that both chains see the same documents, they
read a copy of the WARCs with that header added from the Content-Type; the readers' recall on the
original files is reported beside. Ours adds per-step accounting (AccountedStep, exclusion writers)
and PII masking; the "same steps" ratio drops PII from ours. MinHash signature throughput is
measured on our chain's output. Reference figure: Dolma reports ~8 GB of extracted text per
CPU-hour for its filters + language ID (Soldaini et al., 2024). Writes bench/results/curation.json.
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
from warcio.archiveiterator import ArchiveIterator
from warcio.warcwriter import WARCWriter

from curation.assets import ensure_lid_model
from curation.filter import filter_pipeline
from curation.sources import selected_sources
from curation.steps.offline_filters import OfflineLanguageFilter, OfflineURLFilter
from curation.steps.readers import AccountedWarcReader
from data_contract.layout import DataLayout
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


def with_payload_types(src: Path, dst: Path) -> None:
    """Copy a WARC, giving each response the WARC-Identified-Payload-Type header from its Content-Type."""
    dst.parent.mkdir(parents=True, exist_ok=True)
    with src.open("rb") as f, dst.open("wb") as out:
        writer = WARCWriter(out, gzip=True)
        for record in ArchiveIterator(f):
            headers = record.rec_headers
            if record.rec_type == "response" and record.http_headers and \
                    not headers.get_header("WARC-Identified-Payload-Type"):
                mime = record.http_headers.get_header("Content-Type", "").partition(";")[0].strip().lower()
                if mime:
                    headers.add_header("WARC-Identified-Payload-Type", mime)
            writer.write_record(record)


def documents_read(raw: Path) -> dict[str, int]:
    """Documents each reader makes of the WARCs under `raw`."""
    readers = {"datatrove_warcreader": WarcReader(str(raw)), "ours": AccountedWarcReader(str(raw))}
    return {name: sum(1 for _ in reader.read_files_shard(list(WARCS))) for name, reader in readers.items()}


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
    results: dict[str, dict] = {"documents_read_from_sample_warcs": documents_read(raw)}
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp)
        inputs = out / "warc"
        for warc in WARCS:
            with_payload_types(raw / warc, inputs / warc)
        documents = documents_read(inputs)
        if len(set(documents.values())) != 1:
            raise SystemExit(f"bench: the readers disagree on {inputs} ({documents}); the ratio would be unfair")
        docs = documents["ours"]
        mb = sum((inputs / w).stat().st_size for w in WARCS) / 1e6
        (out / "paths.txt").write_text("".join(f"{w}\n" for w in WARCS))
        chains = {"datatrove_reference": lambda: reference_chain(inputs, out, lid)}
        for name, overrides in (("ours_same_steps", ["~sources.commoncrawl.steps.pii"]), ("ours_full", [])):
            cfg = curate_config(f"paths.raw_root={inputs}", f"paths.data_root={out / name}", "only=[commoncrawl]",
                                *overrides)
            source = selected_sources(cfg)[0]
            chains[name] = lambda source=source, name=name: filter_pipeline(source, DataLayout(out / name))
        for build in chains.values():  # warm-up: model load, block lists, caches
            run_pipeline(build())
        # Rounds alternate the chains so that load on a shared machine hits all of them alike; medians.
        timings: dict[str, list[float]] = {name: [] for name in chains}
        for _ in range(args.rounds):
            for name, build in chains.items():
                timings[name].append(run_pipeline(build()))
        for name, runs in timings.items():
            seconds = statistics.median(runs)
            results[name] = {"seconds": seconds, "mb_per_s_per_core": mb / seconds,
                             "docs_per_s_per_core": docs / seconds, "runs": runs}
        kept = {"datatrove_reference": out / "reference", "ours_same_steps": out / "ours_same_steps/work/commoncrawl/filtered",
                "ours_full": out / "ours_full/work/commoncrawl/filtered"}
        for name, folder in kept.items():
            results[name]["docs_kept"] = sum(1 for _ in JsonlReader(str(folder)).run(None, 0, 1))
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

    read = results["documents_read_from_sample_warcs"]
    print(f"documents read from the sample WARCs: datatrove WarcReader {read['datatrove_warcreader']}, "
          f"ours {read['ours']}; the chains below read {docs} each (payload types added)")
    print(f"{'chain':<22}{'s':>8}{'MB/s/core':>12}{'docs/s/core':>13}{'kept':>6}")
    for name in ("datatrove_reference", "ours_same_steps", "ours_full"):
        r = results[name]
        print(f"{name:<22}{r['seconds']:>8.2f}{r['mb_per_s_per_core']:>12.3f}{r['docs_per_s_per_core']:>13.1f}"
              f"{r['docs_kept']:>6}")
    m = results["minhash_signatures"]
    print(f"minhash signatures: {m['docs_per_s_per_core']:.0f} docs/s, {m['mb_text_per_s_per_core']:.2f} MB text/s per core")
    print(f"ours / reference (same steps): {results['ratio_same_steps']:.2f}x   (full chain: {results['ratio_full']:.2f}x)")
    print(f"peak RSS {results['peak_rss_mb']:.0f} MB; Dolma reference: ~8 GB extracted text per CPU-hour")
    Path("bench/results").mkdir(parents=True, exist_ok=True)
    Path("bench/results/curation.json").write_text(json.dumps(results, indent=2) + "\n")


if __name__ == "__main__":
    main()
