"""GPT-2's GELU, 0.5 x (1 + tanh(u)) with u = sqrt(2/pi) (x + 0.044715 x^3), as two compiled elementwise passes.

Eager torch's tanh-GELU kernel is slow on CPU (13 ms forward + backward for one layer's (2048, 1536)
bf16 activations on one thread), the same reason Megatron-LM fuses its bias-GELU. Written as the
identical x * sigmoid(2u) and compiled, the forward is one pass; the backward recomputes sigmoid(2u)
from the saved input in one more pass. Compiling the whole function instead lets inductor save two
fp32 intermediates per element for the backward (25 MB per layer of bench/model.py's model) and is
slower: 9.5 ms forward + backward per layer on one thread here against 10.8 ms.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

_A = 2 * math.sqrt(2 / math.pi)  # 2u = x * (_A + _B * x^2)
_B = _A * 0.044715
_FUSED_MIN_ELEMENTS = 1 << 16  # below this, eager's ~4 us beats a compiled call's ~30 us overhead (decoding)


@torch.compile(dynamic=True)
def _forward(x: torch.Tensor) -> torch.Tensor:
    x32 = x.float()
    return (x32 * torch.sigmoid(x32 * (_A + _B * x32 * x32))).to(x.dtype)


@torch.compile(dynamic=True)
def _backward(x: torch.Tensor, grad_out: torch.Tensor) -> torch.Tensor:
    # d/dx x s(2u) = s + x s (1 - s) d(2u)/dx, with d(2u)/dx = _A + 3 _B x^2
    x32 = x.float()
    s = torch.sigmoid(x32 * (_A + _B * x32 * x32))
    return (grad_out.float() * (s + x32 * s * (1 - s) * (_A + 3 * _B * x32 * x32))).to(x.dtype)


class _GeluTanh(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x: torch.Tensor) -> torch.Tensor:
        ctx.save_for_backward(x)
        return _forward(x)

    @staticmethod
    def backward(ctx, grad_out: torch.Tensor) -> torch.Tensor:
        (x,) = ctx.saved_tensors
        return _backward(x, grad_out)


def gelu_tanh(x: torch.Tensor) -> torch.Tensor:
    """`F.gelu(x, approximate="tanh")`, fused for the large activations of training and prefill."""
    if x.numel() < _FUSED_MIN_ELEMENTS:
        return F.gelu(x, approximate="tanh")
    return _GeluTanh.apply(x)
