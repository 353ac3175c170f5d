"""Hugging Face GPT-2 checkpoints in and out, without importing transformers.

HF's GPT-2 stores its linear layers as `Conv1D` (weight shaped in x out), so those weights are
transposed on the way through; everything else maps one to one. The exported directory is what
`transformers.GPT2LMHeadModel.from_pretrained` reads; with a sentencepiece model given, it also
holds a `tokenizer.json` that `AutoTokenizer.from_pretrained` reads.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from model.config import GPTConfig
from model.gpt import GPT
from model.pretrained import build_from_state_dict
from model.spm_export import write_hf_tokenizer

HF_CONFIG_FILE = "config.json"
HF_SAFETENSORS = "model.safetensors"
HF_PYTORCH_BIN = "pytorch_model.bin"
# GPT-2's GELU is the tanh approximation; HF calls it either of these.
TANH_GELU_NAMES = ("gelu_new", "gelu_pytorch_tanh")
# Buffers older checkpoints saved with the weights (the causal mask); they carry nothing.
IGNORED_SUFFIXES = (".attn.bias", ".attn.masked_bias")


def _key_map(n_layer: int) -> dict[str, tuple[str, bool]]:
    """Our parameter name -> (HF GPT-2 name without the `transformer.` prefix, transposed?)."""
    mapping = {
        "tok_emb.weight": ("wte.weight", False),
        "pos_emb.weight": ("wpe.weight", False),
        "ln_f.weight": ("ln_f.weight", False),
        "ln_f.bias": ("ln_f.bias", False),
    }
    for i in range(n_layer):
        ours, theirs = f"blocks.{i}.", f"h.{i}."
        for ln in ("ln_1", "ln_2"):
            mapping[f"{ours}{ln}.weight"] = (f"{theirs}{ln}.weight", False)
            mapping[f"{ours}{ln}.bias"] = (f"{theirs}{ln}.bias", False)
        for our_linear, their_conv in (
            ("attn.qkv", "attn.c_attn"),
            ("attn.proj", "attn.c_proj"),
            ("mlp.fc", "mlp.c_fc"),
            ("mlp.proj", "mlp.c_proj"),
        ):
            mapping[f"{ours}{our_linear}.weight"] = (f"{theirs}{their_conv}.weight", True)
            mapping[f"{ours}{our_linear}.bias"] = (f"{theirs}{their_conv}.bias", False)
    return mapping


def _read_hf_config(directory: Path) -> dict:
    path = directory / HF_CONFIG_FILE
    if not path.is_file():
        raise ValueError(f"{directory}: no {HF_CONFIG_FILE}; expected a Hugging Face GPT-2 model directory")
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


def _read_hf_weights(directory: Path) -> tuple[dict[str, torch.Tensor], str]:
    """Safetensors if present, else a pickled .bin read with weights_only=True (no code execution)."""
    for single, loader in (
        (HF_SAFETENSORS, load_file),
        (HF_PYTORCH_BIN, lambda p: torch.load(p, map_location="cpu", weights_only=True)),
    ):
        if (directory / single).is_file():
            return loader(directory / single), str(directory / single)
        index = directory / f"{single}.index.json"
        if index.is_file():
            shards = sorted(set(json.loads(index.read_text())["weight_map"].values()))
            weights: dict[str, torch.Tensor] = {}
            for shard in shards:
                weights.update(loader(directory / shard))
            return weights, str(index)
    raise ValueError(f"{directory}: neither {HF_SAFETENSORS} nor {HF_PYTORCH_BIN} (or a sharded index) found")


def load_hf_gpt2(
    path: str | Path, device: str | torch.device = "cpu", dtype: torch.dtype = torch.float32
) -> GPT:
    """A GPT with the weights of a local HF GPT-2 directory (GPT2LMHeadModel or GPT2Model)."""
    directory = Path(path)
    hf = _read_hf_config(directory)
    try:
        config = GPTConfig(
            vocab_size=hf["vocab_size"],
            block_size=hf["n_positions"],
            n_layer=hf["n_layer"],
            n_head=hf["n_head"],
            n_embd=hf["n_embd"],
            dropout=hf.get("resid_pdrop", 0.0),
            layer_norm_eps=hf.get("layer_norm_epsilon", 1e-5),
        )
    except ValueError as e:
        raise ValueError(f"{directory / HF_CONFIG_FILE}: {e}") from None
    hf_weights, source = _read_hf_weights(directory)
    hf_weights = {
        k.removeprefix("transformer."): v
        for k, v in hf_weights.items()
        if k != "lm_head.weight" and not k.endswith(IGNORED_SUFFIXES)
    }
    with torch.device("meta"):
        expected = GPT(config).state_dict()
    weights = {}
    for ours, (theirs, transposed) in _key_map(config.n_layer).items():
        if theirs not in hf_weights:
            raise ValueError(f"{source}: missing tensor {theirs}")
        tensor = hf_weights.pop(theirs)
        shape = tuple(expected[ours].shape)
        if ours == "tok_emb.weight":
            shape = (config.vocab_size, config.n_embd)  # HF keeps no padding rows
        elif transposed:
            shape = shape[::-1]
        if tuple(tensor.shape) != shape:
            raise ValueError(
                f"{source}: {theirs} has shape {tuple(tensor.shape)} but config.json implies {shape}"
            )
        weights[ours] = tensor.t() if transposed else tensor
    if hf_weights:
        raise ValueError(f"{source}: unexpected tensor {sorted(hf_weights)[0]}")
    wte = weights["tok_emb.weight"]
    padding = config.padded_vocab_size - config.vocab_size
    weights["tok_emb.weight"] = torch.cat([wte, wte.new_zeros(padding, wte.shape[1])])
    return build_from_state_dict(config, weights, source, device, dtype)


def save_hf_gpt2(gpt: GPT, path: str | Path, tokenizer: str | Path | None = None) -> Path:
    """Write `gpt` as a HF GPT-2 directory; with `tokenizer` (a sentencepiece model), its tokenizer too.

    A model without biases is written with zero biases, which HF's GPT-2 (always biased) computes
    identically.
    """
    directory = Path(path)
    directory.mkdir(parents=True, exist_ok=True)
    config = gpt.config
    state = {k: v.detach() for k, v in gpt.state_dict().items()}
    hf_weights = {}
    for ours, (theirs, transposed) in _key_map(config.n_layer).items():
        if ours in state:
            tensor = state[ours]
        else:  # bias=False: the matching weight fixes the shape of the zero bias
            weight = state[ours.removesuffix(".bias") + ".weight"]
            tensor = weight.new_zeros(weight.shape[0])
        if ours == "tok_emb.weight":
            tensor = tensor[: config.vocab_size]
        hf_weights[f"transformer.{theirs}"] = (tensor.t() if transposed else tensor).contiguous().cpu()
    save_file(hf_weights, directory / HF_SAFETENSORS, metadata={"format": "pt"})

    special_ids = write_hf_tokenizer(tokenizer, directory, config.block_size) if tokenizer is not None else {}
    hf_config = {
        "architectures": ["GPT2LMHeadModel"],
        "model_type": "gpt2",
        "vocab_size": config.vocab_size,
        "n_positions": config.block_size,
        "n_embd": config.n_embd,
        "n_layer": config.n_layer,
        "n_head": config.n_head,
        "n_inner": None,
        "activation_function": "gelu_new",
        "resid_pdrop": config.dropout,
        "embd_pdrop": config.dropout,
        "attn_pdrop": config.dropout,
        "layer_norm_epsilon": config.layer_norm_eps,
        "initializer_range": 0.02,
        "scale_attn_weights": True,
        "tie_word_embeddings": True,
        "use_cache": True,
        "bos_token_id": special_ids.get("bos"),
        "eos_token_id": special_ids.get("eos"),
        "dtype": str(next(iter(hf_weights.values())).dtype).removeprefix("torch."),
    }
    (directory / HF_CONFIG_FILE).write_text(json.dumps(hf_config, indent=2) + "\n")
    return directory
