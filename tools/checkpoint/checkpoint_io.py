"""The converters' only contact with the checkpoint format (the rest of tools/checkpoint is format-agnostic).

    tensors, args = read_checkpoint("ckpt")          # full tensors by parameter name, saved flags
    write_checkpoint("ckpt2", tensors, args)         # a weights-only checkpoint of them

Parameter names are global and stable (``decoder.layers.<i>.self_attention.linear_qkv.weight`` ...)
and tensors are full (unsharded), so a checkpoint of any layout and format reads the same, and the
one written (``torch_dist``, iteration 0, marked ``model_only``) loads into any layout: ``--load``
starts from it as ``--finetune`` does (arguments/checkpoint_args.py), and ``--use-checkpoint-args``
takes its model flags.  Both are megatron_sp/checkpointing/model_only.py.
"""
from __future__ import annotations

import os
import sys

sys.path.insert(0, os.path.abspath(os.path.join(os.path.dirname(__file__), os.pardir, os.pardir)))

from megatron_sp import checkpointing as ckpt  # noqa: E402


def read_checkpoint(load_dir: str) -> tuple:
    """``(tensors, args)``: the full model tensors by name and the flags (a dict) of the checkpoint
    the tracker of ``load_dir`` names."""
    iteration = ckpt.read_tracker(load_dir) if os.path.isdir(load_dir) else None
    if iteration is None:
        raise ckpt.CheckpointError(f"--load {load_dir}: no {ckpt.TRACKER} there; point it at a checkpoint "
                                   "directory (the one holding the tracker file)")
    path = ckpt.checkpoint_dir(load_dir, iteration)
    return ckpt.read_full_model(path), ckpt.read_metadata(path)["args"]


def write_checkpoint(save_dir: str, tensors: dict, args: dict) -> str:
    """Write ``tensors`` (full, by name) as a weights-only checkpoint with the flags ``args``; return its path."""
    return ckpt.write_model_only(save_dir, tensors, args, ckpt.MODEL_SHAPE_FLAGS)
