"""Build numpy index arrays once, cache them on disk, and share them across ranks.

    arrays = cached_arrays(cache_dir, description, build)

``description`` (a JSON-able dict) names everything the arrays depend on; its hash
names the cache files ``<hash>-<array>.npy`` plus ``<hash>-description.json``, which is
written last and so marks a complete entry.  With ``torch.distributed`` initialised,
global rank 0 builds and writes while the other ranks wait at a barrier, then every rank
memory-maps the files -- so **all ranks must call this together**.  If the cache
directory cannot be written (read-only data, say) every rank builds the arrays in
memory instead: they are a deterministic function of the description, so ranks agree.
"""
from __future__ import annotations

import hashlib
import json
import os
import sys

import numpy as np


def _dist():
    try:
        import torch.distributed as dist
    except ImportError:
        return None
    return dist if dist.is_available() and dist.is_initialized() else None


def description_hash(description: dict) -> str:
    text = json.dumps(description, sort_keys=True)
    return hashlib.md5(text.encode("utf-8")).hexdigest()


def _paths(cache_dir: str, key: str, names):
    return {n: os.path.join(cache_dir, f"{key}-{n}.npy") for n in names}


def _load(cache_dir: str, key: str):
    desc = os.path.join(cache_dir, f"{key}-description.json")
    if not os.path.isfile(desc):
        return None
    with open(desc) as f:
        names = json.load(f)["arrays"]
    paths = _paths(cache_dir, key, names)
    if not all(os.path.isfile(p) for p in paths.values()):
        return None
    return {n: np.load(p, mmap_mode="r", allow_pickle=False) for n, p in paths.items()}


def _save(cache_dir: str, key: str, description: dict, arrays: dict) -> bool:
    try:
        os.makedirs(cache_dir, exist_ok=True)
        suffix = f".tmp{os.getpid()}"
        for name, path in _paths(cache_dir, key, arrays).items():
            with open(path + suffix, "wb") as f:
                np.save(f, arrays[name], allow_pickle=False)
            os.replace(path + suffix, path)
        desc = os.path.join(cache_dir, f"{key}-description.json")
        with open(desc + suffix, "w") as f:
            json.dump({"description": description, "arrays": sorted(arrays)}, f, indent=1)
        os.replace(desc + suffix, desc)
        return True
    except OSError as e:
        print(f"warning: cannot write the dataset index cache in {cache_dir} ({e}); every "
              "rank builds the index in memory (set --data-cache-path to a writable "
              "directory to cache it)", file=sys.stderr)
        return False


def cached_arrays(cache_dir: str | None, description: dict, build) -> dict:
    """The arrays ``build()`` returns (a dict name -> ndarray), cached under ``cache_dir``."""
    if cache_dir is None:
        return build()
    key = description_hash(description)
    dist = _dist()
    if dist is None or dist.get_rank() == 0:
        if _load(cache_dir, key) is None:
            _save(cache_dir, key, description, build())
    if dist is not None:
        dist.barrier()
    arrays = _load(cache_dir, key)
    return arrays if arrays is not None else build()
