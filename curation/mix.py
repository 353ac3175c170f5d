"""Plan the training order of a quality-weighted mixture over the sources' token files.

    python -m curation.mix mixture=gpt3 mix_plan.tokens=300e9 mix_plan.seq_len=2048 mix_plan.seed=1234

Writes `${paths.data_root}/mix/<mixture>/`: `plan_source.npy` (the source's index in
mixture.json's `sources` per sample), `plan_sample.npy` (int64 window index within that source)
and `mixture.json` + `manifest.json`. A source's stream is its training token files concatenated in
`token_files` order; window w is stream tokens [w*L, w*L + L + 1), so a source of T tokens offers
(T - 1) // L windows and a sample costs L tokens of the budget. Each source gets `weight x budget`
tokens: fewer available means several epochs, each in its own seeded order; more means a subsample.

`mix_plan.plan_only=true` plans from `mix_plan.source_tokens` (token counts per source) without any token
file, which is how the 300B-token GPT-3 plan is checked on one machine.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, BinaryIO

import hydra
import numpy as np
from omegaconf import DictConfig, OmegaConf

from curation.mixture_order import (
    MAX_SAMPLES,
    allocate_samples,
    drift_bounds,
    interleave,
    window_indices,
)
from curation.sources import normalized_weights
from data_contract.atomic_files import replace_folder, sha256_file, staging_folder
from data_contract.layout import DataLayout
from data_contract.manifest import MANIFEST, write_manifest
from data_contract.mixture_spec import MIXTURE_SPEC, PLAN_SAMPLE, PLAN_SOURCE, write_mixture_spec
from data_contract.refusal import Refusal
from data_contract.token_files import load_source_tokens

NO_CAP = np.iinfo(np.int64).max


def _positive_int(value: Any, key: str) -> int:
    """An integer setting that may be written as a float literal (`mix_plan.tokens=300e9`)."""
    if isinstance(value, bool) or not isinstance(value, int | float) or value != int(value) or value <= 0:
        raise Refusal(f"{key}={value!r} must be a positive whole number")
    return int(value)


def _source_inputs(cfg: DictConfig, names: list[str], seq_len: int) -> list[dict[str, Any]]:
    """Per source: available tokens and, unless planning from counts, its token files' manifest."""
    layout = DataLayout(Path(cfg.paths.data_root))
    sources = []
    for name in names:
        if cfg.mix_plan.plan_only:
            counts = cfg.mix_plan.source_tokens or {}
            if name not in counts:
                raise Refusal(f"mix_plan.plan_only=true needs mix_plan.source_tokens.{name} (token count of '{name}')")
            sources.append({"name": name, "tokens": _positive_int(counts[name], f"mix_plan.source_tokens.{name}"),
                            "manifest": None})
        else:
            manifest = load_source_tokens(layout, name)
            sources.append({"name": name, "tokens": manifest["tokens"], "manifest": manifest})
    for source in sources:
        if source["tokens"] < seq_len + 1:
            raise Refusal(f"mix_plan.seq_len={seq_len} needs {seq_len + 1} tokens per window but source "
                           f"'{source['name']}' has {source['tokens']}; lower mix_plan.seq_len or drop the source")
    if not cfg.mix_plan.plan_only:
        shas = {s["manifest"]["tokenizer_sha256"] for s in sources}
        dtypes = {s["manifest"]["dtype"] for s in sources}
        if len(shas) > 1 or len(dtypes) > 1:
            raise Refusal(f"token files of {names} come from different tokenizers ({sorted(shas)}): "
                           f"rerun `python -m curation.tokenize` for all of them")
    return sources


def _cap(mixture: DictConfig, name: str, windows: int) -> int:
    """Most samples a source may give: `max_epochs` passes over its windows, unbounded when absent."""
    max_epochs = mixture.sources[name].get("max_epochs")
    if max_epochs is None:
        return NO_CAP
    if isinstance(max_epochs, bool) or not isinstance(max_epochs, int | float) or not max_epochs > 0:
        raise Refusal(f"conf/mixture/{mixture.name}.yaml: sources.{name}.max_epochs={max_epochs!r} "
                       f"must be a number > 0 (or left out for no cap)")
    return math.floor(max_epochs * windows)


@contextmanager
def _npy_writer(path: Path, dtype: np.dtype, length: int) -> Iterator[BinaryIO]:
    """An .npy file opened for its data to be appended chunk by chunk (memory stays one chunk)."""
    with open(path, "wb") as handle:
        header = {"descr": np.lib.format.dtype_to_descr(dtype), "fortran_order": False, "shape": (length,)}
        np.lib.format.write_array_header_1_0(handle, header)
        yield handle


def _write_plan(out: Path, counts: np.ndarray, windows: np.ndarray, names: list[str], seed: int,
                chunk: int, source_dtype: np.dtype) -> dict[str, float]:
    """Write plan_source.npy and plan_sample.npy; return the order's worst prefix drift beside Megatron's."""
    total = int(counts.sum())
    bound, greedy = drift_bounds(counts, chunk)
    with _npy_writer(out / PLAN_SOURCE, source_dtype, total) as plan_source, \
            _npy_writer(out / PLAN_SAMPLE, np.dtype("<i8"), total) as plan_sample:
        for _, sources, samples in interleave(counts, chunk, bound):
            for i in np.unique(sources):
                here = sources == i
                samples[here] = window_indices(samples[here], int(windows[i]), seed, names[i])
            plan_source.write(sources.astype(source_dtype).tobytes())
            plan_sample.write(samples.astype("<i8").tobytes())
    return {"samples": bound / total, "megatron_samples": greedy / total}


