"""Build numpy index arrays once, cache them on disk, and share them across ranks.

    arrays = cached_arrays(cache_dir, description, build)

``description`` (a JSON-able dict) names everything the arrays depend on; its hash
names the cache files ``<hash>-<array>.npy`` plus ``<hash>-description.json``, which is
written last and so marks a complete entry.  With ``torch.distributed`` initialised,
global rank 0 builds and writes while the other ranks wait for its verdict, then every
rank memory-maps the files -- so **all ranks must call this together**.  If the cache
directory cannot be written (read-only data, say) every rank builds the arrays in
memory instead: they are a deterministic function of the description, so ranks agree.

Every file's CRC-32 and size are recorded in the description file when it is written.
The rank that loads an entry first (rank 0, or the only process) verifies them; a
damaged file, an unreadable description or an entry written without checksums is named
in a warning and rebuilt, never used.  The other ranks check the sizes only: they read
the files rank 0 has just verified.
"""
from __future__ import annotations

import hashlib
import json
import os
import sys
import zlib

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


def _warn(message: str) -> None:
    print(f"warning: {message}", file=sys.stderr, flush=True)


def crc32_of(path: str, chunk: int = 1 << 24) -> str:
    crc = 0
    with open(path, "rb") as f:
        while block := f.read(chunk):
            crc = zlib.crc32(block, crc)
    return f"{crc:08x}"


class _CRCWriter:
    """A write-only file wrapper that checksums exactly the bytes written (np.save writes
    through ``write`` in chunks when given something that is not a real file)."""

    def __init__(self, f):
        self.f, self.crc, self.nbytes = f, 0, 0

    def write(self, data) -> int:
        data = memoryview(data).cast("B")
        self.crc = zlib.crc32(data, self.crc)
        self.nbytes += data.nbytes
        return self.f.write(data)


def _load(cache_dir: str, key: str, verify: bool):
    """The cached arrays, or None when the entry is missing, incomplete or (``verify``) damaged."""
    desc = os.path.join(cache_dir, f"{key}-description.json")
    if not os.path.isfile(desc):
        return None
    rebuild = "; rebuilding the entry"
    try:
        with open(desc) as f:
            meta = json.load(f)
        names, sums = meta["arrays"], meta.get("checksums")
    except (OSError, ValueError, KeyError, TypeError) as e:
        _warn(f"dataset index cache file {desc} cannot be read ({e}){rebuild}")
        return None
    if sums is None or set(sums) != set(names):
        _warn(f"dataset index cache entry {desc} was written without checksums (an older version){rebuild}")
        return None
    paths = _paths(cache_dir, key, names)
    if not all(os.path.isfile(p) for p in paths.values()):
        return None
    for n, p in paths.items():
        size = os.path.getsize(p)
        if size != sums[n]["bytes"]:
            _warn(f"dataset index cache file {p} has {size} bytes, {sums[n]['bytes']} were written{rebuild}")
            return None
        if verify and crc32_of(p) != sums[n]["crc32"]:
            _warn(f"dataset index cache file {p} fails its checksum (CRC-32 {crc32_of(p)}, written "
                  f"{sums[n]['crc32']}): the file is damaged{rebuild}")
            return None
    try:
        return {n: np.load(p, mmap_mode="r", allow_pickle=False) for n, p in paths.items()}
    except (OSError, ValueError) as e:
        _warn(f"dataset index cache entry {desc} cannot be loaded ({e}){rebuild}")
        return None


def _save(cache_dir: str, key: str, description: dict, arrays: dict) -> bool:
    try:
        os.makedirs(cache_dir, exist_ok=True)
        suffix = f".tmp{os.getpid()}"
        sums = {}
        for name, path in _paths(cache_dir, key, arrays).items():
            with open(path + suffix, "wb") as f:
                w = _CRCWriter(f)
                np.save(w, np.ascontiguousarray(arrays[name]), allow_pickle=False)
            sums[name] = {"crc32": f"{w.crc:08x}", "bytes": w.nbytes}
            os.replace(path + suffix, path)
        desc = os.path.join(cache_dir, f"{key}-description.json")
        with open(desc + suffix, "w") as f:
            json.dump({"description": description, "arrays": sorted(arrays), "checksums": sums}, f, indent=1)
        os.replace(desc + suffix, desc)
        return True
    except OSError as e:
        print(f"warning: cannot write the dataset index cache in {cache_dir} ({e}); every "
              "rank builds the index in memory (set --data-cache-path to a writable "
              "directory to cache it)", file=sys.stderr)
        return False


def read_entry(cache_dir: str, description: dict):
    """The verified arrays of the entry ``description`` names, or None (missing; damaged: warned).
    For callers with their own protocol across ranks (token_ids.py); most want :func:`cached_arrays`."""
    return _load(cache_dir, description_hash(description), verify=True)


def write_entry(cache_dir: str, description: dict, arrays: dict) -> bool:
    return _save(cache_dir, description_hash(description), description, arrays)


def cached_arrays(cache_dir: str | None, description: dict, build) -> dict:
    """The arrays ``build()`` returns (a dict name -> ndarray), cached under ``cache_dir``."""
    if cache_dir is None:
        return build()
    key = description_hash(description)
    dist = _dist()
    usable = [False]  # rank 0's verdict: the entry on disk is verified or freshly written
    if dist is None or dist.get_rank() == 0:
        usable[0] = _load(cache_dir, key, verify=True) is not None or _save(
            cache_dir, key, description, build())
    if dist is not None:
        dist.broadcast_object_list(usable, src=0)  # the others wait for rank 0 here
    arrays = _load(cache_dir, key, verify=False) if usable[0] else None
    return arrays if arrays is not None else build()
