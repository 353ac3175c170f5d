"""The GPT model: modules, saved-model formats (native and HF GPT-2), generation, FLOPs."""

from model.config import GPTConfig
from model.gpt import GPT

__all__ = ["GPT", "GPTConfig"]
