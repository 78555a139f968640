"""The converters' only contact with the checkpoint format (the rest of tools/checkpoint is format-agnostic).

    tensors, args = read_checkpoint("ckpt")          # full tensors by parameter name, saved flags
    write_checkpoint("ckpt2", tensors, args)         # a weights-only checkpoint of them

Parameter names are global and stable (``decoder.layers.<i>.self_attention.linear_qkv.weight`` ...)
and tensors are full (unsharded), so a checkpoint of any layout reads the same and the one written
loads into any layout.  The written checkpoint is iteration 0 and marked ``model_only``: ``--load``
starts from it as ``--finetune`` does (training/checkpoint_args.py), and ``--use-checkpoint-args``
takes its model flags.

Today's format is the single-file ``torch`` one (megatron_sp/checkpointing/files.py): the iteration
directory, ``model_optim.pt``, ``metadata.json`` written last, then the tracker.
"""
from __future__ import annotations

import json
import os
import shutil
import sys
import time

sys.path.insert(0, os.path.abspath(os.path.join(os.path.dirname(__file__), os.pardir, os.pardir)))

from megatron_sp import checkpointing as ckpt  # noqa: E402
from megatron_sp.checkpointing.files import (FORMAT_VERSION, fsync_dir, list_files, torch_save,  # noqa: E402
                                             write_text_atomic)
from megatron_sp.checkpointing.save_load import MODEL_SHAPE_FLAGS  # noqa: E402


def read_checkpoint(load_dir: str) -> tuple:
    """``(tensors, args)``: the full model tensors by name and the flags (a dict) of the checkpoint
    the tracker of ``load_dir`` names."""
    iteration = ckpt.read_tracker(load_dir) if os.path.isdir(load_dir) else None
    if iteration is None:
        raise ckpt.CheckpointError(f"--load {load_dir}: no {ckpt.TRACKER} there; point it at a checkpoint "
                                   "directory (the one holding the tracker file)")
    path = ckpt.checkpoint_dir(load_dir, iteration)
    return dict(ckpt.load_full_state(path)["model"]), ckpt.read_metadata(path)["args"]


def _jsonable(value):
    if isinstance(value, (str, int, float, bool)) or value is None:
        return value
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    return str(value)


def write_checkpoint(save_dir: str, tensors: dict, args: dict) -> str:
    """Write ``tensors`` (full, by name) as a weights-only checkpoint with the flags ``args``; return its path."""
    final = os.path.join(save_dir, ckpt.iter_dir_name(0))
    tmp = final + ".tmp"
    os.makedirs(save_dir, exist_ok=True)
    if ckpt.read_tracker(save_dir) is not None:
        raise ckpt.CheckpointError(f"--save {save_dir} already holds a checkpoint ({ckpt.TRACKER}); "
                                   "give an empty directory")
    shutil.rmtree(tmp, ignore_errors=True)
    os.makedirs(tmp)
    torch_save({"model": {k: v.contiguous() for k, v in tensors.items()}, "optimizer": {}},
               os.path.join(tmp, ckpt.MODEL_FILE))
    meta = {"format_version": FORMAT_VERSION, "iteration": 0, "consumed_samples": 0, "model_only": True,
            "layout": {"world_size": 1, "tp": 1, "cp": 1, "dp": 1, "ulysses": 1, "ring": 1},
            "model_shape": {k: _jsonable(args.get(k)) for k in MODEL_SHAPE_FLAGS},
            "args": {k: _jsonable(v) for k, v in sorted(args.items())},
            "files": list_files(tmp), "saved_at": time.time()}
    with open(os.path.join(tmp, ckpt.METADATA), "w") as f:  # last: it marks the directory complete
        json.dump(meta, f, indent=1)
    fsync_dir(tmp)
    shutil.rmtree(final, ignore_errors=True)
    os.rename(tmp, final)
    write_text_atomic(os.path.join(save_dir, ckpt.TRACKER), "0\n")
    return final
