"""The GPT model: modules, saved-model formats (native and HF GPT-2), generation, FLOPs.

`GPT` is imported on first use, so that reading a `GPTConfig` (the training commands check their
settings against it before anything else) does not import torch.
"""

from typing import Any

from model.config import GPTConfig

__all__ = ["GPT", "GPTConfig"]


def __getattr__(name: str) -> Any:
    if name == "GPT":
        from model.gpt import GPT

        return GPT
    raise AttributeError(f"module 'model' has no attribute {name!r}")
