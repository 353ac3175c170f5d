"""Next-token cross-entropy, the pretraining objective, in fp32 whatever the logits' dtype."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from model.cpu_kernels.sliced_loss import SlicedCrossEntropy


def next_token_loss(logits: torch.Tensor, targets: torch.Tensor, ignore_index: int = -100) -> torch.Tensor:
    """Mean fp32 cross-entropy over positions whose target is not `ignore_index`.

    `targets[b, t]` is the token that follows position t (already shifted, as the data loader
    yields input/target pairs). `logits` come from `GPT.forward`, which returns the real
    vocabulary only, so padding columns cannot take probability mass. Works for fp32 and bf16
    logits alike (a model cast to bf16 by DeepSpeed, or autocast); the arithmetic is fp32.
    """
    vocab = logits.size(-1)
    if logits.device.type == "cpu":
        return SlicedCrossEntropy.apply(logits.reshape(-1, vocab), targets.reshape(-1), ignore_index)
    return F.cross_entropy(logits.reshape(-1, vocab).float(), targets.reshape(-1), ignore_index=ignore_index)
