"""A model dir: which folder holds the weights and tokenizer of a model a user points at, and the shape
(GPTConfig) its config gives, read without torch.

A path may be a saved-model dir (`config.json` of GPTConfig fields), a checkpoint dir holding `model/`,
a run dir (`checkpoints/latest`), or a Hugging Face GPT-2 dir (`config.json` with `model_type`). The
checks before training read shapes from here, so a mismatch is refused before torch is imported.
"""

from __future__ import annotations

import json
from pathlib import Path

from model.config import GPTConfig

CONFIG_FILE = "config.json"
# GPT-2's GELU is the tanh approximation; HF calls it either of these.
TANH_GELU_NAMES = ("gelu_new", "gelu_pytorch_tanh")


def hf_config(path: Path) -> dict | None:
    """The config of an HF model directory, or None for anything else."""
    config = path / CONFIG_FILE
    if config.is_file() and "model_type" in (values := json.loads(config.read_text())):
        return values
    return None


def read_hf_config(directory: Path) -> dict:
    path = directory / CONFIG_FILE
    if not path.is_file():
        raise ValueError(f"{directory}: no {CONFIG_FILE}; expected a Hugging Face GPT-2 model directory")
    hf = json.loads(path.read_text())
    if hf.get("model_type") != "gpt2":
        raise ValueError(
            f"{path}: model_type={hf.get('model_type')!r} is not 'gpt2'; only GPT-2 checkpoints can be imported"
        )
    for key in ("vocab_size", "n_positions", "n_layer", "n_head", "n_embd"):
        if key not in hf:
            raise ValueError(f"{path}: {key} is missing")
    checks = {
        "activation_function": (hf.get("activation_function", "gelu_new") in TANH_GELU_NAMES, "gelu_new"),
        "n_inner": (hf.get("n_inner") in (None, 4 * hf["n_embd"]), "null (4 x n_embd)"),
        "scale_attn_weights": (hf.get("scale_attn_weights", True), "true"),
        "scale_attn_by_inverse_layer_idx": (not hf.get("scale_attn_by_inverse_layer_idx", False), "false"),
        "tie_word_embeddings": (hf.get("tie_word_embeddings", True), "true"),
        "add_cross_attention": (not hf.get("add_cross_attention", False), "false"),
    }
    for key, (ok, supported) in checks.items():
        if not ok:
            raise ValueError(
                f"{path}: {key}={hf.get(key)!r} is not supported by this GPT (needs {supported})"
            )
    return hf


def hf_gpt_config(directory: Path) -> GPTConfig:
    """The GPTConfig of an HF GPT-2 directory; ValueError names what does not fit."""
    hf = read_hf_config(directory)
    try:
        return GPTConfig(
            vocab_size=hf["vocab_size"],
            block_size=hf["n_positions"],
            n_layer=hf["n_layer"],
            n_head=hf["n_head"],
            n_embd=hf["n_embd"],
            dropout=hf.get("resid_pdrop", 0.0),
            layer_norm_eps=hf.get("layer_norm_epsilon", 1e-5),
        )
    except ValueError as e:
        raise ValueError(f"{directory / CONFIG_FILE}: {e}") from None


def resolve_model_dir(path: str | Path) -> Path:
    """Accept a saved-model dir, a checkpoint dir (`<tag>/model/`) or a run dir (`checkpoints/latest`)."""
    path = Path(path)
    for checkpoints in (path / "checkpoints", path):
        latest = checkpoints / "latest"
        if latest.is_file():
            path = checkpoints / latest.read_text().strip()
            break
    if (path / "model" / CONFIG_FILE).is_file():
        path = path / "model"
    if not (path / CONFIG_FILE).is_file():
        raise ValueError(
            f"{path}: no {CONFIG_FILE}; expected a saved model dir, a checkpoint dir holding model/, "
            "or a run dir holding checkpoints/latest"
        )
    return path


def saved_config(directory: Path) -> GPTConfig:
    """The GPTConfig of a saved-model dir (as `resolve_model_dir` returns it)."""
    config_path = directory / CONFIG_FILE
    config_dict = json.loads(config_path.read_text())
    if "model_type" in config_dict:
        raise ValueError(f"{config_path} is a Hugging Face config; load it with model.hf.load_hf_gpt2")
    try:
        return GPTConfig.from_dict(config_dict)
    except ValueError as e:
        raise ValueError(f"{config_path}: {e}") from None


def locate_model(path: str | Path) -> tuple[Path, GPTConfig, bool]:
    """(folder of the weights and tokenizer, shape, is it an HF dir) of any path a user may start from."""
    path = Path(path)
    if not path.exists():
        raise ValueError(f"{path} does not exist; give a run dir, checkpoint dir, saved-model dir or HF GPT-2 dir")
    if hf_config(path) is not None:
        return path, hf_gpt_config(path), True
    directory = resolve_model_dir(path)
    return directory, saved_config(directory), False