def _sample_counts(mixture: DictConfig, weights: dict[str, float], sources: list[dict[str, Any]], seq_len: int,
                   budget: int) -> tuple[int, np.ndarray, np.ndarray]:
    """Samples in the plan, windows per source, and samples per source: weight x budget, capped by max_epochs."""
    num_samples = math.ceil(budget / seq_len)
    if num_samples >= MAX_SAMPLES:
        raise Refusal(f"mix_plan.tokens={budget} at mix_plan.seq_len={seq_len} makes {num_samples} samples; "
                       f"plans stop below {MAX_SAMPLES}: split the run into several mixtures")
    windows = np.array([(s["tokens"] - 1) // seq_len for s in sources], dtype=np.int64)
    caps = np.array([_cap(mixture, s["name"], int(w)) for s, w in zip(sources, windows, strict=True)], dtype=np.int64)
    counts = allocate_samples(np.array([weights[s["name"]] for s in sources]), caps, num_samples)
    return num_samples, windows, counts


def _file_entries(files: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [{k: f[k] for k in ("path", "tokens", "sha256")} for f in files]


def _source_entry(source: dict[str, Any], mixture: DictConfig, weight: float, windows: int, samples: int,
                  seq_len: int, num_samples: int) -> dict[str, Any]:
    """One source in mixture.json: what it offers, what the plan takes from it, and the files it reads."""
    manifest = source["manifest"] or {"files": [], "val_files": []}
    return {
        "name": source["name"],
        "weight": weight,
        "max_epochs": mixture.sources[source["name"]].get("max_epochs"),
        "tokens_available": source["tokens"],
        "windows_available": windows,
        "samples": samples,
        "tokens_planned": samples * seq_len,
        "measured_share": samples / num_samples,
        "epochs": samples * seq_len / source["tokens"],
        "token_files": _file_entries(manifest["files"]),
        "val_files": _file_entries(manifest["val_files"]),
    }


def _write_plan_manifest(folder: Path, cfg: DictConfig, sources: list[dict[str, Any]], counts: np.ndarray,
                         num_samples: int) -> None:
    """The plan's manifest: the token manifests it was planned from, its settings and its files' hashes."""
    layout = DataLayout(Path(cfg.paths.data_root))
    write_manifest(
        folder,
        inputs=[{"path": f"tokens/{s['name']}/{MANIFEST}", "sha256": sha256_file(layout.tokens(s["name"]) / MANIFEST)}
                for s in sources if s["manifest"]],
        config={"mix_plan": OmegaConf.to_container(cfg.mix_plan, resolve=True),
                "mixture": OmegaConf.to_container(cfg.mixture, resolve=True)},
        counts={"num_samples": num_samples, "samples": {s["name"]: int(c) for s, c in zip(sources, counts, strict=True)}},
        outputs={f: sha256_file(folder / f) for f in (PLAN_SOURCE, PLAN_SAMPLE, MIXTURE_SPEC)},
    )


def build_mix(cfg: DictConfig) -> Path:
    """Validate everything, then write the plan into a temporary folder renamed into place."""
    settings, mixture = cfg.mix_plan, cfg.mixture
    seq_len = _positive_int(settings.seq_len, "mix_plan.seq_len")
    budget = _positive_int(settings.tokens, "mix_plan.tokens")
    seed = int(settings.seed)
    weights = normalized_weights({name: spec.weight for name, spec in mixture.sources.items()},
                                 f"conf/mixture/{mixture.name}.yaml")
    names = [name for name, weight in weights.items() if weight > 0]
    sources = _source_inputs(cfg, names, seq_len)
    num_samples, windows, counts = _sample_counts(mixture, weights, sources, seq_len, budget)

    out = DataLayout(Path(cfg.paths.data_root)).mix(mixture.name)
    tmp = staging_folder(out)
    source_dtype = np.dtype(np.uint8 if len(names) <= np.iinfo(np.uint8).max + 1 else np.int16)
    drift = _write_plan(tmp, counts, windows, names, seed, int(settings.chunk_samples), source_dtype)

    first = sources[0]["manifest"]
    description = {
        "name": mixture.name,
        "seq_len": seq_len,
        "seed": seed,
        "tokens": budget,
        "num_samples": num_samples,
        **{key: first[key] if first else None for key in ("tokenizer_sha256", "dtype", "vocab_size", "eos_id")},
        "plan_only": bool(settings.plan_only),
        "plan_source_dtype": source_dtype.name,
        "max_prefix_drift": drift,
        "sources": [_source_entry(source, mixture, weights[source["name"]], int(windows[i]), int(counts[i]),
                                  seq_len, num_samples) for i, source in enumerate(sources)],
    }
    write_mixture_spec(tmp, description)
    _write_plan_manifest(tmp, cfg, sources, counts, num_samples)
    replace_folder(tmp, out)
    _print_summary(description)
    return out


def _print_summary(description: dict[str, Any]) -> None:
    print(f"mix {description['name']}: {description['num_samples']:,} samples x {description['seq_len']} tokens")
    print(f"{'source':<12} {'weight':>7} {'share':>7} {'tokens planned':>16} {'available':>16} {'epochs':>7}")
    for s in description["sources"]:
        print(f"{s['name']:<12} {s['weight']:>7.4f} {s['measured_share']:>7.4f} {s['tokens_planned']:>16,} "
              f"{s['tokens_available']:>16,} {s['epochs']:>7.2f}")
    drift = description["max_prefix_drift"]
    print(f"every prefix of the order is within {drift['samples']:.3f} samples of each source's share "
          f"(Megatron's blending loop: {drift['megatron_samples']:.3f})")


@hydra.main(version_base="1.3", config_path="../conf", config_name="curate")
def main(cfg: DictConfig) -> None:
    build_mix(cfg)


if __name__ == "__main__":
    main()
