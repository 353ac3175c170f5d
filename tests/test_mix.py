"""curation.mix: shares over every prefix, epochs, determinism, the window contract and bad input.

Token files here are real datatrove-format files with random ids, written beside a tokens
manifest exactly as curation.tokenize writes them; test_tokenize.py runs the mix on real text, and
the GPT-3 mixture is planned here over real token files of its five sources on the sample corpus.
"""

from __future__ import annotations

import dataclasses
import json
import math
from pathlib import Path

import numpy as np
import pytest
import yaml
from datatrove.data import Document
from datatrove.pipeline.writers import JsonlWriter

from curation.mix import build_mix
from curation.mixture_order import allocate_samples, drift_bounds, interleave, permute
from curation.sources import selected_sources
from curation.tokenize import tokenize_sources
from curation.train_tokenizer import train_tokenizer
from data_contract.layout import DataLayout
from data_contract.manifest import MANIFEST, write_manifest
from data_contract.refusal import Refusal
from data_contract.token_files import token_file_entry
from tests.commands import REPO
from tests.curation_fixtures import compose_curate, write_curated

DEMO_SIZES = {"commoncrawl": [3000, 2000], "webtext2": [1500], "books": [40000, 30000], "wikipedia": [20000]}
GPT3_TOKENS = {"commoncrawl": 410e9, "webtext2": 19e9, "books1": 12e9, "books2": 55e9, "wikipedia": 3e9}
# Curation for GPT-3's mixture, as the README gives it: the books source's two halves in its place.
GPT3_SOURCES = ("mixture=gpt3",)


