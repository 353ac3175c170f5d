"""The data root's tokenizer: a sentencepiece model trained on a sample of the curated sources, drawn in
mixture proportions, or (`tokenizer=gpt2`) GPT-2's released byte-level BPE, installed as released.

`python -m curation.train_tokenizer [overrides]` writes `${paths.data_root}/tokenizer/spm.model` (or
GPT-2's `vocab.json`, `merges.txt` and the `tokenizer.json` built from them) and a `manifest.json`
with the tokenizer's identity (data_contract.tokenizer_files.tokenizer_identity), its special ids and the bytes per
token measured on each source's sample.

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

from curation.assets import ensure_gpt2_bpe
from curation.sources import CURATED_GLOB, curated_reader, normalized_weights
from data_contract.atomic_files import sha256_file, write_atomic
from data_contract.layout import DataLayout
from data_contract.manifest import MANIFEST, write_manifest
from data_contract.refusal import Refusal
from data_contract.token_files import token_dtype
from data_contract.tokenizer_files import (
    BPE_MERGES,
    BPE_TOKENIZER_JSON,
    BPE_VOCAB,
    GPT2_EOS,
    TOKENIZER_MODEL,
    byte_level_bpe,
    tokenizer_identity,
)

SPECIAL_IDS = {"unk_id": 0, "bos_id": 1, "eos_id": 2, "pad_id": 3}
KINDS = ("sentencepiece", "gpt2")


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


def _install_gpt2(released: Path, folder: Path) -> tuple[Any, dict[str, Any]]:
    """GPT-2's released files into `folder`, and `tokenizer.json` built from them; returns the tokenizer
    and its description."""
    for name in (BPE_VOCAB, BPE_MERGES):
        write_atomic(folder / name, (released / name).read_bytes())
    tokenizer = byte_level_bpe(folder)
    write_atomic(folder / BPE_TOKENIZER_JSON, tokenizer.to_str())
    eos_id = tokenizer.token_to_id(GPT2_EOS)
    return tokenizer, {"model": BPE_TOKENIZER_JSON, "kind": "gpt2", "vocab_size": tokenizer.get_vocab_size(),
                       "eos_id": eos_id, "bos_id": eos_id, "unk_id": -1, "pad_id": -1, "normalization": "none",
                       "byte_level": True}


def train_tokenizer(cfg: DictConfig) -> Path:
    """Sample, train (or install GPT-2's), measure, write; returns the tokenizer folder."""
    layout = DataLayout(Path(cfg.paths.data_root))
    settings = cfg.tokenizer
    kind = settings.get("kind", "sentencepiece")
    if kind not in KINDS:
        raise Refusal(f"tokenizer.kind={kind!r} is not one of {', '.join(KINDS)}; pick tokenizer=default or tokenizer=gpt2")
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

    released = ensure_gpt2_bpe() if kind == "gpt2" else None
    model = _train(samples, settings, sum(sample_bytes.values())) if released is None else b""
    layout.tokenizer.mkdir(parents=True, exist_ok=True)  # only now: a refusal above leaves nothing behind
    for name in (TOKENIZER_MODEL, BPE_VOCAB, BPE_MERGES, BPE_TOKENIZER_JSON):  # the other kind's files are stale
        (layout.tokenizer / name).unlink(missing_ok=True)
    if released is not None:
        bpe, description = _install_gpt2(released, layout.tokenizer)
        sample_tokens = {name: sum(len(e.ids) for e in bpe.encode_batch(texts)) for name, texts in samples.items()}
    else:
        processor = spm.SentencePieceProcessor(model_proto=model)
        threads = settings.threads or os.cpu_count()
        sample_tokens = {name: sum(map(len, processor.encode(texts, num_threads=threads)))
                         for name, texts in samples.items()}
        write_atomic(layout.tokenizer_model, model)
        description = {"model": TOKENIZER_MODEL, "kind": kind, "model_type": settings.model_type,
                       "vocab_size": processor.vocab_size(), **SPECIAL_IDS, "normalization": "identity",
                       "byte_fallback": True}
    description["sha256"] = tokenizer_identity(layout.tokenizer)
    # measured on the sample of each source
    description["bytes_per_token"] = {name: sample_bytes[name] / max(1, sample_tokens[name]) for name in samples}
    description["sample"] = {name: {"documents": len(samples[name]), "bytes": sample_bytes[name],
                                    "tokens": sample_tokens[name]} for name in samples}
    outputs = {path.name: sha256_file(path) for path in sorted(layout.tokenizer.iterdir()) if path.name != MANIFEST}
    write_manifest(layout.tokenizer, inputs=inputs, outputs=outputs,
                   config={"tokenizer": OmegaConf.to_container(settings, resolve=True),
                           "mixture": OmegaConf.to_container(cfg.mixture, resolve=True)}, **description)
    width = max(map(len, samples))
    for name in samples:
        print(f"{name:<{width}}  {sample_bytes[name]:>12,} bytes  {description['bytes_per_token'][name]:.3f} bytes/token")
    print(f"tokenizer: {layout.tokenizer} ({kind}, vocab {description['vocab_size']}, "
          f"sha256 {description['sha256'][:12]})")
    return layout.tokenizer


@hydra.main(version_base="1.3", config_path="../conf", config_name="curate")
def main(cfg: DictConfig) -> None:
    train_tokenizer(cfg)


if __name__ == "__main__":
    main()
