"""End-to-end curation on the real sample corpus (a slice) with the local executor, resume, Slurm."""

from __future__ import annotations

import fcntl
import gzip
import hashlib
import json
import os
import re
import signal
import subprocess
import time
from collections import defaultdict
from pathlib import Path

import numpy as np
import pytest
from datatrove.data import Document
from warcio.archiveiterator import ArchiveIterator

from curation.steps.priority_dedup import normalized_text
from tests.commands import REPO, command_env, run_command
from tests.curation_fixtures import curate_command, read_docs, run_curation

SOURCES = ("commoncrawl", "webtext2", "books", "wikipedia")


@pytest.fixture(scope="module")
def curated(sample_corpus: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    data_root = tmp_path_factory.mktemp("curation")
    result = run_curation(data_root, sample_corpus)
    assert f"curation report: {data_root}/report/curation.md" in result.stdout
    return data_root


def _identical_inputs(sample_corpus: Path) -> list[set[str]]:
    """Groups of byte-identical inputs: news text files (by name) and WARC response payloads (by URL)."""
    groups: dict[str, set[str]] = defaultdict(set)
    for path in (sample_corpus / "web/html/newspaper4k/txt").glob("*.txt"):
        groups[hashlib.sha256(path.read_bytes()).hexdigest()].add(path.name)
    for warc in ("derived/real_pages.warc.gz", "web/warc/at.warc.gz"):
        with open(sample_corpus / warc, "rb") as f:
            for record in ArchiveIterator(f):
                if record.rec_type == "response":
                    payload = record.content_stream().read()
                    groups["warc" + hashlib.sha256(payload).hexdigest()].add(record.rec_headers["WARC-Target-URI"])
    return [names for names in groups.values() if len(names) > 1]


@pytest.mark.slow
def test_only_configured_languages_survive(curated: Path) -> None:
    for source in SOURCES:
        docs = read_docs(curated / "curated" / source)
        assert all(d["metadata"]["language"] == "en" for d in docs), source
    assert read_docs(curated / "removed/commoncrawl/language")  # the crawl has German and French pages


@pytest.mark.slow
def test_duplicates_are_removed_and_one_copy_kept(curated: Path, sample_corpus: Path) -> None:
    groups = _identical_inputs(sample_corpus)
    assert groups, "the sample corpus holds byte-identical pages"
    after_dedup = {d["metadata"].get("url") or Path(d["metadata"]["file_path"]).name
                   for s in ("commoncrawl", "webtext2") for d in read_docs(curated / "work" / s / "dedup")}
    for names in groups:
        assert len(names & after_dedup) <= 1, names
    # pages whose extracted text is identical (the same article in both HTML sets): one copy stays
    exact_removed = read_docs(curated / "removed/commoncrawl/exact_dedup")
    assert exact_removed
    kept_texts = {normalized_text(Document(d["text"], d["id"])) for s in SOURCES for d in read_docs(curated / "work" / s / "exact")}
    assert all(normalized_text(Document(d["text"], d["id"])) in kept_texts for d in exact_removed)
    # the same news article under two names, near-identical text: MinHash keeps one
    near = [Path(d["metadata"]["file_path"]).name for d in read_docs(curated / "removed/webtext2/minhash")]
    kept_news = {Path(d["metadata"]["file_path"]).name for d in read_docs(curated / "curated/webtext2")}
    assert near and len({"cleveland.com1.txt", "video_article_01.txt"} & kept_news) == 1


@pytest.mark.slow
def test_crawl_copies_of_better_sources_go(curated: Path) -> None:
    crawl_removed = read_docs(curated / "removed/commoncrawl/minhash") + read_docs(curated / "removed/commoncrawl/exact_dedup")
    assert crawl_removed
    curated_news = {d["text"][:200] for d in read_docs(curated / "curated/webtext2")}
    assert not any(d["text"][:200] in curated_news for d in read_docs(curated / "curated/commoncrawl"))


@pytest.mark.slow
def test_gutenberg_boilerplate_is_gone(curated: Path) -> None:
    books = read_docs(curated / "curated/books")
    assert len(books) == 7
    botchan = next(d for d in books if "botchan" in d["metadata"]["file_path"])
    assert "gutenberg" not in botchan["text"].lower() and "BOTCHAN" in botchan["text"][:100]


@pytest.mark.slow
def test_stats_report_and_manifests_add_up(curated: Path) -> None:
    for source in SOURCES:
        folder = curated / "curated" / source
        stats = json.loads((folder / "stats.json").read_text())
        manifest = json.loads((folder / "manifest.json").read_text())
        docs = read_docs(folder)
        assert stats["kept"]["docs"] == len(docs) == manifest["counts"]["docs"]
        assert stats["kept"]["chars"] == sum(len(d["text"]) for d in docs)
        assert all(len(i["sha256"]) == 64 for i in manifest["inputs"]) and manifest["inputs"]
        previous_out = None
        for step in stats["steps"]:
            removed_docs = sum(r["docs"] for r in step["removed"].values())
            removed_chars = sum(r["chars"] for r in step["removed"].values())
            assert step["docs_in"] == step["docs_out"] + removed_docs, (source, step["step"])
            assert step["chars_in"] == step["chars_out"] + removed_chars + step["chars_edited"], (source, step["step"])
            if previous_out is not None:
                assert step["docs_in"] == previous_out, (source, step["step"])
            previous_out = step["docs_out"]
        assert previous_out == len(docs)
    crawl = json.loads((curated / "curated/commoncrawl/stats.json").read_text())
    assert [s["step"] for s in crawl["steps"]][-3:] == ["exact_dedup", "minhash", "quality"]
    extract = next(s for s in crawl["steps"] if s["step"] == "extract")
    assert "extract_timeout" not in extract["removed"]  # the default timeout is far above any sample page
    assert all("quality_score" in d["metadata"] and d["metadata"]["url"] for d in read_docs(curated / "curated/commoncrawl"))
    classifier = json.loads((curated / "quality_classifier/manifest.json").read_text())
    assert 0.5 < classifier["counts"]["heldout_auc"] <= 1.0
    with np.load(curated / "quality_classifier/classifier.npz", allow_pickle=False) as saved:  # no code in data
        assert saved["coef"].shape == (classifier["config"]["n_features"],)
    report = (curated / "report/curation.md").read_text()
    assert all(f"## {s}" in report for s in SOURCES) and "AUC" in report
    baseline = classifier["counts"]["heldout_majority_baseline"]
    assert f"majority-class baseline {baseline:.3f}" in report
    kept = {s: json.loads((curated / "curated" / s / "stats.json").read_text())["kept"] for s in SOURCES}
    tokens = {s: json.loads((curated / "tokens" / s / "manifest.json").read_text())["tokens"] for s in SOURCES}
    for source in SOURCES:  # the totals table, tokens filled in once the token files exist
        assert f"| {source} | {kept[source]['docs']:,} | {kept[source]['chars']:,} | {tokens[source]:,} |" in report
    assert (f"| **all** | {sum(k['docs'] for k in kept.values()):,} | {sum(k['chars'] for k in kept.values()):,} | "
            f"{sum(tokens.values()):,} |") in report
    assert (curated / "report/funnel.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def _curated_content(data_root: Path) -> dict[str, list[str]]:
    return {s: sorted(gzip.open(p, "rt").read() for p in sorted((data_root / "curated" / s).glob("*.jsonl.gz")))
            for s in SOURCES}


@pytest.mark.slow
def test_killed_run_resumes_to_the_same_output(curated: Path, sample_corpus: Path, tmp_path: Path) -> None:
    data_root = tmp_path / "resumed"
    process = subprocess.Popen(curate_command(data_root, sample_corpus), cwd=REPO, env=command_env(), start_new_session=True,
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    marker = data_root / "work/logs/dedup_pass_one/completions"
    deadline = time.monotonic() + 300
    while not (marker.is_dir() and any(marker.iterdir())) and process.poll() is None and time.monotonic() < deadline:
        time.sleep(0.2)
    assert process.poll() is None, "the run ended before it could be killed"
    os.killpg(process.pid, signal.SIGKILL)
    process.wait()
    assert not (data_root / "report/curation.md").exists()

    run_curation(data_root, sample_corpus)

    assert _curated_content(data_root) == _curated_content(curated)


@pytest.mark.slow
@pytest.mark.slurm
def test_filter_stage_runs_through_slurm(sample_corpus: Path, tmp_path: Path) -> None:
    data_root = tmp_path / "slurm"
    run_curation(data_root, sample_corpus, "executor=slurm", "only=[webtext2]", module="curation.filter")
    completions = data_root / "work/logs/filter/webtext2/completions"
    deadline = time.monotonic() + 600
    while not (completions / "00000").exists() and time.monotonic() < deadline:
        time.sleep(2)
    assert (completions / "00000").exists(), "the Slurm array task did not complete"
    docs = read_docs(data_root / "work/webtext2/filtered")
    assert docs and all(d["metadata"]["language"] == "en" for d in docs)
    assert (data_root / "work/logs/filter/webtext2/launch_script.slurm").read_text().count("#SBATCH --partition=debug")


def _filter_crawl(data_root: Path, sample_corpus: Path, *overrides: str, env: dict[str, str] | None = None):
    return run_command(curate_command(data_root, sample_corpus, "only=[commoncrawl]", *overrides,
                                      module="curation.filter"), env=env)


@pytest.mark.slow
def test_a_missing_language_model_stops_the_run_before_any_task(sample_corpus: Path, tmp_path: Path) -> None:
    result = _filter_crawl(tmp_path / "data", sample_corpus, f"filters.language.model_path={tmp_path}/lid.176.ftz")
    assert result.returncode != 0
    assert result.stderr.strip().splitlines()[-1] == (
        f"preflight: step language of source commoncrawl cannot run here (FileNotFoundError: no language-ID model "
        f"at {tmp_path}/lid.176.ftz); fetch the model with `python -m curation.assets` or point "
        "filters.language.model_path at lid.176.ftz")
    assert not (tmp_path / "data" / "work" / "logs").exists()


@pytest.mark.slow
def test_a_broken_extraction_install_stops_the_run_before_any_task(sample_corpus: Path, tmp_path: Path) -> None:
    # the install NOTES.md describes: lxml 6 without lxml_html_clean, so trafilatura cannot import
    shadow = tmp_path / "broken_site"
    shadow.mkdir()
    (shadow / "lxml_html_clean.py").write_text("raise ImportError('lxml_html_clean is not installed')\n")
    result = _filter_crawl(tmp_path / "data", sample_corpus,
                           env={"PYTHONPATH": os.pathsep.join([str(shadow), str(REPO)])})
    assert result.returncode != 0
    last = result.stderr.strip().splitlines()[-1]
    assert last.startswith("preflight: step extract of source commoncrawl cannot run here (ImportError: ")
    assert last.endswith("; reinstall the environment with `make setup` (trafilatura needs lxml_html_clean)")
    assert not (tmp_path / "data" / "work" / "logs").exists()


@pytest.mark.slow
def test_a_source_lost_to_extraction_errors_stops_the_run(sample_corpus: Path, tmp_path: Path) -> None:
    result = _filter_crawl(tmp_path / "data", sample_corpus, "filters.extract.timeout=1e-9")
    assert result.returncode != 0
    assert re.fullmatch(r"filter: source commoncrawl lost all (\d+) documents at step extract to "
                        r"extract_timeout \(\1\): the step fails here, not the data; .*",
                        result.stderr.strip().splitlines()[-1])


def _filter_webtext(data_root: Path, sample_corpus: Path, *overrides: str):
    return run_command(curate_command(data_root, sample_corpus, "only=[webtext2]", *overrides,
                                      module="curation.filter"))


@pytest.mark.slow
def test_a_rerun_follows_its_inputs(sample_corpus: Path, tmp_path: Path) -> None:
    data_root = tmp_path / "data"
    news = sorted((sample_corpus / "web/html/newspaper4k/txt").glob("*.txt"))
    subset = tmp_path / "subset"
    subset.mkdir()
    for path in news[:5]:
        (subset / path.name).write_bytes(path.read_bytes())
    first = _filter_webtext(data_root, sample_corpus)
    assert first.returncode == 0, first.stderr[-2000:]
    kept_before = read_docs(data_root / "work/webtext2/filtered")

    unchanged = _filter_webtext(data_root, sample_corpus)
    assert unchanged.returncode == 0 and "filter_webtext2: already complete (skipped)" in unchanged.stdout

    changed = _filter_webtext(data_root, sample_corpus, f"sources.webtext2.input={subset}/*.txt")
    assert changed.returncode != 0
    assert changed.stderr.strip().splitlines()[-1] == (
        f"paths.data_root={data_root} holds outputs of other inputs or settings (changed: sources.webtext2); "
        "rerun with restart=true to clear them and start over, or use another paths.data_root")
    assert (data_root / "work/webtext2/inputs.txt").read_text().count("\n") == len(news)  # untouched

    restarted = _filter_webtext(data_root, sample_corpus, f"sources.webtext2.input={subset}/*.txt", "restart=true")
    assert restarted.returncode == 0, restarted.stderr[-2000:]
    kept_after = read_docs(data_root / "work/webtext2/filtered")
    assert 0 < len(kept_after) <= 5 < len(kept_before)
    assert (data_root / "work/webtext2/inputs.txt").read_text().count("\n") == 5


@pytest.mark.slow
def test_a_second_curation_on_one_data_root_is_refused(sample_corpus: Path, tmp_path: Path) -> None:
    data_root = tmp_path / "data"
    (data_root / "work").mkdir(parents=True)
    with open(data_root / "work/.curation.lock", "w") as holder:
        fcntl.flock(holder, fcntl.LOCK_EX | fcntl.LOCK_NB)
        holder.write(f"testhost pid {os.getpid()}\n")
        holder.flush()
        result = _filter_webtext(data_root, sample_corpus)
    assert result.returncode != 0
    assert result.stderr.strip().splitlines()[-1] == (
        f"paths.data_root={data_root} is being curated by testhost pid {os.getpid()}; wait for it to end or use "
        "another paths.data_root")
