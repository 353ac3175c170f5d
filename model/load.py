"""Any model a user may start from, with its tokenizer: a run dir, a checkpoint dir, a saved-model dir
(model/saved_model.py) or a Hugging Face GPT-2 dir (model/hf.py), as model/model_dir.py finds them.
Generation, conversion, continued pretraining, fine-tuning and evaluation take their `init` here."""

from __future__ import annotations

from pathlib import Path

import torch

from model.gpt import GPT
from model.hf import load_hf_gpt2
from model.model_dir import hf_config, locate_model
from model.saved_model import load_pretrained
from model.tokenizer import TextTokenizer, has_tokenizer, load_tokenizer


def load_model(path: str | Path, device: str | torch.device = "cpu",
               dtype: torch.dtype = torch.float32) -> tuple[GPT, Path]:
    """The GPT at `path` and the folder its weights and tokenizer sit in; ValueError names what is wrong."""
    directory, _, is_hf = locate_model(path)
    loader = load_hf_gpt2 if is_hf else load_pretrained
    return loader(directory, device=device, dtype=dtype), directory


def load_model_and_tokenizer(path: str | Path, tokenizer: str | Path | None = None, device: str = "cpu",
                             dtype: torch.dtype = torch.float32) -> tuple[GPT, TextTokenizer, Path]:
    """`load_model` plus the tokenizer saved with it (or `tokenizer`, a file or folder, instead)."""
    model, model_dir = load_model(path, device, dtype)
    if tokenizer is None and not has_tokenizer(model_dir):
        raise ValueError(f"{model_dir}: no tokenizer beside the model (tokenizer.model, or vocab.json + merges.txt); "
                         "pass tokenizer=PATH")
    eos_id = (hf_config(model_dir) or {}).get("eos_token_id")
    return model, load_tokenizer(tokenizer or model_dir, eos_id=eos_id), model_dir
