"""The GPT-2/GPT-3 decoder: learned positions, pre-LayerNorm blocks, a head tied to the token embedding.

Shapes follow Radford et al. 2019 (GPT-2) and Brown et al. 2020 (GPT-3, dense attention only).
The module knows nothing of data or parallelism: every parameter lives in a leaf submodule, so
ZeRO-3's per-module gathering sees the tied head weight through both modules that own it.
"""

from __future__ import annotations

import math

import torch
from torch import nn
from torch.utils.checkpoint import checkpoint

from model.activation import gelu_tanh
from model.attention import attention
from model.config import GPTConfig
from model.kv_cache import KVCache

INIT_STD = 0.02


class CausalSelfAttention(nn.Module):
    def __init__(self, config: GPTConfig, layer_idx: int) -> None:
        super().__init__()
        self.layer_idx = layer_idx
        self.n_head = config.n_head
        self.dropout = config.dropout
        self.qkv = nn.Linear(config.n_embd, 3 * config.n_embd, bias=config.bias)
        self.proj = nn.Linear(config.n_embd, config.n_embd, bias=config.bias)
        self.resid_dropout = nn.Dropout(config.dropout)

    def forward(self, x: torch.Tensor, kv_cache: KVCache | None = None) -> torch.Tensor:
        batch, seq, width = x.shape
        q, k, v = self.qkv(x).view(batch, seq, 3, self.n_head, width // self.n_head).permute(2, 0, 3, 1, 4)
        mask, is_causal = None, True
        if kv_cache is not None:
            start = kv_cache.length
            k, v = kv_cache.update(self.layer_idx, k, v)
            if seq == 1:
                is_causal = False  # one query attends to every cached position
            elif start > 0:
                # New queries sit after `start` cached positions: query i sees keys [0, start + i].
                mask = torch.ones(seq, start + seq, dtype=torch.bool, device=x.device).tril(diagonal=start)
                is_causal = False
        y = attention(q, k, v, mask, is_causal, self.dropout if self.training else 0.0)
        return self.resid_dropout(self.proj(y.transpose(1, 2).reshape(batch, seq, width)))


class MLP(nn.Module):
    def __init__(self, config: GPTConfig) -> None:
        super().__init__()
        self.fc = nn.Linear(config.n_embd, 4 * config.n_embd, bias=config.bias)
        self.proj = nn.Linear(4 * config.n_embd, config.n_embd, bias=config.bias)
        self.dropout = nn.Dropout(config.dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # GPT-2 was trained with the tanh approximation of GELU; keeping it keeps HF weights exact.
        return self.dropout(self.proj(gelu_tanh(self.fc(x))))


class Block(nn.Module):
    def __init__(self, config: GPTConfig, layer_idx: int) -> None:
        super().__init__()
        self.ln_1 = nn.LayerNorm(config.n_embd, eps=config.layer_norm_eps, bias=config.bias)
        self.attn = CausalSelfAttention(config, layer_idx)
        self.ln_2 = nn.LayerNorm(config.n_embd, eps=config.layer_norm_eps, bias=config.bias)
        self.mlp = MLP(config)

    def forward(self, x: torch.Tensor, kv_cache: KVCache | None = None) -> torch.Tensor:
        x = x + self.attn(self.ln_1(x), kv_cache)
        return x + self.mlp(self.ln_2(x))


class GPT(nn.Module):
    """`GPT(config)(idx)` -> logits (batch, time, config.vocab_size) for int64 token ids (batch, time).

    The embedding and head have `config.padded_vocab_size` rows for matmul speed; the extra
    logits are dropped in `logits()`, so nothing downstream (loss, sampling) ever sees them.
    """

    def __init__(self, config: GPTConfig) -> None:
        super().__init__()
        self.config = config
        self.tok_emb = nn.Embedding(config.padded_vocab_size, config.n_embd)
        self.pos_emb = nn.Embedding(config.block_size, config.n_embd)
        self.drop = nn.Dropout(config.dropout)
        self.blocks = nn.ModuleList(Block(config, i) for i in range(config.n_layer))
        self.ln_f = nn.LayerNorm(config.n_embd, eps=config.layer_norm_eps, bias=config.bias)
        self.lm_head = nn.Linear(config.n_embd, config.padded_vocab_size, bias=False)
        self.tie_weights()
        self.init_weights()

    def tie_weights(self) -> None:
        """Make the head weight the very embedding Parameter (again after `to_empty` or `assign=True` loads)."""
        self.lm_head.weight = self.tok_emb.weight

    @torch.no_grad()
    def init_weights(self) -> None:
        """GPT-2 init: N(0, 0.02), residual projections scaled by 1/sqrt(2 * n_layer), zero biases.

        Public so a model built on the meta device can be materialised with `to_empty`,
        `tie_weights` and then this. Done through `Module.apply`, one module at a time, so that a
        wrapper that builds the model partitioned (DeepSpeed's zero.Init gathers each module's
        parameters for the function `apply` runs) initialises it the same way.
        """
        residual = {id(module) for block in self.blocks for module in (block.attn.proj, block.mlp.proj)}
        residual_std = INIT_STD / math.sqrt(2 * self.config.n_layer)

        def init(module: nn.Module) -> None:
            if isinstance(module, nn.Linear | nn.Embedding):
                std = residual_std if id(module) in residual else INIT_STD
                nn.init.normal_(module.weight, mean=0.0, std=std)
            if isinstance(module, nn.Linear | nn.LayerNorm) and module.bias is not None:
                nn.init.zeros_(module.bias)
            if isinstance(module, nn.LayerNorm):
                nn.init.ones_(module.weight)

        self.apply(init)

    def num_params(self) -> int:
        """Distinct parameters, without the never-used padding rows of the embedding.

        Counts what the GPT-2/GPT-3 papers count (position embeddings included, tied head once).
        """
        total = sum(p.numel() for p in self.parameters())  # parameters() yields a tied weight once
        return total - (self.config.padded_vocab_size - self.config.vocab_size) * self.config.n_embd

    def hidden_states(self, idx: torch.Tensor, kv_cache: KVCache | None = None) -> torch.Tensor:
        """Final-LayerNorm outputs (batch, time, n_embd): the features a fine-tuning head reads."""
        start = kv_cache.length if kv_cache is not None else 0
        end = start + idx.size(1)
        if end > self.config.block_size:
            raise ValueError(f"sequence reaches position {end} but model.block_size={self.config.block_size}")
        positions = torch.arange(start, end, device=idx.device)
        x = self.drop(self.tok_emb(idx) + self.pos_emb(positions))
        checkpointing = self.config.activation_checkpointing and self.training and torch.is_grad_enabled()
        for block in self.blocks:
            x = checkpoint(block, x, use_reentrant=False) if checkpointing else block(x, kv_cache)
        if kv_cache is not None:
            kv_cache.advance(idx.size(1))
        return self.ln_f(x)

    def logits(self, hidden: torch.Tensor) -> torch.Tensor:
        """Head over the real vocabulary only: padded columns are computed but never returned."""
        logits = self.lm_head(hidden)
        if self.config.padded_vocab_size != self.config.vocab_size:
            logits = logits[..., : self.config.vocab_size]
        return logits

    def forward(
        self, idx: torch.Tensor, kv_cache: KVCache | None = None, return_hidden: bool = False
    ) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
        hidden = self.hidden_states(idx, kv_cache)
        logits = self.logits(hidden)
        return (logits, hidden) if return_hidden else logits

    def new_kv_cache(self, batch_size: int, max_len: int | None = None) -> KVCache:
        """An empty cache on the model's device and dtype, for up to `max_len` (default block_size) positions."""
        weight = self.tok_emb.weight
        return KVCache(
            self.config.n_layer,
            batch_size,
            self.config.n_head,
            self.config.head_dim,
            min(max_len or self.config.block_size, self.config.block_size),
            weight.device,
            weight.dtype,
        )
