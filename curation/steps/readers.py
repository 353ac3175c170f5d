"""Readers that survive bad input: every record is counted as kept or removed under a reason.

datatrove's readers drop undecodable or empty records silently and let a truncated archive end
the task. A curation run over millions of crawl files must go on instead, keep the valid
documents of a damaged file, and say how much it removed and why (see `curation.steps.accounting`).
"""

from __future__ import annotations

import json
import zlib
from collections.abc import Iterator
from gzip import BadGzipFile
from typing import NamedTuple

from datatrove.data import Document, DocumentsPipeline
from datatrove.pipeline.readers import HuggingFaceDatasetReader, JsonlReader, ParquetReader, WarcReader
from datatrove.pipeline.readers.base import BaseDiskReader
from datatrove.utils.logging import logger

from curation.steps.accounting import (
    ERRORS,
    IN_CHARS,
    IN_DOCS,
    OUT_CHARS,
    OUT_DOCS,
    count_kept,
    count_removed,
)

HTML_TYPES = ("text/html", "application/xhtml+xml")
GZIP_MAGIC = b"\x1f\x8b"
SNIFF_BYTES = 8192


class NotAWarc(Exception):
    """A file given as WARC whose first record cannot be parsed: not a damaged WARC, not a WARC at all."""


class Removed(NamedTuple):
    """A record that is not a usable document, with the reason and its size (characters, or bytes if undecodable)."""

    reason: str
    chars: int


def error_reason(error: Exception) -> str:
    """The stats label of an error that ends the reading of one file."""
    from warcio.exceptions import ArchiveLoadFailed

    if isinstance(error, NotAWarc):
        return "not_a_warc"
    if isinstance(error, (EOFError, zlib.error, BadGzipFile)):
        return "truncated_gzip"
    if isinstance(error, ArchiveLoadFailed):
        return "corrupt_warc"
    if isinstance(error, UnicodeDecodeError):
        return "invalid_utf8"
    if isinstance(error, json.JSONDecodeError):
        return "invalid_json"
    return f"unreadable_{type(error).__name__}"


class AccountedReader(BaseDiskReader):
    """Counts every record; an error inside a file is counted and ends only that file.

    Subclasses implement `read_records`, yielding Documents or `Removed` markers (counted under their reason).
    """

    max_doc_chars: int = 10_000_000

    def read_records(self, filepath: str) -> Iterator[Document | Removed]:
        raise NotImplementedError

    def read_file(self, filepath: str) -> DocumentsPipeline:
        records = 0
        try:
            for records, record in enumerate(self.read_records(filepath), start=1):  # noqa: B007
                if isinstance(record, Document) and len(record.text) > self.max_doc_chars:
                    record = Removed("too_large", len(record.text))
                if isinstance(record, Removed):
                    self.stat_update(IN_DOCS)
                    self.stat_update(IN_CHARS, value=record.chars)
                    count_removed(self, record.reason, record.chars)
                    continue
                chars = len(record.text)
                yield record
                # counted once taken (a reader `limit` closes this generator at the yield), with the
                # size it had here: later steps may already have rewritten the text
                self.stat_update(IN_DOCS, OUT_DOCS)
                self.stat_update(IN_CHARS, OUT_CHARS, value=chars)
        except Exception as error:  # bad input must not end the task: count it and go to the next file
            reason = error_reason(error)
            self.stat_update(ERRORS + reason)
            logger.warning(f"{filepath}: {reason} ({error}); kept the documents read before it, next file")
            return
        if not records:  # a file with nothing in it is counted, as an empty text file is
            self.stat_update(IN_DOCS)
            count_removed(self, "empty", 0)

    def document(self, data: dict, filepath: str, index: int | str) -> Document | Removed:
        """datatrove's dict-to-Document adaptation; a record without usable text is counted under why."""
        text = data.get(self.text_key)
        if text is None:
            return Removed("no_text", 0)
        if not isinstance(text, str):  # a number, list or object where the text should be
            return Removed("text_not_a_string", len(json.dumps(text, default=str)))
        document = self.get_document_from_dict(data, filepath, index)
        return document if document else Removed("empty", 0)


