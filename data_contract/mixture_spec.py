"""The mixture plan curation.mix writes and training reads: `mixture.json` and the plan arrays' names."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from data_contract.atomic_files import read_json, require_keys, write_json
from data_contract.refusal import Refusal

MIXTURE_SPEC = "mixture.json"
PLAN_SOURCE, PLAN_SAMPLE = "plan_source.npy", "plan_sample.npy"
# what training reads from mixture.json; curation.mix writes more (shares, epochs, drift)
MIXTURE_KEYS = ("name", "seq_len", "seed", "tokens", "num_samples", "tokenizer_sha256", "dtype", "vocab_size",
                "eos_id", "sources")
MIXTURE_SOURCE_KEYS = ("name", "weight", "token_files", "val_files")


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
