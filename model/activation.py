"""GPT-2's activation, the tanh approximation of GELU: plain PyTorch, or fused passes for large CPU tensors."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from model.cpu_kernels.gelu import CpuGeluTanh

_FUSED_MIN_ELEMENTS = 1 << 16  # below this (decoding), a compiled call's overhead exceeds eager's kernel


def gelu_tanh(x: torch.Tensor) -> torch.Tensor:
    """`F.gelu(x, approximate="tanh")`; on CPU, fused for the large activations of training and prefill."""
    if x.device.type != "cpu" or x.numel() < _FUSED_MIN_ELEMENTS:
        return F.gelu(x, approximate="tanh")
    return CpuGeluTanh.apply(x)
