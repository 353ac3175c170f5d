"""The tokenizer's files in a folder (a data root's tokenizer/ or a saved model), their names, and the
tokenizer's identity: the one place that knows which files make a tokenizer."""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from data_contract.atomic_files import sha256_file
from data_contract.refusal import Refusal

TOKENIZER_MODEL = "spm.model"
SAVED_SPM_MODEL = "tokenizer.model"  # a sentencepiece model as saved beside a model's weights
BPE_VOCAB, BPE_MERGES, BPE_TOKENIZER_JSON = "vocab.json", "merges.txt", "tokenizer.json"
GPT2_EOS = "<|endoftext|>"


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
