"""Whole models on one process: read any checkpoint's full weights, write a weights-only checkpoint.

What the tools need (generate_text.py, tools/checkpoint/ Hugging Face conversion), without a
process group::

    tensors = read_full_model("ckpt/iter_0000100")          # {name: full tensor}, either format
    write_model_only("ckpt2", tensors, args)                # iteration 0, torch_dist, model only

A weights-only checkpoint is marked ``model_only`` in its metadata: ``--load`` starts from it
as ``--finetune`` does, and ``--use-checkpoint-args`` takes its model flags.
"""
from __future__ import annotations

import os
import shutil
import time

from . import torch_dist, torch_legacy
from .files import (FORMAT_VERSION, TRACKER, CheckpointError, ckpt_format, commit_checkpoint, crc32_file,
                    iter_dir_name, jsonable, list_files, read_metadata, read_tracker, verify_checksums)


def read_full_model(path: str) -> dict:
    """``{name: full tensor}`` of a complete checkpoint directory of either format (checksums verified)."""
    meta = read_metadata(path)
    mismatch = verify_checksums(path, meta.get("checksums") or {})
    if mismatch:
        raise CheckpointError(mismatch)
    if ckpt_format(meta) == "torch":
        return dict(torch_legacy.load_full_state(path)["model"])
    return torch_dist.read_full_model(path)


def write_model_only(save_dir: str, tensors: dict, args: dict, shape_flags) -> str:
    """Write full ``tensors`` (by parameter name) as an iteration-0 weights-only torch_dist checkpoint
    with the flags ``args`` (a dict); ``shape_flags`` are the flags a load checks.  Returns its path."""
    tmp = os.path.join(save_dir, iter_dir_name(0)) + ".tmp"
    os.makedirs(save_dir, exist_ok=True)
    if read_tracker(save_dir) is not None:
        raise CheckpointError(f"--save {save_dir} already holds a checkpoint ({TRACKER}); give an empty directory")
    shutil.rmtree(tmp, ignore_errors=True)
    os.makedirs(tmp)
    entries = {name: (None, tuple(t.shape), [(t.contiguous(), (0,) * t.dim())]) for name, t in tensors.items()}
    torch_dist.save(torch_dist.state_dict(entries, {}), tmp, None)
    files = list_files(tmp)
    meta = {"format_version": FORMAT_VERSION, "ckpt_format": "torch_dist", "iteration": 0, "consumed_samples": 0,
            "model_only": True, "layout": {"world_size": 1, "tp": 1, "cp": 1, "dp": 1, "ulysses": 1, "ring": 1},
            "model_shape": {k: jsonable(args.get(k)) for k in shape_flags},
            "args": {k: jsonable(v) for k, v in sorted(args.items())}, "files": files,
            "checksums": {rel: crc32_file(os.path.join(tmp, rel)) for rel in files}, "saved_at": time.time()}
    final = commit_checkpoint(tmp, meta, save_dir, 0)
    return final
