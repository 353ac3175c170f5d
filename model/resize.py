"""Grow a GPT's vocabulary for tokens its tokenizer lacks (GPT-1's start, delimiter and extract tokens).

The embedding is padded to a multiple of `vocab_multiple`, and those padding rows are never read
nor trained, so new ids take them while they last; beyond that the embedding (and the head tied to
it) is re-allocated at the next padded size. Rows of existing ids are never touched, so the model
computes exactly what it did on any input made of old ids.
"""

from __future__ import annotations

import dataclasses

import torch
from torch import nn

from model.gpt import GPT, INIT_STD


@torch.no_grad()
def add_tokens(gpt: GPT, count: int, generator: torch.Generator | None = None) -> list[int]:
    """Append `count` ids to `gpt`'s vocabulary in place; return them.

    Their rows are drawn from N(0, INIT_STD), the GPT-2 init, whether they reuse padding rows
    (which may hold zeros, e.g. after an HF import) or new ones.
    """
    if count < 1:
        raise ValueError(f"add_tokens: count={count} must be >= 1")
    old_vocab = gpt.config.vocab_size
    config = dataclasses.replace(gpt.config, vocab_size=old_vocab + count)
    weight = gpt.tok_emb.weight
    if config.padded_vocab_size > weight.size(0):
        grown = nn.Embedding(config.padded_vocab_size, config.n_embd, device=weight.device, dtype=weight.dtype)
        grown.weight[: weight.size(0)] = weight
        gpt.tok_emb = grown
        gpt.lm_head = nn.Linear(config.n_embd, config.padded_vocab_size, bias=False, device=weight.device,
                                dtype=weight.dtype)
        gpt.tie_weights()
    new_rows = gpt.tok_emb.weight[old_vocab : config.vocab_size]
    new_rows.copy_(torch.randn(new_rows.shape, generator=generator, dtype=torch.float32) * INIT_STD)
    gpt.config = config
    return list(range(old_vocab, config.vocab_size))
