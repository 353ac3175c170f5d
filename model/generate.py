"""Autoregressive sampling with a KV cache, and the `python -m model.generate` command.

    python -m model.generate checkpoint=runs/demo prompt='"It is a truth universally acknowledged,"'
    python -m model.generate checkpoint=path/to/hf-gpt2 tokenizer=path/to/tokenizer.json temperature=0

`checkpoint` is a run dir, a checkpoint dir, a saved-model dir, or a Hugging Face GPT-2 dir.
Hydra parses the overrides: quote a prompt holding `,` `:` or `=` as shown.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass, field
from typing import Any

import hydra
import torch
from hydra.core.config_store import ConfigStore
from omegaconf import DictConfig

from model.gpt import GPT
from model.load import load_model_and_tokenizer

# The settings of a command that writes no Hydra logs or output folders: it prints, or writes only `dst`.
QUIET_COMMAND_DEFAULTS = ("_self_", {"override hydra/job_logging": "disabled"},
                          {"override hydra/hydra_logging": "disabled"})
NO_OUTPUT_FILES = {"output_subdir": None, "run": {"dir": "."}}


def sample_next(
    logits: torch.Tensor,
    temperature: float = 1.0,
    top_k: int | None = None,
    top_p: float | None = None,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """Next ids (batch, 1) from last-position logits (batch, vocab); temperature 0 is greedy."""
    if temperature == 0:
        return logits.argmax(dim=-1, keepdim=True)
    logits = logits.float() / temperature
    if top_k is not None and top_k < logits.size(-1):
        kth_largest = torch.topk(logits, top_k, dim=-1).values[:, -1:]
        logits = logits.masked_fill(logits < kth_largest, float("-inf"))
    if top_p is not None and top_p < 1.0:
        # Nucleus: keep the smallest prefix of the sorted distribution whose mass reaches top_p.
        sorted_logits, order = torch.sort(logits, dim=-1, descending=True)
        sorted_probs = sorted_logits.softmax(dim=-1)
        mass_before = sorted_probs.cumsum(dim=-1) - sorted_probs
        sorted_logits = sorted_logits.masked_fill(mass_before >= top_p, float("-inf"))
        logits = torch.full_like(logits, float("-inf")).scatter(-1, order, sorted_logits)
    return torch.multinomial(logits.softmax(dim=-1), num_samples=1, generator=generator)


@torch.inference_mode()
def generate(
    model: GPT,
    idx: torch.Tensor,
    max_new_tokens: int,
    temperature: float = 1.0,
    top_k: int | None = None,
    top_p: float | None = None,
    generator: torch.Generator | None = None,
    eos_id: int | None = None,
) -> torch.Tensor:
    """Extend `idx` (batch, time) by up to `max_new_tokens` ids; returns prompt + continuation.

    Each new token runs the model on one position against cached keys/values. Past block_size
    the context slides: the cache is rebuilt from the latest half block, so the cost stays
    amortised O(1) model positions per token. With `eos_id`, a row that emits it keeps emitting
    it, and generation stops once every row has.
    """
    if temperature < 0 or (top_k is not None and top_k < 1) or (top_p is not None and not 0 < top_p <= 1):
        raise ValueError(
            f"need temperature >= 0, top_k >= 1, 0 < top_p <= 1; got {temperature}, {top_k}, {top_p}"
        )
    if idx.dim() != 2 or idx.size(1) == 0:
        raise ValueError(f"idx must be (batch, time) with time >= 1; got shape {tuple(idx.shape)}")
    was_training = model.training
    model.eval()
    try:
        batch, prompt_len = idx.shape
        block_size = model.config.block_size
        out = torch.empty(batch, prompt_len + max_new_tokens, dtype=idx.dtype, device=idx.device)
        out[:, :prompt_len] = idx
        context = idx[:, -block_size:]
        cache = model.new_kv_cache(batch, min(block_size, context.size(1) + max_new_tokens))
        logits = model.logits(model.hidden_states(context, cache)[:, -1])
        finished = torch.zeros(batch, dtype=torch.bool, device=idx.device)
        end = prompt_len
        for _ in range(max_new_tokens):
            next_id = sample_next(logits, temperature, top_k, top_p, generator)
            if eos_id is not None:
                next_id = next_id.masked_fill(finished.unsqueeze(1), eos_id)
                finished |= next_id.squeeze(1) == eos_id
            out[:, end] = next_id.squeeze(1)
            end += 1
            if end == prompt_len + max_new_tokens or (eos_id is not None and bool(finished.all())):
                break
            if cache.length == cache.max_len:
                cache.reset()
                hidden = model.hidden_states(out[:, end - block_size // 2 : end], cache)
            else:
                hidden = model.hidden_states(next_id, cache)
            logits = model.logits(hidden[:, -1])
        return out[:, :end]
    finally:
        model.train(was_training)


@dataclass
class GenerateCommand:
    """`python -m model.generate checkpoint=RUN_OR_MODEL_DIR prompt='"Once upon a time,"' [key=value ...]`"""

    defaults: list[Any] = field(default_factory=lambda: list(QUIET_COMMAND_DEFAULTS))
    hydra: Any = field(default_factory=lambda: dict(NO_OUTPUT_FILES))
    checkpoint: str | None = None  # required: run dir, checkpoint dir, saved-model dir, or HF GPT-2 dir
    tokenizer: str | None = None  # a tokenizer file or folder (either kind); default: the one saved with the model
    prompt: str = ""  # empty: start a new document (from EOS)
    max_new_tokens: int = 200
    temperature: float = 0.8  # 0 = greedy
    top_k: int | None = 200  # null = no cut
    top_p: float | None = None  # nucleus cut, e.g. 0.95
    seed: int = 1337
    num_samples: int = 1
    device: str = "cpu"


ConfigStore.instance().store(name="generate", node=GenerateCommand)


@hydra.main(config_path=None, config_name="generate", version_base=None)
def main(cfg: DictConfig) -> None:
    try:
        if cfg.checkpoint is None:
            raise ValueError(
                "checkpoint=PATH is required: a run dir, checkpoint dir, saved-model dir or HF GPT-2 dir"
            )
        model, tokenizer, _ = load_model_and_tokenizer(cfg.checkpoint, cfg.tokenizer, cfg.device)
        prompt_ids = tokenizer.encode(cfg.prompt)
        if not prompt_ids:  # an empty prompt starts a fresh document, which follows an EOS in training
            if tokenizer.eos_id is None:
                raise ValueError(
                    "prompt is empty and the tokenizer has no EOS to start from; give prompt=..."
                )
            prompt_ids = [tokenizer.eos_id]
        idx = torch.tensor([prompt_ids] * cfg.num_samples, dtype=torch.long, device=cfg.device)
        generator = torch.Generator(device=cfg.device).manual_seed(cfg.seed)
        out = generate(
            model,
            idx,
            cfg.max_new_tokens,
            cfg.temperature,
            cfg.top_k,
            cfg.top_p,
            generator,
            eos_id=tokenizer.eos_id,
        )
    except ValueError as e:
        sys.exit(f"error: {e}")
    for i, row in enumerate(out.tolist()):
        if i:
            print("-" * 40)
        print(tokenizer.decode(row))


if __name__ == "__main__":
    main()