def decode_text(payload: bytes, declared_charset: str | None = None) -> str | None:
    """UTF-8 first, then the declared charset, then a detected one; None when nothing decodes."""
    import cchardet

    for charset in ("utf-8", declared_charset, cchardet.detect(payload[:65536])["encoding"]):
        if charset:
            try:
                return payload.decode(charset)
            except (UnicodeDecodeError, LookupError):
                continue
    return None


class AccountedWarcReader(AccountedReader, WarcReader):
    """WARC/WET records -> documents with `url` and the crawl `date` in metadata."""

    def read_records(self, filepath: str) -> Iterator[Document | Removed]:
        """warcio reads gzip itself (member by member), so the records before a damaged member survive."""
        from warcio.archiveiterator import ArchiveIterator

        native_gzip = filepath.endswith(".gz") and self.compression in ("infer", "gzip")
        with self.data_folder.open(filepath, "rb", compression=None if native_gzip else self.compression) as f:
            gzipped = native_gzip and f.read(2) == GZIP_MAGIC
            f.seek(0)
            index = -1
            try:
                for index, record in enumerate(ArchiveIterator(f)):
                    with self.track_time():
                        yield self._from_record(record, filepath, index)
            except Exception as error:
                if gzipped and not self._gzip_complete(filepath):
                    raise EOFError("gzip stream ends inside a member") from error
                if index < 0:
                    raise NotAWarc(f"no WARC record at its start ({error})") from error
                raise
        if gzipped and not self._gzip_complete(filepath):  # warcio ends quietly on some truncations
            raise EOFError("gzip stream ends inside a member")

    def _gzip_complete(self, filepath: str) -> bool:
        """Whether every gzip member of the file ends with its end-of-stream marker."""
        with self.data_folder.open(filepath, "rb", compression=None) as f:
            member, in_member = zlib.decompressobj(31), False
            for chunk in iter(lambda: f.read(1 << 20), b""):
                while chunk:
                    try:
                        member.decompress(chunk)
                    except zlib.error:
                        return False
                    in_member = not member.eof
                    chunk = member.unused_data if member.eof else b""
                    if member.eof:
                        member = zlib.decompressobj(31)
            return not in_member

    def _from_record(self, record, filepath: str, index: int) -> Document | Removed:
        if record.rec_type not in ("response", "conversion"):  # WET text comes as "conversion"
            return Removed(f"not_a_response_{record.rec_type}", 0)
        payload = record.content_stream().read()
        if getattr(record.raw_stream, "limit", 0) > 0:  # the file ended before the record's Content-Length
            return Removed("truncated_record", len(payload))
        if not payload.strip():
            return Removed("empty", 0)
        if len(payload) > self.max_doc_chars:
            return Removed("too_large", len(payload))
        content_type = record.rec_headers.get_header("WARC-Identified-Payload-Type") or (
            record.http_headers.get_header("Content-Type", "") if record.http_headers else ""
        )
        mime, _, params = content_type.partition(";")
        mime = mime.strip().lower()
        if record.rec_type == "response" and mime and mime not in HTML_TYPES:
            return Removed("not_html", len(payload))
        if b"\x00" in payload[:SNIFF_BYTES]:
            return Removed("binary", len(payload))
        charset = params.partition("charset=")[2].strip().strip("\"'") or None
        text = decode_text(payload, charset)
        if text is None:
            return Removed("invalid_encoding", len(payload))
        headers = record.rec_headers
        return self.document(
            {"text": text, "id": headers.get_header("WARC-Record-ID"),
             "url": headers.get_header("WARC-Target-URI"), "date": headers.get_header("WARC-Date")},
            filepath, index,
        )


class TextFilesReader(AccountedReader):
    """Plain text files, one document per file: UTF-8 (BOM dropped), line ends normalized to \\n."""

    name = "📄 Text files"

    def read_records(self, filepath: str) -> Iterator[Document | Removed]:
        with self.data_folder.open(filepath, "rb") as f:
            payload = f.read(self.max_doc_chars * 4 + 1)  # UTF-8 needs at most 4 bytes per character
        if not payload.strip():
            yield Removed("empty", 0)
        elif b"\x00" in payload[:SNIFF_BYTES]:
            yield Removed("binary", len(payload))
        elif len(payload) > self.max_doc_chars * 4:
            yield Removed("too_large", len(payload))
        else:
            try:
                text = payload.decode("utf-8-sig")
            except UnicodeDecodeError:
                yield Removed("invalid_utf8", len(payload))
                return
            text = text.replace("\r\n", "\n").replace("\r", "\n")
            yield self.document({"text": text, "id": filepath}, filepath, 0)


