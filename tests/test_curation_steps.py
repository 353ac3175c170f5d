"""Unit tests of the curation steps this project adds to datatrove (readers, accounting, dedup, quality)."""

from __future__ import annotations

import gzip
import io
import json
import struct
from pathlib import Path

import pytest
from datatrove.data import Document
from datatrove.pipeline.filters import GopherQualityFilter
from datatrove.pipeline.formatters import PIIFormatter
from datatrove.pipeline.writers import JsonlWriter
from warcio.statusandheaders import StatusAndHeaders
from warcio.warcwriter import WARCWriter

from curation.sources import selected_sources
from curation.steps.accounting import AccountedStep
from curation.steps.extraction import AccountedTrafilatura
from curation.steps.gutenberg import GutenbergStripper
from curation.steps.priority_dedup import PriorityMinhashCluster, SourcePriority, rank_blocks, source_of_rank
from curation.steps.quality_classifier import keep_by_pareto, paragraphs
from curation.steps.readers import make_reader
from data_contract.refusal import Refusal
from tests.curation_fixtures import curate_config, read_docs

ENGLISH = ("The committee met on Tuesday to review the budget for the coming year. Members agreed that the "
           "library should stay open longer on weekends, and that the old reading room needs new lights. ") * 4


def _total(step, label: str) -> float:
    return step.stats[label].total


def _write_warc(path: Path, pages: list[bytes]) -> None:
    with open(path, "wb") as out:
        writer = WARCWriter(out, gzip=True)
        for i, page in enumerate(pages):
            http = StatusAndHeaders("200 OK", [("Content-Type", "text/html; charset=utf-8")], protocol="HTTP/1.1")
            writer.write_record(writer.create_warc_record(f"http://example.org/{i}", "response",
                                                          payload=io.BytesIO(page), http_headers=http))


def test_warc_reader_keeps_documents_before_a_truncation_and_counts_it(tmp_path: Path) -> None:
    pages = [f"<html><body><p>page {i} {ENGLISH}</p></body></html>".encode() for i in range(3)] + [b""]
    whole = tmp_path / "whole.warc.gz"
    _write_warc(whole, pages)
    data = whole.read_bytes()
    (tmp_path / "in").mkdir()
    (tmp_path / "in" / "a_truncated.warc.gz").write_bytes(data[: int(len(data) * 0.6)])
    (tmp_path / "in" / "b_whole.warc.gz").write_bytes(data)

    reader = make_reader("warc", str(tmp_path / "in"), None, {})
    docs = list(reader.run(None, 0, 1))

    assert _total(reader, "errors/truncated_gzip") == 1
    assert _total(reader, "removed_docs/empty") == 1  # the empty record of the whole file
    from_truncated = [d for d in docs if "a_truncated" in d.metadata["file_path"]]
    assert 1 <= len(from_truncated) < 3  # the records before the cut survive
    assert len(docs) == len(from_truncated) + 3
    assert all(d.metadata["url"].startswith("http://example.org/") and d.metadata["date"] for d in docs)
    assert _total(reader, "in_docs") == _total(reader, "out_docs") + _total(reader, "removed_docs/empty")


def _page(i: int) -> bytes:
    return f"<html><body><p>page {i} {ENGLISH}</p></body></html>".encode()


def _warc_bytes(pages: list[bytes], gzip: bool) -> bytes:
    out = io.BytesIO()
    writer = WARCWriter(out, gzip=gzip)
    for i, page in enumerate(pages):
        http = StatusAndHeaders("200 OK", [("Content-Type", "text/html; charset=utf-8")], protocol="HTTP/1.1")
        writer.write_record(writer.create_warc_record(f"http://example.org/{i}", "response",
                                                      payload=io.BytesIO(page), http_headers=http))
    return out.getvalue()


