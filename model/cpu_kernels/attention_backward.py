"""Causal attention for bf16 training on CPU: SDPA's flash forward, a blocked FlashAttention-2 backward.

On CPU, SDPA's flash-attention forward is fast but its backward is several times slower than the
forward (bench/model.py measures both). The backward here keeps SDPA's forward (its output and
per-row log-sum-exp) and recomputes the probabilities the way FlashAttention-2's backward does
(Dao 2023, Algorithm 2), in blocks of query rows so that keys past a block's last row are never
touched, as one compiled graph (inductor fuses the masking, the exp and the softmax gradient into the
matmuls' epilogues). Matmul inputs are bf16, accumulation fp32, as in the flash kernels; the
gradients' error against an fp64 reference stays at bf16 rounding (tests/test_model.py).
"""

from __future__ import annotations

import torch

# Query rows per backward block: the fastest of 64, 128 and all rows in bench/model.py's shapes.
_QUERY_BLOCK = 128


def _causal_attention_backward(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, out: torch.Tensor, log_normalizer: torch.Tensor,
    grad_out: torch.Tensor,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Gradients of softmax(q k^T / sqrt(d) + causal mask) v from the forward's output and log-sum-exp."""
    scale = q.size(-1) ** -0.5
    seq = q.size(-2)
    # D_i = sum_j dP_ij P_ij = grad_out_i . out_i: the softmax gradient's row term without the P matrix.
    row_term = (grad_out.float() * out.float()).sum(-1, keepdim=True)
    grad_q = []
    grad_k = torch.zeros(k.shape, dtype=torch.float32, device=k.device)
    grad_v = torch.zeros(v.shape, dtype=torch.float32, device=v.device)
    for start in range(0, seq, _QUERY_BLOCK):
        end = min(start + _QUERY_BLOCK, seq)  # rows [start, end) see keys [0, end) only
        q_rows, grad_rows = q[..., start:end, :], grad_out[..., start:end, :]
        k_seen, v_seen = k[..., :end, :], v[..., :end, :]
        visible = torch.arange(start, end, device=q.device)[:, None] >= torch.arange(end, device=q.device)
        logits = torch.matmul(q_rows, k_seen.transpose(-1, -2)).float() * scale
        probs = torch.where(visible, torch.exp(logits - log_normalizer[..., start:end, None]), 0.0)
        grad_v[..., :end, :] += torch.matmul(probs.to(v.dtype).transpose(-1, -2), grad_rows)
        grad_probs = torch.matmul(grad_rows, v_seen.transpose(-1, -2)).float()
        grad_logits = (probs * (grad_probs - row_term[..., start:end, :]) * scale).to(q.dtype)
        grad_q.append(torch.matmul(grad_logits, k_seen))
        grad_k[..., :end, :] += torch.matmul(grad_logits.transpose(-1, -2), q_rows)
    return torch.cat(grad_q, dim=-2), grad_k.to(k.dtype), grad_v.to(v.dtype)


_causal_attention_backward_fused = torch.compile(_causal_attention_backward)


class CpuCausalAttention(torch.autograd.Function):
    """SDPA's CPU flash forward; the blocked, compiled backward above."""

    @staticmethod
    def forward(ctx, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        out, log_normalizer = torch.ops.aten._scaled_dot_product_flash_attention_for_cpu(q, k, v, 0.0, True)[:2]
        ctx.save_for_backward(q, k, v, out, log_normalizer)
        return out

    @staticmethod
    def backward(ctx, grad_out: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        return _causal_attention_backward_fused(*ctx.saved_tensors, grad_out)