class AccountedJsonlReader(AccountedReader, JsonlReader):
    """JSON lines; a line that is not UTF-8 or not JSON is counted as removed, the rest of the file read."""

    def read_records(self, filepath: str) -> Iterator[Document | Removed]:
        import orjson

        with self.data_folder.open(filepath, "rb", compression=self.compression) as f:
            for index, line in enumerate(f):
                if not line.strip():
                    continue
                try:
                    data = orjson.loads(line)
                except orjson.JSONDecodeError:
                    try:
                        line.decode("utf-8")
                    except UnicodeDecodeError:
                        yield Removed("invalid_utf8", len(line))
                        continue
                    yield Removed("invalid_json", len(line))
                    continue
                yield self.document(data, filepath, index) if isinstance(data, dict) else Removed("not_an_object", len(line))


class JsonRecordsReader(AccountedReader):
    """One JSON document holding records: a list of objects, or an object whose values are objects.

    For an object, a record without `id_key` takes its key as id (e.g. Wikipedia titles).
    """

    name = "🗂 JSON records"

    def read_records(self, filepath: str) -> Iterator[Document | Removed]:
        with self.data_folder.open(filepath, "rb") as f:
            data = json.loads(f.read())
        items = data.items() if isinstance(data, dict) else enumerate(data)
        for key, record in items:
            if not isinstance(record, dict):
                yield Removed("not_an_object", len(str(record)))
                continue
            record = dict(record)
            record.setdefault(self.id_key, str(key))
            yield self.document(record, filepath, key)


class AccountedParquetReader(AccountedReader, ParquetReader):
    """Parquet rows in batches, as datatrove reads them; a row without text is counted as removed."""

    def read_records(self, filepath: str) -> Iterator[Document | Removed]:
        import pyarrow.parquet as pq

        with self.data_folder.open(filepath, "rb") as f, pq.ParquetFile(f) as parquet:
            columns = None if self.read_metadata else [self.text_key, self.id_key]
            index = 0
            for batch in parquet.iter_batches(batch_size=self.batch_size, columns=columns):
                for row in batch.to_pylist():
                    yield self.document(row, filepath, index)
                    index += 1


class AccountedHFReader(HuggingFaceDatasetReader):
    """datatrove's `datasets` reader (a dataset saved with `save_to_disk`), with its documents counted."""

    def run(self, data: DocumentsPipeline = None, rank: int = 0, world_size: int = 1) -> DocumentsPipeline:
        for doc in super().run(data, rank, world_size):
            self.stat_update(IN_DOCS)
            self.stat_update(IN_CHARS, value=len(doc.text))
            count_kept(self, doc)
            yield doc


DISK_READERS: dict[str, type[AccountedReader]] = {
    "warc": AccountedWarcReader,
    "wet": AccountedWarcReader,
    "jsonl": AccountedJsonlReader,
    "parquet": AccountedParquetReader,
    "text": TextFilesReader,
    "json": JsonRecordsReader,
}
FORMATS = (*DISK_READERS, "hf")


def make_reader(fmt: str, data_folder: str, paths_file: str | None, options: dict) -> BaseDiskReader | AccountedHFReader:
    """The reader of a source `format`; `options` are the source's `reader:` settings."""
    options = dict(options)
    max_doc_chars = options.pop("max_doc_chars", AccountedReader.max_doc_chars)
    if fmt == "hf":
        reader = AccountedHFReader(data_folder, load_from_disk=True, **options)
    else:
        reader = DISK_READERS[fmt](data_folder, paths_file=paths_file, **options)
        reader.max_doc_chars = max_doc_chars
    reader.stats.name = "read"
    return reader


class StageReader(JsonlReader):
    """The documents an earlier stage wrote under `folder` (none if it kept none and never created it)."""

    def __init__(self, folder: str, glob_pattern: str = "*.jsonl.gz"):
        super().__init__(folder, glob_pattern=glob_pattern, add_file_path=False)

    def run(self, data: DocumentsPipeline = None, rank: int = 0, world_size: int = 1) -> DocumentsPipeline:
        if self.data_folder.isdir("") and self.data_folder.list_files(glob_pattern=self.glob_pattern):
            yield from super().run(data, rank, world_size)
