"""Preallocated key/value cache: decoding reads past keys instead of recomputing them."""

from __future__ import annotations

import torch


class KVCache:
    """Keys and values of every layer for positions [0, length), in buffers sized for `max_len`.

    Layers write their new keys/values with `update`; the model calls `advance` once all layers
    have seen the step, so every layer of one forward pass writes at the same offset.
    """

    def __init__(
        self,
        n_layer: int,
        batch_size: int,
        n_head: int,
        head_dim: int,
        max_len: int,
        device: torch.device | str,
        dtype: torch.dtype,
    ) -> None:
        shape = (n_layer, batch_size, n_head, max_len, head_dim)
        self.keys = torch.empty(shape, device=device, dtype=dtype)
        self.values = torch.empty(shape, device=device, dtype=dtype)
        self.max_len = max_len
        self.length = 0

    def update(self, layer: int, k: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Store k, v (batch, heads, new, head_dim) after the cached ones; return all keys and values."""
        end = self.length + k.size(2)
        if end > self.max_len:
            raise ValueError(
                f"KV cache holds {self.max_len} positions; writing up to position {end} overflows it"
            )
        self.keys[layer, :, :, self.length : end] = k
        self.values[layer, :, :, self.length : end] = v
        return self.keys[layer, :, :, :end], self.values[layer, :, :, :end]

    def advance(self, steps: int) -> None:
        self.length += steps

    def reset(self) -> None:
        self.length = 0
