"""The trainer's plan samples as a litgpt data module, for bench/peers/litgpt_pretrain.py.

A module of its own, not part of the training script: litgpt's checkpoint pickles the train dataloader,
and bench/peers/litgpt_export.py can only load that checkpoint when these classes live at an importable
name rather than in a script's `__main__`.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch
from litgpt.data import DataModule
from torch.utils.data import DataLoader, Dataset


class TokenRows(Dataset):
    """Rows of an (n, seq_len + 1) token-id array, read from a memory-mapped .npy."""

    def __init__(self, path: Path) -> None:
        self.rows = np.load(path, mmap_mode="r")

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, index: int) -> torch.Tensor:
        return torch.from_numpy(self.rows[index].astype(np.int64))


class PlanSamples(DataModule):
    """The exported rows in file order, never shuffled.

    Fabric gives each rank a DistributedSampler (shuffle off for a sequential loader) that deals row i
    to rank i % world_size, so optimizer step s sees rows [s*B, (s+1)*B): the trainer's global batch s.
    """

    def __init__(self, train_rows: Path, val_rows: Path) -> None:
        super().__init__()
        self.train_rows, self.val_rows = train_rows, val_rows
        self.batch_size = 1

    def connect(self, tokenizer: Any = None, batch_size: int = 1, max_seq_length: int | None = None,
                **kwargs: Any) -> None:
        self.batch_size = batch_size

    def train_dataloader(self) -> DataLoader:
        return DataLoader(TokenRows(self.train_rows), batch_size=self.batch_size)

    def val_dataloader(self) -> DataLoader:
        return DataLoader(TokenRows(self.val_rows), batch_size=self.batch_size)
