"""Train the sentencepiece tokenizer on a sample of the curated sources, drawn in mixture proportions.

`python -m curation.train_tokenizer [overrides]` writes `${paths.data_root}/tokenizer/spm.model` and a
`manifest.json` with the model's sha256, the fixed special ids and bytes per token per source.

The model is lossless by construction: identity normalization, whitespace kept as is (no dummy
prefix, no collapsing), byte fallback for any character outside the vocabulary, and a dedicated
newline piece (sentencepiece trains on lines, so "\\n" would otherwise cost a byte token). The one
exception sentencepiece imposes: a literal U+2581 in the text decodes as a space.
"""

from __future__ import annotations

import io
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import hydra
import sentencepiece as spm
from datatrove.pipeline.readers import JsonlReader
from omegaconf import DictConfig, OmegaConf

from curation.sources import CURATED_GLOB, curated_reader, normalized_weights
from data_contract import (
    TOKENIZER_MODEL,
    DataLayout,
    Refusal,
    sha256_file,
    token_dtype,
    write_atomic,
    write_manifest,
)

SPECIAL_IDS = {"unk_id": 0, "bos_id": 1, "eos_id": 2, "pad_id": 3}


def sample_source(reader: JsonlReader, budget: int) -> tuple[list[str], list[str]]:
    """Up to `budget` UTF-8 bytes of documents, spread over all of the source's files in name order.

    Each file gets an equal part of what is left, so the sample spans every curation task's output
    without reading more of any file than it uses. Returns (documents, files read).
    """
    files = sorted(reader.data_folder.list_files(glob_pattern=CURATED_GLOB, recursive=False))
    texts: list[str] = []
    used = 0
    for position, path in enumerate(files):
        file_budget = (budget - used) / (len(files) - position)
        taken = 0
        for document in reader.read_file(path):
            if taken >= file_budget:
                break
            texts.append(document.text)
            taken += len(document.text.encode())
        used += taken
    return texts, files


def _lines(samples: dict[str, list[str]]) -> Iterator[str]:
    for texts in samples.values():
        for text in texts:
            yield from (line for line in text.split("\n") if line)


def _train(samples: dict[str, list[str]], cfg: DictConfig, total_bytes: int) -> bytes:
    model = io.BytesIO()
    try:
        spm.SentencePieceTrainer.train(
            sentence_iterator=_lines(samples), model_writer=model,
            vocab_size=cfg.vocab_size, model_type=cfg.model_type,
            character_coverage=cfg.character_coverage, max_sentence_length=cfg.max_sentence_length,
            num_threads=cfg.threads or os.cpu_count(), input_sentence_size=0,
            normalization_rule_name="identity", remove_extra_whitespaces=False, add_dummy_prefix=False,
            byte_fallback=True, allow_whitespace_only_pieces=True, user_defined_symbols=["\n"],
            minloglevel=2, **SPECIAL_IDS,
        )
    except RuntimeError as err:
        reason = str(err).strip().splitlines()[-1].split("] ")[-1]
        raise Refusal(f"tokenizer.vocab_size={cfg.vocab_size}: sentencepiece refused it for a {total_bytes}-byte "
                       f"sample ({reason}); change tokenizer.vocab_size or tokenizer.sample_bytes") from err
    return model.getvalue()


def train_tokenizer(cfg: DictConfig) -> Path:
    """Sample, train, measure, write; returns the model path."""
    layout = DataLayout(Path(cfg.paths.data_root))
    settings = cfg.tokenizer
    token_dtype(settings.vocab_size)  # refuse a vocabulary no token file could hold, before any work
    weights = normalized_weights({name: spec.weight for name, spec in cfg.mixture.sources.items()},
                                 f"mixture {cfg.mixture.name}")
    weights = {name: weight for name, weight in weights.items() if weight > 0}
    readers = {name: curated_reader(layout, name) for name in weights}

    samples: dict[str, list[str]] = {}
    inputs: list[dict[str, str]] = []
    for name, reader in readers.items():
        samples[name], files = sample_source(reader, int(weights[name] * settings.sample_bytes))
        inputs += [{"path": f"curated/{name}/{f}", "sha256": sha256_file(Path(reader.data_folder.path) / f)}
                   for f in files]
    sample_bytes = {name: sum(len(t.encode()) for t in texts) for name, texts in samples.items()}

    model = _train(samples, settings, sum(sample_bytes.values()))
    processor = spm.SentencePieceProcessor(model_proto=model)
    threads = settings.threads or os.cpu_count()
    sample_tokens = {name: sum(map(len, processor.encode(texts, num_threads=threads)))
                     for name, texts in samples.items()}

    model_path = layout.tokenizer_model
    write_atomic(model_path, model)
    description: dict[str, Any] = {
        "model": TOKENIZER_MODEL,
        "sha256": sha256_file(model_path),
        "model_type": settings.model_type,
        "vocab_size": processor.vocab_size(),
        **SPECIAL_IDS,
        "normalization": "identity",
        "byte_fallback": True,
        # measured on the training sample of each source
        "bytes_per_token": {name: sample_bytes[name] / max(1, sample_tokens[name]) for name in samples},
        "sample": {name: {"documents": len(samples[name]), "bytes": sample_bytes[name],
                          "tokens": sample_tokens[name]} for name in samples},
    }
    write_manifest(layout.tokenizer, inputs=inputs, outputs={TOKENIZER_MODEL: description["sha256"]},
                   config={"tokenizer": OmegaConf.to_container(settings, resolve=True),
                           "mixture": OmegaConf.to_container(cfg.mixture, resolve=True)}, **description)
    width = max(map(len, samples))
    for name in samples:
        print(f"{name:<{width}}  {sample_bytes[name]:>12,} bytes  {description['bytes_per_token'][name]:.3f} bytes/token")
    print(f"tokenizer: {model_path} (vocab {description['vocab_size']}, sha256 {description['sha256'][:12]})")
    return model_path


@hydra.main(version_base="1.3", config_path="../conf", config_name="curate")
def main(cfg: DictConfig) -> None:
    train_tokenizer(cfg)


if __name__ == "__main__":
    main()
