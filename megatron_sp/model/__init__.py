"""The GPT model: embedding, pre-norm decoder layers, vocab-parallel output.

``config`` imports no torch (the memory model reads its defaults); ``GPTModel`` is imported on
first use.
"""
from .config import GPTConfig

__all__ = ["GPTConfig", "GPTModel"]


def __getattr__(name):  # the torch part, on first use
    if name == "GPTModel":
        from .gpt import GPTModel
        return GPTModel
    raise AttributeError(name)
