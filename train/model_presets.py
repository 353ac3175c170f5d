"""The model sizes of conf/model/ against the sizes their papers publish.

`python -m train.model_presets` prints each preset's parameter count against the published figure,
and its training FLOPs per token. Here, not in `model`, because the model package reads no config
files: the trainer hands it a GPTConfig.
"""

from __future__ import annotations

from pathlib import Path

import torch
import yaml

from model.config import GPTConfig
from model.flops import flops_per_token
from model.gpt import GPT

PRESETS_DIR = Path(__file__).resolve().parents[1] / "conf" / "model"

# Published sizes: GPT-2 as counted in the released checkpoints (the paper's Table 2 figures
# 117M/345M/762M/1542M were later corrected), GPT-3 from Brown et al. 2020, Table 2.1.
PUBLISHED_PARAMS = {
    "gpt2-124m": 124e6,
    "gpt2-350m": 355e6,
    "gpt2-774m": 774e6,
    "gpt2-1558m": 1558e6,
    "gpt3-small": 125e6,
    "gpt3-medium": 350e6,
    "gpt3-large": 760e6,
    "gpt3-xl": 1.3e9,
    "gpt3-2.7b": 2.7e9,
    "gpt3-6.7b": 6.7e9,
    "gpt3-13b": 13.0e9,
    "gpt3-175b": 175.0e9,
}


def preset_names() -> list[str]:
    return sorted(p.stem for p in PRESETS_DIR.glob("*.yaml"))


def load_preset(name: str) -> GPTConfig:
    path = PRESETS_DIR / f"{name}.yaml"
    if not path.is_file():
        raise ValueError(
            f"unknown model preset {name!r} ({path} not found); choose one of: {', '.join(preset_names())}"
        )
    with path.open() as f:
        return GPTConfig.from_dict(yaml.safe_load(f))


def count_params(config: GPTConfig) -> int:
    """Parameter count of the real module, built on the meta device so nothing is allocated."""
    with torch.device("meta"):
        return GPT(config).num_params()


def main() -> None:
    print(
        f"{'preset':<12} {'layers':>6} {'d_model':>7} {'heads':>5} {'ctx':>5} {'params':>9} {'published':>9} "
        f"{'diff':>6} {'GFLOP/token':>11}"
    )
    for name in [*PUBLISHED_PARAMS, *sorted(set(preset_names()) - set(PUBLISHED_PARAMS))]:
        config = load_preset(name)
        params = count_params(config)
        published = PUBLISHED_PARAMS.get(name)
        reference = (
            f"{published / 1e6:8.0f}M {100 * (params / published - 1):+5.1f}%"
            if published
            else f"{'-':>9} {'':>6}"
        )
        print(
            f"{name:<12} {config.n_layer:>6} {config.n_embd:>7} {config.n_head:>5} {config.block_size:>5} "
            f"{params / 1e6:8.1f}M {reference} {flops_per_token(config, config.block_size) / 1e9:11.2f}"
        )


if __name__ == "__main__":
    main()
