"""The GPT-1 fine-tuning model and objective: a linear head on the hidden state at <e>, plus the LM loss.

Radford et al. 2018, equation (5): L3 = L2(task) + lambda * L1(language modelling on the same
inputs), lambda = 0.5. The head is a single linear layer W_y (equation 3): its width is the number
of classes for classification/entailment, and 1 for similarity (applied to the sum of the two
orders' hidden states) and multiple choice (applied per answer, then soft-maxed over answers).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from model import GPT
from model.loss import next_token_loss
from train.finetune.examples import IGNORE, Batch


class TaskModel(nn.Module):
    """`TaskModel(gpt, kind, outputs)(idx, extract, rows_per_example)` -> (LM logits, task outputs).

    Task outputs are (examples, classes) logits, (examples, choices) answer scores, (examples,)
    similarity predictions, or None for instruction tuning, which trains the LM alone.
    """

    def __init__(self, gpt: GPT, kind: str, outputs: int, dropout: float) -> None:
        super().__init__()
        self.gpt = gpt
        self.kind = kind
        self.dropout = nn.Dropout(dropout)
        self.head = nn.Linear(gpt.config.n_embd, outputs) if outputs else None
        if self.head is not None:
            nn.init.normal_(self.head.weight, std=0.02)
            nn.init.zeros_(self.head.bias)

    def forward(self, idx: torch.Tensor, extract: torch.Tensor,
                rows_per_example: int) -> tuple[torch.Tensor, torch.Tensor | None]:
        lm_logits, hidden = self.gpt(idx, return_hidden=True)
        if self.head is None:
            return lm_logits, None
        features = hidden[torch.arange(idx.size(0), device=idx.device), extract]
        features = self.dropout(features.view(-1, rows_per_example, features.size(-1)))
        if self.kind == "similarity":
            return lm_logits, self.head(features.sum(dim=1)).squeeze(-1)
        if self.kind == "multiple_choice":
            return lm_logits, self.head(features).squeeze(-1)
        return lm_logits, self.head(features[:, 0])


def task_loss(kind: str, outputs: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """fp32 task loss: squared error for similarity scores, cross-entropy over classes or answers."""
    if kind == "similarity":
        return F.mse_loss(outputs.float(), targets)
    return F.cross_entropy(outputs.float(), targets.long())


def objective(model: nn.Module, batch: Batch, kind: str,
              lm_weight: float) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor, torch.Tensor | None]:
    """(loss to minimise, task loss, LM loss, task outputs) for one batch.

    Instruction tuning has no head: its loss is the LM loss over response tokens alone.
    """
    lm_logits, outputs = model(batch.idx, batch.extract, batch.rows_per_example)
    lm = next_token_loss(lm_logits, batch.lm_targets, ignore_index=IGNORE)
    if outputs is None:
        return lm, None, lm, None
    task = task_loss(kind, outputs, batch.targets)
    return (task + lm_weight * lm if lm_weight else task), task, lm, outputs
