"""Causal self-attention through PyTorch SDPA.

Every device, precision, mask and dropout uses SDPA as it is, except bf16 training on CPU, where
SDPA's backward is slow and `model.cpu_kernels.attention_backward` takes its place.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from model.cpu_kernels.attention_backward import CpuCausalAttention


def attention(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask: torch.Tensor | None, is_causal: bool, dropout_p: float
) -> torch.Tensor:
    """`F.scaled_dot_product_attention(q, k, v, mask, dropout_p, is_causal)` for (batch, heads, time, head_dim)."""
    if (
        is_causal
        and mask is None
        and dropout_p == 0.0
        and q.device.type == "cpu"
        and q.dtype == torch.bfloat16
        and torch.is_grad_enabled()
        and q.requires_grad
    ):
        return CpuCausalAttention.apply(q, k, v)
    return F.scaled_dot_product_attention(q, k, v, attn_mask=mask, is_causal=is_causal, dropout_p=dropout_p)
