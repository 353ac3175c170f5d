"""Text <-> ids for generation: a sentencepiece model, or the tokenizer files of an HF directory."""

from __future__ import annotations

from pathlib import Path
from typing import Protocol

import sentencepiece
from tokenizers import Tokenizer
from tokenizers.implementations import ByteLevelBPETokenizer


class TextTokenizer(Protocol):
    eos_id: int | None

    def encode(self, text: str) -> list[int]: ...

    def decode(self, ids: list[int]) -> str: ...


class SentencePieceTokenizer:
    def __init__(self, path: str | Path) -> None:
        self.processor = sentencepiece.SentencePieceProcessor(model_file=str(path))
        eos = self.processor.eos_id()
        self.eos_id = eos if eos >= 0 else None

    def encode(self, text: str) -> list[int]:
        return self.processor.encode(text)

    def decode(self, ids: list[int]) -> str:
        return self.processor.decode(ids)


class HFTokenizer:
    """A `tokenizers` tokenizer; `eos_id` comes from the model's config, which is where HF keeps it."""

    def __init__(self, tokenizer: Tokenizer | ByteLevelBPETokenizer, eos_id: int | None) -> None:
        self.tokenizer = tokenizer
        self.eos_id = eos_id

    def encode(self, text: str) -> list[int]:
        return self.tokenizer.encode(text).ids

    def decode(self, ids: list[int]) -> str:
        return self.tokenizer.decode(ids)


def load_tokenizer(path: str | Path, eos_id: int | None = None) -> TextTokenizer:
    """A `.model` file (sentencepiece), a `tokenizer.json`, or a directory holding either or GPT-2's
    `vocab.json` + `merges.txt`. `eos_id` applies to the HF formats, whose files do not name it."""
    path = Path(path)
    candidates = [path] if path.is_file() else [path / "tokenizer.model", path / "tokenizer.json"]
    for candidate in candidates:
        if candidate.is_file() and candidate.suffix == ".model":
            return SentencePieceTokenizer(candidate)
        if candidate.is_file() and candidate.suffix == ".json":
            return HFTokenizer(Tokenizer.from_file(str(candidate)), eos_id)
    if (path / "vocab.json").is_file() and (path / "merges.txt").is_file():
        return HFTokenizer(ByteLevelBPETokenizer(str(path / "vocab.json"), str(path / "merges.txt")), eos_id)
    raise ValueError(
        f"{path}: no tokenizer found (a sentencepiece .model, a tokenizer.json, or vocab.json + merges.txt); "
        "pass tokenizer=PATH"
    )