def write_tokens(data_root: Path, source: str, sizes: list[int], vocab_size: int = 1000) -> None:
    folder = data_root / "tokens" / source
    (folder / "val").mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(len(source))
    for i, size in enumerate(sizes):
        ids = rng.integers(3, vocab_size, size, dtype=np.uint16)
        ids[size // 2 - 1] = ids[-1] = 2  # two documents, each ending in EOS
        ids.tofile(folder / f"{source}_{i:05d}_unshuffled.ds")
        np.array([size // 2, size], dtype="<u8").tofile(folder / f"{source}_{i:05d}_unshuffled.ds.index")
    np.full(50, 2, dtype=np.uint16).tofile(folder / "val" / f"{source}_val.ds")
    np.array([50], dtype="<u8").tofile(folder / "val" / f"{source}_val.ds.index")
    dtype = np.dtype("<u2")
    layout = DataLayout(data_root)
    files = [token_file_entry(p, layout, dtype) for p in sorted(folder.glob("*.ds"))]
    write_manifest(folder, inputs=[], config={}, source=source, tokenizer_sha256="f" * 64, dtype="uint16",
                   vocab_size=vocab_size, eos_id=2, tokens=sum(f["tokens"] for f in files), files=files,
                   val_files=[token_file_entry(folder / "val" / f"{source}_val.ds", layout, dtype)])


@pytest.fixture
def demo_tokens(tmp_path: Path) -> Path:
    for source, sizes in DEMO_SIZES.items():
        write_tokens(tmp_path, source, sizes)
    return tmp_path


def plan_only(data_root: Path, tokens: float, seq_len: int, seed: int = 1234) -> list[str]:
    counts = ",".join(f"{k}:{v}" for k, v in GPT3_TOKENS.items())
    return [f"mix_plan.tokens={tokens}", f"mix_plan.seq_len={seq_len}", f"mix_plan.seed={seed}", "mixture=gpt3",
            "mix_plan.plan_only=true", f"mix_plan.source_tokens={{{counts}}}", f"paths.data_root={data_root}"]


def load_plan(out: Path) -> tuple[dict, np.ndarray, np.ndarray]:
    return (json.loads((out / "mixture.json").read_text()), np.load(out / "plan_source.npy"),
            np.load(out / "plan_sample.npy"))


def test_gpt3_mixture_is_table_2_2() -> None:
    spec = yaml.safe_load((REPO / "conf/mixture/gpt3.yaml").read_text())
    assert spec["sources"] == {"commoncrawl": {"weight": 0.60}, "webtext2": {"weight": 0.22},
                               "books1": {"weight": 0.08}, "books2": {"weight": 0.08},
                               "wikipedia": {"weight": 0.03}}


def test_shares_hold_over_the_plan_and_every_tenth_prefix(tmp_path: Path) -> None:
    out = build_mix(compose_curate(tmp_path, *plan_only(tmp_path, 2e7, 256)))
    mixture, plan_source, plan_sample = load_plan(out)
    assert plan_source.dtype == np.uint8 and plan_sample.dtype == np.int64
    assert len(plan_source) == mixture["num_samples"] == math.ceil(2e7 / 256)
    targets = np.array([0.60, 0.22, 0.08, 0.08, 0.03]) / 1.01
    assert mixture["max_prefix_drift"]["samples"] == pytest.approx(
        prefix_drift(plan_source, np.bincount(plan_source)))
    assert mixture["max_prefix_drift"]["samples"] < mixture["max_prefix_drift"]["megatron_samples"]
    for tenth in range(1, 11):
        prefix = plan_source[: len(plan_source) * tenth // 10]
        shares = np.bincount(prefix, minlength=5) / len(prefix)
        assert np.abs(shares - targets).max() < 0.005, (tenth, shares)
    for i, source in enumerate(mixture["sources"]):
        assert source["name"] == list(GPT3_TOKENS)[i]
        assert source["measured_share"] == pytest.approx(targets[i], abs=1e-4)
        assert source["tokens_planned"] == source["samples"] * 256 == np.sum(plan_source == i) * 256
        assert source["epochs"] == pytest.approx(source["tokens_planned"] / source["tokens_available"])


def prefix_drift(order: np.ndarray, counts: np.ndarray) -> float:
    """Worst |samples of source i in the first t - n_i t / N| over every prefix t and source i."""
    seen = np.stack([np.cumsum(order == i) for i in range(len(counts))], axis=1)
    return float(np.abs(seen - np.arange(1, len(order) + 1)[:, None] * counts / counts.sum()).max())


def megatron_order(counts: np.ndarray) -> np.ndarray:
    """Megatron's build_blending_indices, written out: take the source furthest below weight x max(t, 1)."""
    weights, taken, order = counts / counts.sum(), np.zeros(len(counts)), []
    for t in range(int(counts.sum())):
        best = int(np.argmax(weights * max(t, 1) - taken))
        taken[best] += 1
        order.append(best)
    return np.array(order)


def our_order(counts: np.ndarray, chunk: int) -> np.ndarray:
    bound, _ = drift_bounds(counts, chunk)
    return np.concatenate([sources for _, sources, _ in interleave(counts, chunk, bound)])


def test_gpt3_weights_drift_less_than_megatron_and_chunking_changes_nothing() -> None:
    counts = allocate_samples(np.array([0.60, 0.22, 0.08, 0.08, 0.03]), np.full(5, 1 << 40), 20_011)
    ours, megatron = our_order(counts, chunk=997), megatron_order(counts)
    assert np.array_equal(np.bincount(ours), counts)
    assert prefix_drift(ours, counts) < 0.76 < 1.3 < prefix_drift(megatron, counts)
    assert np.array_equal(ours, our_order(counts, chunk=1 << 20))
    bound, greedy = drift_bounds(counts, 997)
    assert bound / counts.sum() == pytest.approx(prefix_drift(ours, counts))
    assert greedy / counts.sum() == pytest.approx(prefix_drift(megatron, counts))


@pytest.mark.parametrize("seed", range(12))
def test_never_worse_than_megatron_and_within_tijdemans_bound(seed: int) -> None:
    rng = np.random.default_rng(seed)
    sources = int(rng.integers(2, 9))
    counts = allocate_samples(rng.dirichlet(np.full(sources, 0.5)), np.full(sources, 1 << 40), 3001)
    drift = prefix_drift(our_order(counts, chunk=500), counts)
    used = np.count_nonzero(counts)
    assert drift <= prefix_drift(megatron_order(counts), counts) + 1e-12
    assert drift <= 1 - 1 / (2 * used - 2) + 1e-12


@pytest.mark.parametrize("counts", [(3, 2, 2), (5, 3, 1), (4, 4, 1, 1), (6, 1, 1, 1)])
def test_drift_is_the_smallest_any_order_has(counts: tuple[int, ...]) -> None:
    """Against every distinct order of these samples: ours is within 1/1024 sample of the best."""
    def orders(left: tuple[int, ...]) -> list[list[int]]:
        if not any(left):
            return [[]]
        return [[i, *rest] for i, n in enumerate(left) if n
                for rest in orders(tuple(m - (j == i) for j, m in enumerate(left)))]

    best = min(prefix_drift(np.array(order), np.array(counts)) for order in orders(counts))
    counts = np.array(counts)
    assert best <= prefix_drift(our_order(counts, chunk=4), counts) <= best + 1 / 1024


def test_epochs_visit_every_window_once_each_in_a_new_order(tmp_path: Path) -> None:
    out = build_mix(compose_curate(tmp_path, *plan_only(tmp_path, 2e7, 256)))
    mixture, plan_source, plan_sample = load_plan(out)
    for i, source in enumerate(mixture["sources"]):
        windows, picks = source["windows_available"], plan_sample[plan_source == i]
        assert picks.min() >= 0 and picks.max() < windows
        full = len(picks) // windows
        for epoch in range(full):
            assert np.array_equal(np.sort(picks[epoch * windows:(epoch + 1) * windows]), np.arange(windows))
        assert len(np.unique(picks[full * windows:])) == len(picks) - full * windows
        if full >= 2:
            assert not np.array_equal(picks[:windows], picks[windows:2 * windows])


def test_same_seed_same_bytes_other_seed_other_order(tmp_path: Path) -> None:
    runs = {}
    for name, seed in (("a", 7), ("b", 7), ("c", 8)):
        out = build_mix(compose_curate(tmp_path / name, *plan_only(tmp_path / name, 5e6, 128, seed)))
        runs[name] = {f: (out / f).read_bytes() for f in ("plan_source.npy", "plan_sample.npy", "mixture.json",
                                                          "manifest.json")}
    assert runs["a"] == runs["b"]
    assert runs["a"]["plan_sample.npy"] != runs["c"]["plan_sample.npy"]
    shares = {n: [s["samples"] for s in json.loads(runs[n]["mixture.json"])["sources"]] for n in "ac"}
    assert shares["a"] == shares["c"]


def test_windows_read_the_concatenated_token_files(demo_tokens: Path) -> None:
    out = build_mix(compose_curate(demo_tokens, "mix_plan.tokens=100000", "mix_plan.seq_len=64"))
    mixture, plan_source, plan_sample = load_plan(out)
    assert (mixture["tokenizer_sha256"], mixture["dtype"], mixture["eos_id"]) == ("f" * 64, "uint16", 2)
    for i, source in enumerate(mixture["sources"]):
        files = [demo_tokens / f["path"] for f in source["token_files"]]
        assert [p.name for p in files] == sorted(p.name for p in files)
        assert not {f["path"] for f in source["val_files"]} & {f["path"] for f in source["token_files"]}
        stream = np.concatenate([np.fromfile(p, dtype="<u2") for p in files])
        assert source["tokens_available"] == len(stream) == sum(DEMO_SIZES[source["name"]])
        assert source["windows_available"] == (len(stream) - 1) // 64
        for w in plan_sample[plan_source == i]:
            assert len(stream[w * 64: w * 64 + 65]) == 65


def test_max_epochs_caps_a_source_and_gives_its_share_to_the_others(demo_tokens: Path) -> None:
    out = build_mix(compose_curate(demo_tokens, "mix_plan.tokens=400000", "mix_plan.seq_len=64"))
    mixture, _, _ = load_plan(out)
    by_name = {s["name"]: s for s in mixture["sources"]}
    assert by_name["commoncrawl"]["samples"] == math.floor(10 * by_name["commoncrawl"]["windows_available"])
    assert by_name["webtext2"]["samples"] == math.floor(10 * by_name["webtext2"]["windows_available"])
    books, wiki = by_name["books"]["samples"], by_name["wikipedia"]["samples"]
    assert abs(books - wiki) <= 1  # equal weights share what the capped sources could not take
    assert sum(s["samples"] for s in mixture["sources"]) == mixture["num_samples"]


def test_permutation_is_a_bijection_for_awkward_sizes() -> None:
    keys = np.arange(1, 5, dtype=np.uint64) * np.uint64(0x9E3779B97F4A7C15)
    for size in (1, 2, 3, 5, 17, 1000, 4097, 65537):
        assert np.array_equal(np.sort(permute(np.arange(size), size, keys)), np.arange(size))


def _drop_manifest(root: Path) -> None:
    (root / "tokens/webtext2" / MANIFEST).unlink()


def _truncate(root: Path) -> None:
    with open(root / "tokens/books/books_00001_unshuffled.ds", "ab") as f:
        f.write(b"\0")


def _vocab_beyond_uint16(root: Path) -> None:
    path = root / "tokens/books" / MANIFEST
    manifest = json.loads(path.read_text())
    path.write_text(json.dumps(manifest | {"vocab_size": 70000}))


@pytest.mark.parametrize(("corrupt", "overrides", "message"), [
    (_drop_manifest, [], r"mixture source 'webtext2' has no token files"),
    (None, [f"mixture.sources.{s}.weight=0" for s in DEMO_SIZES], r"all source weights are zero"),
    (None, ["mixture.sources.books.weight=-1"], r"sources.books.weight=-1.* must be a number >= 0"),
    (None, ["mixture.sources.webtext2.max_epochs=0"], r"sources.webtext2.max_epochs=0 must be a number > 0"),
    (None, ["mix_plan.seq_len=2000"], r"mix_plan.seq_len=2000 needs 2001 tokens per window but source 'webtext2' has 1500"),
    (_truncate, [], r"books_00001_unshuffled.ds: 60001 bytes is not a multiple of uint16's 2"),
    (_vocab_beyond_uint16, [], r"vocab_size=70000 does not fit dtype uint16"),
])
def test_bad_input_is_one_line_and_writes_nothing(demo_tokens: Path, corrupt, overrides, message) -> None:
    if corrupt:
        corrupt(demo_tokens)
    with pytest.raises(Refusal, match=message) as refused:
        build_mix(compose_curate(demo_tokens, "mix_plan.tokens=100000", "mix_plan.seq_len=64", *overrides))
    assert "\n" not in str(refused.value)
    assert not (demo_tokens / "mix").exists()


@pytest.mark.slow
def test_gpt3_300b_plan_from_counts_alone(tmp_path: Path) -> None:
    out = build_mix(compose_curate(tmp_path, *plan_only(tmp_path, 300e9, 2048)))
    mixture, _, _ = load_plan(out)
    assert mixture["num_samples"] == 146_484_375
    plan_source = np.load(out / "plan_source.npy", mmap_mode="r")
    targets = np.array([0.60, 0.22, 0.08, 0.08, 0.03]) / 1.01
    assert mixture["max_prefix_drift"]["samples"] < mixture["max_prefix_drift"]["megatron_samples"]
    for tenth in range(1, 11):
        prefix = plan_source[: len(plan_source) * tenth // 10]
        assert np.abs(np.bincount(prefix, minlength=5) / len(prefix) - targets).max() < 1e-6
    epochs = {s["name"]: round(s["epochs"], 2) for s in mixture["sources"]}
    assert epochs == {"commoncrawl": 0.43, "webtext2": 3.44, "books1": 1.98, "books2": 0.43, "wikipedia": 2.97}


def test_gpt3_curation_reads_the_books_as_two_disjoint_halves(sample_corpus: Path, tmp_path: Path) -> None:
    demo = {s.name: s for s in selected_sources(compose_curate(tmp_path, f"paths.raw_root={sample_corpus}"))}
    cfg = compose_curate(tmp_path, f"paths.raw_root={sample_corpus}", *GPT3_SOURCES)
    gpt3 = {s.name: s for s in selected_sources(cfg)}
    assert sorted(gpt3) == sorted(cfg.mixture.sources)  # curation reads what the mixture weighs, nothing else
    books1, books2 = set(gpt3["books1"].files), set(gpt3["books2"].files)
    assert books1 and books2 and not books1 & books2
    assert books1 | books2 == set(demo["books"].files) and len(demo["books"].files) == 7  # 6 Austen novels, Botchan
    for half in ("books1", "books2"):  # read, cleaned and ranked as the books source is
        assert dataclasses.replace(gpt3[half], name="books", files=demo["books"].files) == demo["books"]


@pytest.mark.slow
def test_gpt3_mixture_plans_over_the_token_files_of_its_five_sources(sample_corpus: Path, tmp_path: Path) -> None:
    """The training-data stage of `curation.run mixture=gpt3` on curated sample documents, the books halves
    holding the files their source configs read."""
    cfg = compose_curate(tmp_path, f"paths.raw_root={sample_corpus}", *GPT3_SOURCES, "tokenizer.vocab_size=2048",
                         "tokenizer.sample_bytes=2000000", "token_files.progress=false", "mix_plan.tokens=1000000",
                         "mix_plan.seq_len=128")
    write_curated(tmp_path, sample_corpus)  # commoncrawl, webtext2, wikipedia (and books, which gpt3 leaves out)
    halves = {s.name: s.files for s in selected_sources(cfg) if s.name in ("books1", "books2")}
    for name, files in halves.items():
        with JsonlWriter(str(tmp_path / "curated" / name), output_filename="${rank}.jsonl.gz") as writer:
            for path in files:
                writer.write(Document(text=Path(path).read_text(), id=Path(path).name), rank=0)
    train_tokenizer(cfg)
    manifests = tokenize_sources(cfg)
    mixture, plan_source, _ = load_plan(build_mix(cfg))
    assert [s["name"] for s in mixture["sources"]] == list(GPT3_TOKENS) and not (tmp_path / "tokens/books").exists()
    targets = np.array([0.60, 0.22, 0.08, 0.08, 0.03]) / 1.01
    assert np.abs(np.bincount(plan_source, minlength=5) / len(plan_source) - targets).max() < 1e-3
    for name, files in halves.items():
        manifest = manifests[name]
        assert manifest["documents"] + manifest["val_documents"] == len(files)
        source = next(s for s in mixture["sources"] if s["name"] == name)
        assert source["tokens_available"] == manifest["tokens"] > 0
