"""datatrove's DocumentTokenizer driven by a sentencepiece model.

These live outside the `python -m curation.tokenize` entry module on purpose: datatrove's
multi-worker executor pickles pipelines with dill, which copies classes defined in `__main__` by
value, and a copied `cached_property` lock deadlocks the workers.
"""

from __future__ import annotations

from functools import cached_property
from typing import NamedTuple

import sentencepiece as spm
from datatrove.data import Document
from datatrove.pipeline.tokens import DocumentTokenizer


class _Encoding(NamedTuple):
    ids: list[int]


class SentencePieceEncoder:
    """The slice of the `tokenizers.Tokenizer` interface DocumentTokenizer calls, backed by sentencepiece.

    sentencepiece's own batch encoder is several times faster than the `tokenizers` port of a model.
    """

    def __init__(self, model_path: str, threads: int) -> None:
        self.processor = spm.SentencePieceProcessor(model_file=model_path)
        self.threads = threads

    def encode_batch(self, texts: list[str]) -> list[_Encoding]:
        ids = self.processor.encode(texts, add_eos=True, num_threads=self.threads)
        return [_Encoding(doc) for doc in ids]

    def get_vocab_size(self) -> int:
        return self.processor.vocab_size()

    def token_to_id(self, token: str) -> int:
        return self.processor.piece_to_id(token)


class SentencePieceDocumentTokenizer(DocumentTokenizer):
    """DocumentTokenizer writing sentencepiece ids, EOS after every document, documents in input order.

    No document shuffle: the mixture plan shuffles windows per epoch, so a second copy would be waste.
    """

    def __init__(self, output_folder: str, model_path: str, save_filename: str, threads: int,
                 batch_size: int) -> None:
        super().__init__(output_folder, tokenizer_name_or_path=model_path, save_filename=save_filename,
                         batch_size=batch_size, shuffle_documents=False, save_final_metadata=False)
        self.threads = threads

    @cached_property
    def tokenizer(self) -> SentencePieceEncoder:  # type: ignore[override]
        return SentencePieceEncoder(self.tokenizer_name_or_path, self.threads)


def id_in(document: Document, ids: frozenset[str], keep: bool) -> bool:
    """LambdaFilter predicate: keep documents whose id is (keep=True) or is not (keep=False) in ids."""
    return (document.id in ids) == keep
