"""Activation memory that does not shrink with the sequence-parallel degree: sequence tiling with
recompute (the MLP and the loss work on chunks of the local tokens) and host offload of what a
layer keeps for backward (docs/ARCHITECTURE.md, "activations")."""
from .offload import ActivationOffloader
from .tiling import sequence_tiled

__all__ = ["ActivationOffloader", "sequence_tiled"]
