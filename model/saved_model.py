"""The project's saved-model format: `config.json` (GPTConfig fields) + `model.safetensors`.

The trainer writes it, with consolidated weights, to `<run_dir>/checkpoints/<tag>/model/`, so a
trained model can be loaded without DeepSpeed. The tied head weight is stored once, as the
token embedding. Finding the folder and reading its config without torch is model/model_dir.py's job.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from model.config import GPTConfig
from model.gpt import GPT
from model.model_dir import CONFIG_FILE, resolve_model_dir, saved_config
from model.tokenizer import copy_tokenizer

WEIGHTS_FILE = "model.safetensors"
TIED_KEY = "lm_head.weight"


def save_pretrained(
    gpt: GPT,
    directory: str | Path,
    state_dict: Mapping[str, torch.Tensor] | None = None,
    tokenizer: str | Path | None = None,
) -> Path:
    """Write `gpt` to `directory`; return it.

    `state_dict` overrides `gpt.state_dict()`: under ZeRO-3 the module's own parameters are
    partitioned, so the trainer passes the consolidated weights. `tokenizer` (a sentencepiece model,
    or a folder holding either kind) is saved beside the weights: a model travels with its tokenizer.
    """
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    if state_dict is None:
        state_dict = gpt.state_dict()
    weights = {k: v.detach().contiguous().cpu() for k, v in state_dict.items() if k != TIED_KEY}
    save_file(weights, directory / WEIGHTS_FILE, metadata={"format": "pt"})
    (directory / CONFIG_FILE).write_text(json.dumps(gpt.config.to_dict(), indent=2) + "\n")
    if tokenizer is not None:
        copy_tokenizer(tokenizer, directory)
    return directory


def load_pretrained(
    path: str | Path, device: str | torch.device = "cpu", dtype: torch.dtype = torch.float32
) -> GPT:
    """Load a model written by `save_pretrained` (or a checkpoint/run dir that holds one)."""
    directory = resolve_model_dir(path)
    config = saved_config(directory)
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
