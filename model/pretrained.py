"""The project's saved-model format: `config.json` (GPTConfig fields) + `model.safetensors`.

The trainer writes it, with consolidated weights, to `<run_dir>/checkpoints/<tag>/model/`, so a
trained model can be loaded without DeepSpeed. The tied head weight is stored once, as the
token embedding.
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Mapping
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from model.config import GPTConfig
from model.gpt import GPT

CONFIG_FILE = "config.json"
WEIGHTS_FILE = "model.safetensors"
TOKENIZER_FILE = "tokenizer.model"
TIED_KEY = "lm_head.weight"


def save_pretrained(
    gpt: GPT,
    directory: str | Path,
    state_dict: Mapping[str, torch.Tensor] | None = None,
    tokenizer: str | Path | None = None,
) -> Path:
    """Write `gpt` to `directory`; return it.

    `state_dict` overrides `gpt.state_dict()`: under ZeRO-3 the module's own parameters are
    partitioned, so the trainer passes the consolidated weights. `tokenizer`, a sentencepiece
    model, is copied beside the weights as `tokenizer.model` for generation.
    """
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    if state_dict is None:
        state_dict = gpt.state_dict()
    weights = {k: v.detach().contiguous().cpu() for k, v in state_dict.items() if k != TIED_KEY}
    save_file(weights, directory / WEIGHTS_FILE, metadata={"format": "pt"})
    (directory / CONFIG_FILE).write_text(json.dumps(gpt.config.to_dict(), indent=2) + "\n")
    if tokenizer is not None:
        shutil.copyfile(tokenizer, directory / TOKENIZER_FILE)
    return directory


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


def load_pretrained(
    path: str | Path, device: str | torch.device = "cpu", dtype: torch.dtype = torch.float32
) -> GPT:
    """Load a model written by `save_pretrained` (or a checkpoint/run dir that holds one)."""
    directory = resolve_model_dir(path)
    config_path = directory / CONFIG_FILE
    config_dict = json.loads(config_path.read_text())
    if "model_type" in config_dict:
        raise ValueError(f"{config_path} is a Hugging Face config; load it with model.hf.load_hf_gpt2")
    try:
        config = GPTConfig.from_dict(config_dict)
    except ValueError as e:
        raise ValueError(f"{config_path}: {e}") from None
    weights = load_file(directory / WEIGHTS_FILE)
    return build_from_state_dict(config, weights, str(directory / WEIGHTS_FILE), device, dtype)


def build_from_state_dict(
    config: GPTConfig,
    weights: dict[str, torch.Tensor],
    source: str,
    device: str | torch.device,
    dtype: torch.dtype,
) -> GPT:
    """A GPT holding exactly `weights` (tied head implied), built without a throwaway random init.

    Returned in eval mode, as loaded models are used for inference first; call `.train()` to fine-tune.
    """
    with torch.device("meta"):
        gpt = GPT(config)
    expected = {k: v.shape for k, v in gpt.state_dict().items() if k != TIED_KEY}
    missing = sorted(expected.keys() - weights.keys())
    unexpected = sorted(weights.keys() - expected.keys())
    if missing or unexpected:
        problem = f"missing tensor {missing[0]}" if missing else f"unexpected tensor {unexpected[0]}"
        raise ValueError(f"{source}: {problem} for the model its config describes")
    for key, shape in expected.items():
        if weights[key].shape != shape:
            raise ValueError(
                f"{source}: tensor {key} has shape {tuple(weights[key].shape)} but the config implies {tuple(shape)}"
            )
    gpt.load_state_dict({**weights, TIED_KEY: weights["tok_emb.weight"]}, assign=True)
    gpt.tie_weights()
    return gpt.to(device=device, dtype=dtype).eval()
