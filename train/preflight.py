"""Refusals before any training: every check names the key or file and the fix, in one line."""

from __future__ import annotations

import json
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import hydra
from omegaconf import DictConfig, OmegaConf

from data_contract import MANIFEST, MIXTURE_SPEC, TOKENIZER_MODEL, Refusal, sha256_file
from model import GPTConfig
from train.data import MixtureData

CONF_DIR = Path(__file__).resolve().parents[1] / "conf"


def training_command(name: str, config_name: str, build_task: Callable[..., Any]) -> Callable[[], None]:
    """The Hydra entry point of a training stage: the trainer runs `build_task`'s task with the config
    `conf/<config_name>.yaml`; a refusal is one `<name>: ...` line on stderr and exit code 2."""
    @hydra.main(config_path=str(CONF_DIR), config_name=config_name, version_base=None)
    def main(cfg: DictConfig) -> None:
        from train import trainer

        exit_after(name, lambda: trainer.run(cfg, build_task))

    return main


def exit_after(command: str, run: Callable[[], int]) -> None:
    """The end of an entry point: a refusal is one `<command>: ...` line on stderr and exit 2 (no
    traceback: the message already names the key or file and the fix); a nonzero result is the exit code."""
    try:
        code = run()
    except Refusal as refusal:
        print(f"{command}: {refusal}", file=sys.stderr)
        sys.exit(2)
    if code:
        sys.exit(code)


def check_run(cfg: DictConfig, data: MixtureData) -> dict[str, str]:
    """Validate data against tokenizer and settings; returns the hashes a checkpoint records."""
    tokenizer_model = Path(cfg.data.tokenizer_dir) / TOKENIZER_MODEL
    if not tokenizer_model.is_file():
        raise Refusal(f"no tokenizer at {tokenizer_model}; train it with `python -m curation.train_tokenizer`")
    manifest_path = Path(cfg.data.tokenizer_dir) / MANIFEST
    tokenizer_hash = (json.loads(manifest_path.read_text())["sha256"] if manifest_path.is_file()
                      else sha256_file(tokenizer_model))
    mix_tokenizer_hash = data.spec.get("tokenizer_sha256")
    if mix_tokenizer_hash != tokenizer_hash:
        raise Refusal(
            f"{cfg.data.mix_dir}/mixture.json was built with tokenizer {str(mix_tokenizer_hash)[:12]}, but "
            f"{tokenizer_model} is {tokenizer_hash[:12]}; re-run `python -m curation.tokenize` and "
            "`python -m curation.mix` with this tokenizer")
    if cfg.train.seq_len != data.seq_len:
        raise Refusal(f"train.seq_len={cfg.train.seq_len} but the plan in {cfg.data.mix_dir} has windows of "
                        f"seq_len={data.seq_len}; set train.seq_len={data.seq_len} or rebuild the mix with "
                        f"mix_plan.seq_len={cfg.train.seq_len}")
    if cfg.train.seq_len > cfg.model.block_size:
        raise Refusal(f"train.seq_len={cfg.train.seq_len} is longer than the model's context "
                        f"model.block_size={cfg.model.block_size}; lower the one or raise the other")
    if cfg.vocab_size is not None and cfg.vocab_size < data.vocab_size:
        raise Refusal(f"vocab_size={cfg.vocab_size} is smaller than the tokenizer's vocabulary "
                        f"({data.vocab_size}, {tokenizer_model}); raise it or set vocab_size=null to follow "
                        "the tokenizer")
    return {"tokenizer_sha256": tokenizer_hash,
            "mixture_sha256": sha256_file(Path(cfg.data.mix_dir) / MIXTURE_SPEC)}


def model_config_for(cfg: DictConfig, data: MixtureData) -> GPTConfig:
    """The preset with the vocabulary of the tokenizer, or `vocab_size` when the user fixed one."""
    values = OmegaConf.to_container(cfg.model, resolve=True)
    assert isinstance(values, dict)
    values["vocab_size"] = cfg.vocab_size if cfg.vocab_size is not None else data.vocab_size
    try:
        return GPTConfig.from_dict(values)
    except ValueError as invalid:
        raise Refusal(str(invalid)) from None
