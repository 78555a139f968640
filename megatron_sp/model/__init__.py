"""The GPT model: embedding, pre-norm decoder layers, vocab-parallel output."""
from .config import GPTConfig
from .gpt import GPTModel

__all__ = ["GPTConfig", "GPTModel"]
