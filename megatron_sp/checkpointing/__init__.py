"""Checkpoints: atomic save/load of model, optimizer and training state (docs/ARCHITECTURE.md, "checkpointing").

``save_load``: the protocol (temporary directory, agreement, rename, tracker last, async
finalisation) and loading; ``state``: what a checkpoint holds, by global name and shape;
``torch_dist`` / ``torch_legacy``: the two formats (``--ckpt-format``); ``files``: the
on-disk side (names, tracker, checksums, validation) that tools use without a process group;
``model_only``: whole models on one process (read any checkpoint, write a weights-only one).
"""
from .files import (METADATA, MODEL_FILE, TRACKER, CheckpointError, check_save_dir, checkpoint_dir, ckpt_format,
                    iter_dir_name, read_metadata, read_tracker, write_text_atomic)

__all__ = ["METADATA", "MODEL_FILE", "TRACKER", "CheckpointError", "check_save_dir", "checkpoint_dir",
           "ckpt_format", "iter_dir_name", "read_metadata", "read_tracker", "write_text_atomic",
           "finish_pending_save", "load_checkpoint", "read_full_model", "save_checkpoint", "load_full_state",
           "write_model_only", "MODEL_SHAPE_FLAGS"]

_TORCH_PARTS = {"read_full_model": "model_only", "write_model_only": "model_only", "load_full_state": "torch_legacy",
                "MODEL_SHAPE_FLAGS": "save_load", "finish_pending_save": "save_load",
                "load_checkpoint": "save_load", "save_checkpoint": "save_load"}


def __getattr__(name):  # the torch parts, on first use: ``files`` imports no torch
    if name in _TORCH_PARTS:
        import importlib
        return getattr(importlib.import_module(f".{_TORCH_PARTS[name]}", __name__), name)
    raise AttributeError(name)