def _cut_inside_last_record(pages: list[bytes], gzip: bool) -> bytes:
    """The archive cut in the middle of its last page's payload."""
    whole = _warc_bytes(pages, gzip)
    if gzip:  # each record is its own gzip member: cut the last member in half
        start = len(_warc_bytes(pages[:-1], gzip))
        return whole[: start + (len(whole) - start) // 2]
    return whole[: whole.rindex(pages[-1]) + len(pages[-1]) // 2]


def _jsonl(records: list[object]) -> bytes:
    return b"".join(json.dumps(r).encode() + b"\n" for r in records)


def _parquet(texts: list[str | None]) -> bytes:
    import pyarrow as pa
    import pyarrow.parquet as pq

    out = io.BytesIO()
    pq.write_table(pa.table({"text": texts, "id": [str(i) for i in range(len(texts))]}), out)
    return out.getvalue()


GOOD = ENGLISH.strip()
BAD_INPUTS = {  # case: (format, file name, content, texts kept, removed per reason, file errors per reason)
    "warc.gz cut mid-record": ("warc", "cut.warc.gz", _cut_inside_last_record([_page(0), _page(1), _page(2)], True),
                               2, {}, {"truncated_gzip": 1}),
    "warc cut mid-record": ("warc", "cut.warc", _cut_inside_last_record([_page(0), _page(1), _page(2)], False),
                            2, {"truncated_record": 1}, {}),
    "jsonl text of the wrong type": ("jsonl", "mixed.jsonl", _jsonl([
        {"text": GOOD, "id": "a"}, {"text": 5, "id": "n"}, {"text": GOOD, "id": "b"}, {"text": [1, 2], "id": "l"},
        {"text": {"k": "v"}, "id": "o"}, {"text": None, "id": "z"}, {"text": GOOD, "id": "c"}]),
        3, {"text_not_a_string": 3, "no_text": 1}, {}),
    "parquet rows without text": ("parquet", "rows.parquet", _parquet([GOOD, "", None, GOOD]), 2,
                                  {"empty": 1, "no_text": 1}, {}),
    "empty warc.gz": ("warc", "empty.warc.gz", b"", 0, {"empty": 1}, {}),
    "empty jsonl": ("jsonl", "empty.jsonl", b"", 0, {"empty": 1}, {}),
    "random bytes named warc.gz": ("warc", "noise.warc.gz", bytes(range(7, 256)) * 40, 0, {}, {"not_a_warc": 1}),
}


@pytest.mark.parametrize("case", BAD_INPUTS)
def test_bad_records_are_removed_under_their_reason_and_good_ones_kept_whole(tmp_path: Path, case: str) -> None:
    fmt, name, content, kept, removed, errors = BAD_INPUTS[case]
    (tmp_path / name).write_bytes(content)
    reader = make_reader(fmt, str(tmp_path), None, {})

    docs = list(reader.run(None, 0, 1))

    assert len(docs) == kept
    assert all(GOOD in d.text for d in docs)  # whole documents: the text of a good record ends intact
    if fmt == "warc":
        assert [d.text.split(" ", 2)[1] for d in docs] == [str(i) for i in range(kept)]
        assert all(d.text.rstrip().endswith("</html>") for d in docs)
    stats = reader.stats.stats
    assert {k[len("removed_docs/"):]: v.total for k, v in stats.items() if k.startswith("removed_docs/")} == removed
    assert {k[len("errors/"):]: v.total for k, v in stats.items() if k.startswith("errors/")} == errors
    assert stats["in_docs"].total == kept + sum(removed.values())


def test_a_folder_given_as_an_input_is_refused_in_one_line(tmp_path: Path) -> None:
    with pytest.raises(Refusal) as error:
        selected_sources(curate_config(f"sources.webtext2.input={tmp_path}", "only=[webtext2]"))
    assert str(error.value) == (f"sources.webtext2.input: '{tmp_path}' is a folder; name its files, e.g. "
                                f"sources.webtext2.input='{tmp_path}/*'")


def test_text_reader_removes_bad_files_under_their_reason(tmp_path: Path) -> None:
    (tmp_path / "good.txt").write_bytes(b"\xef\xbb\xbfline one\r\nline two\r\n")
    (tmp_path / "empty.txt").write_bytes(b"  \n")
    (tmp_path / "binary.txt").write_bytes(bytes(range(256)) * 8)
    (tmp_path / "latin1.txt").write_bytes("caf\xe9 cr\xe8me".encode("latin-1"))
    (tmp_path / "huge.txt").write_bytes(b"a" * 50_000_000)

    reader = make_reader("text", str(tmp_path), None, {})
    docs = list(reader.run(None, 0, 1))

    assert [d.text for d in docs] == ["line one\nline two\n"]
    for reason in ("empty", "binary", "invalid_utf8", "too_large"):
        assert _total(reader, f"removed_docs/{reason}") == 1, reason
    assert _total(reader, "in_docs") == 5 and _total(reader, "out_docs") == 1


def test_jsonl_reader_skips_bad_lines_and_keeps_the_rest(tmp_path: Path) -> None:
    lines = [json.dumps({"text": "first", "id": "1"}).encode(), b"\xff\xfe not utf8", b"{not json",
             json.dumps({"text": "", "id": "3"}).encode(), json.dumps({"text": "last", "id": "4"}).encode()]
    with gzip.open(tmp_path / "docs.jsonl.gz", "wb") as f:
        f.write(b"\n".join(lines) + b"\n")

    reader = make_reader("jsonl", str(tmp_path), None, {})
    assert [d.text for d in reader.run(None, 0, 1)] == ["first", "last"]
    for reason in ("invalid_utf8", "invalid_json", "empty"):
        assert _total(reader, f"removed_docs/{reason}") == 1, reason


def test_accounting_balances_documents_and_characters_and_keeps_removed_text(tmp_path: Path) -> None:
    docs = [Document(text=ENGLISH + " Write to jane.doe@example.com for details.", id="long"),
            Document(text="Too short to keep.", id="short"), Document(text=ENGLISH, id="plain")]
    removed = JsonlWriter(str(tmp_path / "gopher"), output_filename="${rank}.jsonl.gz")
    gopher = AccountedStep("gopher_quality", GopherQualityFilter(exclusion_writer=removed))
    pii = AccountedStep("pii", PIIFormatter(), removed_writer=JsonlWriter(str(tmp_path / "pii")))

    kept = list(pii.run(gopher.run(iter(docs))))

    assert [d.id for d in kept] == ["long", "plain"]
    assert "jane.doe@example.com" not in kept[0].text
    for step in (gopher, pii):
        removed_docs = sum(v.total for k, v in step.stats.stats.items() if k.startswith("removed_docs/"))
        removed_chars = sum(v.total for k, v in step.stats.stats.items() if k.startswith("removed_chars/"))
        assert _total(step, "in_docs") == _total(step, "out_docs") + removed_docs
        assert _total(step, "in_chars") == _total(step, "out_chars") + removed_chars + _total(step, "edited_chars")
    assert _total(gopher, "removed_docs/gopher_short_doc") == 1
    assert [d["text"] for d in read_docs(tmp_path / "gopher")] == ["Too short to keep."]
    assert not (tmp_path / "pii").exists()  # the formatter removed nothing


@pytest.mark.parametrize(("timeout", "kept", "removed"), [
    (30.0, ["page"], {"extract": 1}),  # the blank page has no main text
    (1e-9, [], {"extract_timeout": 2}),  # a timeout is its own reason, not "no text"
])
def test_extraction_counts_a_timeout_apart_from_a_page_without_text(tmp_path: Path, timeout: float, kept: list[str],
                                                                   removed: dict[str, int]) -> None:
    page = Document(text=f"<html><body><article><p>{ENGLISH}</p></article></body></html>", id="page")
    blank = Document(text="<html><body><script>var x = 1;</script></body></html>", id="blank")
    extract = AccountedStep("extract", AccountedTrafilatura(timeout=timeout),
                            removed_writer=JsonlWriter(str(tmp_path), output_filename="${rank}.jsonl.gz"))

    out = list(extract.run(iter([page, blank]), 0, 1))

    assert [d.id for d in out] == kept
    assert {label: stat.total for label, stat in extract.stats.stats.items() if label.startswith("removed_docs/")} == {
        f"removed_docs/{reason}": n for reason, n in removed.items()}
    assert sorted(d["id"] for d in read_docs(tmp_path)) == sorted({"page", "blank"} - set(kept))


def test_gutenberg_stripper_keeps_only_the_book(sample_corpus: Path) -> None:
    raw = (sample_corpus / "books/gutenberg/pg8868_botchan.txt").read_text(encoding="utf-8-sig")
    book = GutenbergStripper().format(raw.replace("\r\n", "\n"))
    assert "gutenberg" not in book.lower() and "license" not in book.lower()
    assert book.startswith("BOTCHAN (MASTER DARLING)") and len(book) > 0.9 * len(raw) * 0.9
    austen = (sample_corpus / "books/austen/emma.txt").read_text()
    assert GutenbergStripper().format(austen) == austen


def test_priority_cluster_keeps_the_copy_from_the_best_source(tmp_path: Path) -> None:
    blocks = [("wikipedia", 1), ("books", 1), ("commoncrawl", 2)]  # ranks 0 | 1 | 2, 3
    pairs = [(2, 5, 0, 3), (3, 1, 2, 5), (1, 0, 3, 7), (2, 9, 3, 4)]  # (file, doc) pairs as stage 2 writes them
    buckets = tmp_path / "buckets"
    buckets.mkdir()
    (buckets / "000000_00.dups").write_bytes(b"".join(struct.pack("<4I", *p) for p in pairs))
    cluster = PriorityMinhashCluster(str(buckets), str(tmp_path / "clusters"), config=None, blocks=blocks)

    cluster.run()

    def removed(rank: int) -> list[int]:
        path = tmp_path / "clusters" / f"{rank:06d}.remove"
        return list(struct.unpack(f"<{path.stat().st_size // 4}I", path.read_bytes())) if path.exists() else []

    # {wiki 0/3, cc 2/5, cc 3/1} keeps wiki; {books 1/0, cc 3/7} keeps books; {cc 2/9, cc 3/4} keeps rank 2
    assert removed(0) == [] and removed(1) == [] and removed(2) == [5] and removed(3) == [1, 4, 7]
    assert cluster.stats["removed_from/commoncrawl/kept_in/wikipedia"].total == 2
    assert cluster.stats["removed_from/commoncrawl/kept_in/books"].total == 1
    assert cluster.stats["clusters"].total == 3


def test_rank_blocks_put_higher_priority_sources_first() -> None:
    sources = selected_sources(curate_config())
    blocks = rank_blocks(sources)
    assert [name for name, _ in blocks] == ["wikipedia", "webtext2", "books", "commoncrawl"]
    assert source_of_rank(blocks, sum(t for _, t in blocks) - 1)[0] == "commoncrawl"
    priority = SourcePriority({s.name: s.priority for s in sources})
    assert priority(Document("x", "1", metadata={"source": "wikipedia"})) > priority(
        Document("x", "2", metadata={"source": "commoncrawl"}))


def test_pareto_rule_is_seeded_and_favours_high_scores() -> None:
    ids = [f"doc-{i}" for i in range(20_000)]
    low = sum(keep_by_pareto(0.0, 9.0, 1, i) for i in ids)
    high = sum(keep_by_pareto(0.9, 9.0, 1, i) for i in ids)
    assert [keep_by_pareto(0.5, 9.0, 1, i) for i in ids[:200]] == [keep_by_pareto(0.5, 9.0, 1, i) for i in ids[:200]]
    assert 10 < low < 80  # P(pareto(9) > 1) = 2**-9: ~39 of 20k
    assert 0.35 * 20_000 < high < 0.50 * 20_000  # P(pareto(9) > 0.1) = 1.1**-9 = 0.42
    assert all(keep_by_pareto(1.0, 9.0, 1, i) for i in ids[:200])


def test_paragraphs_chunk_text_without_blank_lines() -> None:
    text = "\n".join(f"line {i} " + "x" * 40 for i in range(20))
    chunks = list(paragraphs(text, 200))
    assert chunks and all(len(c) >= 200 for c in chunks)
    assert "\n".join(chunks) in text


@pytest.mark.parametrize(("override", "message"), [
    ("sources.books.input=/nonexistent/*.txt", "sources.books.input: nothing at '/nonexistent/*.txt'"),
    ("sources.books.format=docx", "sources.books.format=docx is unknown"),
    ("+sources.books.steps.sharpen={}", "sources.books.steps.sharpen is not a step"),
    ("only=[nosuch]", "only: 'nosuch' is not a configured source"),
])
def test_bad_source_config_stops_with_one_line(override: str, message: str) -> None:
    with pytest.raises(Refusal) as error:
        selected_sources(curate_config(override))
    assert str(error.value).startswith(message) and "\n" not in str(error.value)
