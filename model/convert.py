"""Convert between this project's saved models and Hugging Face GPT-2 directories.

    python -m model.convert direction=from_hf src=HF_GPT2_DIR dst=OUT_DIR     # -> config.json + model.safetensors
    python -m model.convert direction=to_hf src=MODEL_DIR dst=OUT_DIR [tokenizer=PATH]

MODEL_DIR may also be a checkpoint or run dir (see model.model_dir.resolve_model_dir). The tokenizer
travels both ways: from_hf keeps the HF dir's GPT-2 tokenizer files beside the weights, to_hf exports
the tokenizer saved beside the weights (either kind) unless `tokenizer` names another.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import hydra
from hydra.core.config_store import ConfigStore
from omegaconf import DictConfig

from model.generate import NO_OUTPUT_FILES, QUIET_COMMAND_DEFAULTS
from model.hf import load_hf_gpt2, save_hf_gpt2
from model.model_dir import resolve_model_dir
from model.saved_model import load_pretrained, save_pretrained
from model.tokenizer import has_tokenizer

DIRECTIONS = ("from_hf", "to_hf")


def convert(direction: str, src: str | Path, dst: str | Path, tokenizer: str | Path | None = None) -> None:
    """Read `src` in one format and write `dst` in the other; a bad input raises ValueError naming it."""
    if direction == "from_hf":
        save_pretrained(load_hf_gpt2(src), dst, tokenizer=src if has_tokenizer(src) else None)
        return
    if direction != "to_hf":
        raise ValueError(f"direction={direction} is unknown; use direction=from_hf or direction=to_hf")
    model_dir = resolve_model_dir(src)
    if tokenizer is None and has_tokenizer(model_dir):
        tokenizer = model_dir
    save_hf_gpt2(load_pretrained(model_dir), dst, tokenizer=tokenizer)


@dataclass
class ConvertCommand:
    """`python -m model.convert direction=from_hf|to_hf src=PATH dst=PATH [tokenizer=PATH]`"""

    defaults: list[Any] = field(default_factory=lambda: list(QUIET_COMMAND_DEFAULTS))
    hydra: Any = field(default_factory=lambda: dict(NO_OUTPUT_FILES))
    direction: str | None = None  # required: from_hf (HF GPT-2 dir -> saved model) or to_hf (the reverse)
    src: str | None = None  # required: from_hf: an HF GPT-2 dir; to_hf: a run, checkpoint or saved-model dir
    dst: str | None = None  # required: the folder to write
    tokenizer: str | None = None  # to_hf: a tokenizer file or folder to export; default: the one beside the weights


ConfigStore.instance().store(name="convert", node=ConvertCommand)


@hydra.main(config_path=None, config_name="convert", version_base=None)
def main(cfg: DictConfig) -> None:
    try:
        for key in ("direction", "src", "dst"):
            if cfg[key] is None:
                raise ValueError(f"{key}=... is required: python -m model.convert direction={'|'.join(DIRECTIONS)} "
                                 "src=PATH dst=PATH")
        convert(cfg.direction, cfg.src, cfg.dst, cfg.tokenizer)
    except ValueError as e:
        sys.exit(f"error: {e}")
    print(f"wrote {cfg.dst}")


if __name__ == "__main__":
    main()
