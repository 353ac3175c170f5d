"""Hugging Face GPT-2 checkpoints in and out, without importing transformers.

HF's GPT-2 stores its linear layers as `Conv1D` (weight shaped in x out), so those weights are
transposed on the way through; everything else maps one to one. The exported directory is what
`transformers.GPT2LMHeadModel.from_pretrained` reads; with a tokenizer given, it also holds the
tokenizer files `AutoTokenizer.from_pretrained` reads: GPT-2's own (`vocab.json`, `merges.txt`,
`tokenizer.json`) for a byte-level BPE, a `tokenizer.json` built from the model for sentencepiece.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from data_contract.tokenizer_files import GPT2_EOS
from model.gpt import GPT
from model.model_dir import CONFIG_FILE, hf_gpt_config
from model.saved_model import build_from_state_dict
from model.spm_export import write_hf_tokenizer
from model.tokenizer import copy_tokenizer, load_tokenizer, sentencepiece_file

HF_SAFETENSORS = "model.safetensors"
HF_PYTORCH_BIN = "pytorch_model.bin"
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
    config = hf_gpt_config(directory)
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
        weights[ours] = tensor.t().contiguous() if transposed else tensor  # DeepSpeed broadcasts raw storage
    if hf_weights:
        raise ValueError(f"{source}: unexpected tensor {sorted(hf_weights)[0]}")
    wte = weights["tok_emb.weight"]
    padding = config.padded_vocab_size - config.vocab_size
    weights["tok_emb.weight"] = torch.cat([wte, wte.new_zeros(padding, wte.shape[1])])
    return build_from_state_dict(config, weights, source, device, dtype)


def write_hf_bpe_tokenizer(source: Path, directory: Path, model_max_length: int) -> dict[str, int]:
    """GPT-2's tokenizer files and a `tokenizer_config.json` naming GPT-2's tokenizer class and its one
    special token; return the special ids set."""
    copy_tokenizer(source, directory)
    eos_id = load_tokenizer(directory).eos_id
    if eos_id is None:
        return {}
    tokenizer_config = {"tokenizer_class": "GPT2Tokenizer", "model_max_length": model_max_length,
                        "add_prefix_space": False, "bos_token": GPT2_EOS, "eos_token": GPT2_EOS, "unk_token": GPT2_EOS}
    (directory / "tokenizer_config.json").write_text(json.dumps(tokenizer_config, indent=2) + "\n")
    return {"bos": eos_id, "eos": eos_id}


def save_hf_gpt2(gpt: GPT, path: str | Path, tokenizer: str | Path | None = None) -> Path:
    """Write `gpt` as a HF GPT-2 directory; with `tokenizer` (a file or folder of either kind), its tokenizer too.

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

    special_ids: dict[str, int] = {}
    if tokenizer is not None:
        spm_model = sentencepiece_file(Path(tokenizer))
        special_ids = (write_hf_tokenizer(spm_model, directory, config.block_size) if spm_model is not None
                       else write_hf_bpe_tokenizer(Path(tokenizer), directory, config.block_size))
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
    (directory / CONFIG_FILE).write_text(json.dumps(hf_config, indent=2) + "\n")
    return directory
