"""GPTConfig: the hyperparameters that fully determine a GPT's shape, validated on construction."""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

# Keys a preset or a config mapping may carry besides the fields: a label only.
_IGNORED_KEYS = frozenset({"name"})


@dataclass(frozen=True)
class GPTConfig:
    """GPT-2/GPT-3 decoder shape. Every key is reachable as `model.<field>` in the Hydra tree."""

    vocab_size: int
    block_size: int
    n_layer: int
    n_head: int
    n_embd: int
    dropout: float = 0.0
    bias: bool = True
    vocab_multiple: int = 64
    activation_checkpointing: bool = False
    layer_norm_eps: float = 1e-5

    def __post_init__(self) -> None:
        for key in ("vocab_size", "block_size", "n_layer", "n_head", "n_embd", "vocab_multiple"):
            value = getattr(self, key)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"model.{key}={value!r} must be a positive integer")
        for key in ("bias", "activation_checkpointing"):
            if not isinstance(getattr(self, key), bool):
                raise ValueError(f"model.{key}={getattr(self, key)!r} must be true or false")
        if (
            isinstance(self.dropout, bool)
            or not isinstance(self.dropout, int | float)
            or not 0 <= self.dropout < 1
        ):
            raise ValueError(f"model.dropout={self.dropout!r} must be a number in [0, 1)")
        if (
            isinstance(self.layer_norm_eps, bool)
            or not isinstance(self.layer_norm_eps, int | float)
            or self.layer_norm_eps <= 0
        ):
            raise ValueError(f"model.layer_norm_eps={self.layer_norm_eps!r} must be a positive number")
        if self.n_embd % self.n_head:
            raise ValueError(f"model.n_embd={self.n_embd} is not divisible by model.n_head={self.n_head}")

    @property
    def head_dim(self) -> int:
        return self.n_embd // self.n_head

    @property
    def padded_vocab_size(self) -> int:
        """Rows of the embedding/head: vocab rounded up so the head matmul has friendly shapes."""
        return math.ceil(self.vocab_size / self.vocab_multiple) * self.vocab_multiple

    @classmethod
    def from_dict(cls, values: Mapping[str, Any]) -> GPTConfig:
        """Build from a plain or OmegaConf mapping; unknown or missing keys fail with one line."""
        values = dict(values.items())
        fields = {f.name: f for f in dataclasses.fields(cls)}
        unknown = sorted(set(values) - set(fields) - _IGNORED_KEYS)
        if unknown:
            raise ValueError(
                f"model.{unknown[0]} is not a GPTConfig field; known fields: {', '.join(fields)}"
            )
        missing = [
            name for name, f in fields.items() if f.default is dataclasses.MISSING and name not in values
        ]
        if missing:
            raise ValueError(f"model.{missing[0]} is required (set it in the preset or as an override)")
        return cls(**{name: values[name] for name in fields if name in values})

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)
