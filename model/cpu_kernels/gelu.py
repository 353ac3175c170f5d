"""GPT-2's GELU, 0.5 x (1 + tanh(u)) with u = sqrt(2/pi) (x + 0.044715 x^3), as two compiled passes on CPU.

Eager torch's tanh-GELU kernel is slow on CPU, the same reason Megatron-LM fuses its bias-GELU.
Written as the identical x * sigmoid(2u) and compiled, the forward is one pass; the backward
recomputes sigmoid(2u) from the saved input in one more pass. Compiling the whole function instead
lets inductor save two fp32 intermediates per element for the backward, and is slower.
"""

from __future__ import annotations

import math

import torch

_A = 2 * math.sqrt(2 / math.pi)  # 2u = x * (_A + _B * x^2)
_B = _A * 0.044715


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


class CpuGeluTanh(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x: torch.Tensor) -> torch.Tensor:
        ctx.save_for_backward(x)
        return _forward(x)

    @staticmethod
    def backward(ctx, grad_out: torch.Tensor) -> torch.Tensor:
        (x,) = ctx.saved_tensors
        return _backward(x, grad_out)
