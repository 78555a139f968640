"""Token ids of the data against the run's vocabulary, checked at start-up.

    check_token_ids(["0.3", "A", "0.7", "B"], vocab_size=32000, padded_vocab_size=32128,
                    tokenizer="--tokenizer-type SentencePieceTokenizer --tokenizer-model tok.model")

Data tokenised with another (larger) tokenizer than the run's must never train: at TP 1
the embedding fails with an IndexError, at TP > 1 the vocab-parallel embedding silently
zeroes the ids no rank owns, and on CUDA it is a device-side assert.  So before the
first step every rank compares the smallest and largest id of each ``--data-path``
prefix with the tokenizer's size (ids in the padding rows of the padded vocabulary are
out of range too: no tokenizer produces them) and raises one line naming the path, the
id and the sizes.

The range is a scan of the whole ``.bin`` (chunked, so memory stays small; each rank
scans its share), done once and cached with the dataset index (``index_cache``, with its
checksums) under a key that includes the file's size and modification time, so a
replaced file is scanned again.
"""
from __future__ import annotations

import os

import numpy as np

from .blended_dataset import _open, parse_data_path
from .index_cache import _dist, read_entry, write_entry
from .indexed_dataset import IndexedDataset, data_file_path

CHUNK_TOKENS = 1 << 26


def scan_token_id_range(indexed: IndexedDataset, start: int = 0, end: int | None = None):
    """``(smallest, largest)`` id among tokens ``[start, end)`` of the ``.bin``; None when empty."""
    data = indexed.bin
    end = data.size if end is None else end
    lo = hi = None
    for first in range(start, end, CHUNK_TOKENS):
        chunk = data[first:min(first + CHUNK_TOKENS, end)]
        c_lo, c_hi = int(chunk.min()), int(chunk.max())
        lo = c_lo if lo is None else min(lo, c_lo)
        hi = c_hi if hi is None else max(hi, c_hi)
    return None if lo is None else (lo, hi)


def token_id_range(indexed: IndexedDataset, cache_dir: str | None) -> tuple[int, int]:
    """``(smallest, largest)`` id of the whole ``.bin``, ``(0, -1)`` without tokens.

    Rank 0 looks in the cache; if the entry is missing, every rank scans its ``1/world`` of
    the file (so a TB-sized corpus takes seconds, not a wait on rank 0 that could outlast
    --distributed-timeout-minutes), the parts are gathered and rank 0 caches the result.
    All ranks must call this together.
    """
    path = data_file_path(indexed.prefix)
    st = os.stat(path)
    description = {"class": "TokenIdRange", "version": 1, "prefix": os.path.abspath(indexed.prefix),
                   "bin_bytes": st.st_size, "bin_mtime_ns": st.st_mtime_ns, "dtype": indexed.dtype.name}
    dist = _dist()
    rank, world = (dist.get_rank(), dist.get_world_size()) if dist else (0, 1)
    found = [None]
    if rank == 0 and cache_dir:
        entry = read_entry(cache_dir, description)
        found[0] = tuple(int(x) for x in entry["range"]) if entry is not None else None
    if dist:
        dist.broadcast_object_list(found, src=0)
    if found[0] is not None:
        return found[0]
    n = indexed.num_tokens
    parts = [scan_token_id_range(indexed, rank * n // world, (rank + 1) * n // world)]
    if dist:
        mine, parts = parts[0], [None] * world
        dist.all_gather_object(parts, mine)
    parts = [p for p in parts if p is not None]
    lo, hi = (min(p[0] for p in parts), max(p[1] for p in parts)) if parts else (0, -1)
    if rank == 0 and cache_dir:
        write_entry(cache_dir, description, {"range": np.array([lo, hi], dtype=np.int64)})
    return lo, hi


def check_token_ids(data_path, vocab_size: int, padded_vocab_size: int, tokenizer: str,
                    cache_dir: str | None = None, default_cache_dir=None) -> None:
    """Raise ``ValueError`` when a prefix of ``data_path`` holds an id outside ``[0, vocab_size)``.

    ``cache_dir`` (``--data-cache-path``) or, when None, ``default_cache_dir(prefix)``
    holds the cached range; with neither, the range is scanned every time.
    """
    prefixes, _ = parse_data_path(data_path)
    for prefix in prefixes:
        where = cache_dir or (default_cache_dir(prefix) if default_cache_dir else None)
        lo, hi = token_id_range(_open(prefix), where)
        if hi < 0 and lo == 0:
            continue  # no tokens
        if lo < 0:
            raise ValueError(f"--data-path {prefix} holds the negative token id {lo}: the .bin file is not "
                             "token ids or is corrupt; re-run tools/preprocess_data.py")
        if hi >= vocab_size:
            raise ValueError(
                f"--data-path {prefix} holds token id {hi}, outside the vocabulary: the tokenizer ({tokenizer}) "
                f"has {vocab_size} ids (padded vocabulary {padded_vocab_size}), so the data was tokenized with "
                "another tokenizer; pass the tokenizer it was made with, or re-tokenize it with "
                "tools/preprocess_data.py" + (
                    f" (id {hi} = --vocab-size as the EOD: the NullTokenizer of V + 1 ids of megatron-core <= 0.17 "
                    "and of this codebase before; add --legacy-tokenizer)"
                    if hi == vocab_size and tokenizer.startswith("--tokenizer-type NullTokenizer")
                    and "--legacy-tokenizer" not in tokenizer else ""))
