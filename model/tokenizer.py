"""Text <-> ids with the tokenizer that travels with a model or a data root.

Two kinds, told apart by their files: a sentencepiece model (`tokenizer.model` beside a saved model,
`spm.model` in a data root), or a byte-level BPE such as GPT-2's released one (`vocab.json` +
`merges.txt`, with the `tokenizer.json` the `tokenizers` library builds from them). An HF directory's
`tokenizer.json` of any other kind loads too, for generation.
"""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Protocol

import numpy as np
import sentencepiece
from tokenizers import Tokenizer, decoders

from data_contract.tokenizer_files import (
    BPE_TOKENIZER_JSON,
    GPT2_EOS,
    SAVED_SPM_MODEL,
    TOKENIZER_FILES_WANTED,
    TokenizerFiles,
    byte_level_bpe,
    tokenizer_files,
)


class TextTokenizer(Protocol):
    eos_id: int | None
    vocab_size: int

    def encode(self, text: str) -> list[int]: ...

    def decode(self, ids: list[int]) -> str: ...

    def token_byte_lengths(self) -> np.ndarray: ...


class SentencePieceTokenizer:
    def __init__(self, path: str | Path) -> None:
        self.processor = sentencepiece.SentencePieceProcessor(model_file=str(path))
        eos = self.processor.eos_id()
        self.eos_id = eos if eos >= 0 else None
        self.vocab_size = self.processor.get_piece_size()

    def encode(self, text: str) -> list[int]:
        return self.processor.encode(text)

    def decode(self, ids: list[int]) -> str:
        return self.processor.decode(ids)

    def token_byte_lengths(self) -> np.ndarray:
        """UTF-8 bytes each id decodes to: byte-fallback pieces one, control pieces none."""
        lengths = np.zeros(self.vocab_size, dtype=np.int64)
        for token_id in range(self.vocab_size):
            if self.processor.is_control(token_id) or self.processor.is_unknown(token_id):
                continue
            if self.processor.is_byte(token_id):
                lengths[token_id] = 1
            else:
                lengths[token_id] = len(self.processor.id_to_piece(token_id).replace("\u2581", " ").encode("utf-8"))
        return lengths


class HFTokenizer:
    """A `tokenizers` tokenizer. `eos_id`: given, or GPT-2's `<|endoftext|>` when the vocabulary has it."""

    def __init__(self, tokenizer: Tokenizer, eos_id: int | None = None) -> None:
        self.tokenizer = tokenizer
        self.eos_id = eos_id if eos_id is not None else tokenizer.token_to_id(GPT2_EOS)
        self.vocab_size = tokenizer.get_vocab_size()

    def encode(self, text: str) -> list[int]:
        return self.tokenizer.encode(text).ids

    def decode(self, ids: list[int]) -> str:
        return self.tokenizer.decode(ids)

    def token_byte_lengths(self) -> np.ndarray:
        """Byte-level BPE writes every byte as one character of its alphabet, so a token's byte length
        is its length in characters; added special tokens decode to nothing."""
        if not isinstance(self.tokenizer.decoder, decoders.ByteLevel):
            raise ValueError("bits per byte need a sentencepiece or a byte-level BPE tokenizer")
        lengths = np.zeros(self.vocab_size, dtype=np.int64)
        special = {token.content for token in self.tokenizer.get_added_tokens_decoder().values() if token.special}
        for token, token_id in self.tokenizer.get_vocab(with_added_tokens=True).items():
            if token not in special:
                lengths[token_id] = len(token)
        return lengths


def sentencepiece_file(path: Path) -> Path | None:
    """The sentencepiece model `path` is or holds, if any."""
    if path.is_file():
        return path if path.suffix == ".model" else None
    found = tokenizer_files(path)
    return found.sentencepiece if found is not None else None


def load_tokenizer(path: str | Path, eos_id: int | None = None) -> TextTokenizer:
    """A sentencepiece `.model` file, a `tokenizer.json`, or a folder holding one of them or `vocab.json` +
    `merges.txt`. `eos_id` applies to the HF formats, whose files may not name it."""
    path = Path(path)
    if path.is_file():
        if path.suffix == ".model":
            return SentencePieceTokenizer(path)
        return HFTokenizer(Tokenizer.from_file(str(path)), eos_id)
    found = tokenizer_files(path)
    if found is None:
        raise ValueError(f"{path}: no tokenizer found ({TOKENIZER_FILES_WANTED}); pass tokenizer=PATH")
    if found.sentencepiece is not None:
        return SentencePieceTokenizer(found.sentencepiece)
    if found.tokenizer_json is not None:
        return HFTokenizer(Tokenizer.from_file(str(found.tokenizer_json)), eos_id)
    return HFTokenizer(byte_level_bpe(path), eos_id)


def has_tokenizer(folder: str | Path) -> bool:
    return tokenizer_files(Path(folder)) is not None


def copy_tokenizer(source: str | Path, directory: str | Path) -> None:
    """Put the tokenizer of `source` (a sentencepiece file, or a folder holding either kind) in `directory`,
    as a saved model carries it: `tokenizer.model`, or the HF files (`tokenizer.json`, and GPT-2's
    `vocab.json` + `merges.txt` where the source has them)."""
    source, directory = Path(source), Path(directory)
    found = TokenizerFiles(sentencepiece=sentencepiece_file(source)) if source.is_file() else tokenizer_files(source)
    if found is None or not found.files():
        raise ValueError(f"{source}: no tokenizer to save with the model ({TOKENIZER_FILES_WANTED})")
    if found.sentencepiece is not None:
        shutil.copyfile(found.sentencepiece, directory / SAVED_SPM_MODEL)
        return
    for file in found.files():
        shutil.copyfile(file, directory / file.name)
    if not (source / BPE_TOKENIZER_JSON).is_file():
        byte_level_bpe(source).save(str(directory / BPE_TOKENIZER_JSON))
