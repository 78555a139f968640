"""Checkpoints: atomic save/load of model, optimizer and training state (DESIGN.md section 6).

``save_load``: the protocol (temporary directory, agreement, rename, tracker last, async
finalisation) and loading; ``state``: what a checkpoint holds, by global name and shape;
``torch_dist`` / ``torch_legacy``: the two formats (``--ckpt-format``); ``files``: the
on-disk side (names, tracker, checksums, validation) that tools use without a process group;
``model_only``: whole models on one process (read any checkpoint, write a weights-only one).
"""
from .files import (METADATA, MODEL_FILE, TRACKER, CheckpointError, check_save_dir, checkpoint_dir, ckpt_format,
                    iter_dir_name, read_metadata, read_tracker, write_text_atomic)
from .model_only import read_full_model, write_model_only
from .save_load import MODEL_SHAPE_FLAGS, finish_pending_save, load_checkpoint, save_checkpoint
from .torch_legacy import load_full_state

__all__ = ["METADATA", "MODEL_FILE", "TRACKER", "CheckpointError", "check_save_dir", "checkpoint_dir",
           "ckpt_format", "iter_dir_name", "read_metadata", "read_tracker", "write_text_atomic",
           "finish_pending_save", "load_checkpoint", "read_full_model", "save_checkpoint", "load_full_state",
           "write_model_only", "MODEL_SHAPE_FLAGS"]
