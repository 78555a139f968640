"""Blending several datasets with weights: ``--data-path 0.3 A 0.7 B``.

The blend is a fixed schedule, not a random draw: dataset ``d``'s k-th sample is due at
time ``(k + 1/2) / w_d`` and the schedule takes samples in order of due time (ties by
dataset index).  Every prefix of the schedule then holds each dataset within one sample
of its exact share ``n * w_d``, the first ``n`` entries do not depend on the total
length, and nothing depends on the parallel layout.
"""
from __future__ import annotations

import numpy as np
import torch

from .indexed_dataset import IndexedDataset


def parse_data_path(data_path: list[str]) -> tuple[list[str], list[float]]:
    """Megatron's ``--data-path`` list -> ``(prefixes, normalised weights)``.

    ``["A"]``; ``["0.3", "A", "0.7", "B"]`` (weights need not sum to 1); or
    ``["A", "B"]`` without weights, which weighs each by its token count (as if the
    datasets were concatenated).
    """
    if isinstance(data_path, str):
        data_path = data_path.split()
    items = [str(x) for x in data_path]
    if not items:
        raise ValueError("--data-path is empty: give PREFIX, or W1 PREFIX1 W2 PREFIX2 ...")

    def is_number(s):
        try:
            float(s)
            return True
        except ValueError:
            return False

    if len(items) == 1:
        return items, [1.0]
    if is_number(items[0]):
        if len(items) % 2 or not all(is_number(w) for w in items[0::2]) \
                or any(is_number(p) for p in items[1::2]):
            raise ValueError(f"--data-path {' '.join(items)}: weighted form must alternate "
                             "weight and prefix, e.g. --data-path 0.3 A 0.7 B")
        weights, prefixes = [float(w) for w in items[0::2]], items[1::2]
        if any(w < 0 for w in weights) or sum(weights) <= 0:
            raise ValueError(f"--data-path {' '.join(items)}: weights must be >= 0 and not all "
                             "zero")
    else:
        if any(is_number(p) for p in items):
            raise ValueError(f"--data-path {' '.join(items)}: mixes weights and prefixes; give "
                             "a weight before every prefix, e.g. --data-path 0.3 A 0.7 B")
        prefixes = items
        weights = [float(_open(p).num_tokens) for p in prefixes]
    total = sum(weights)
    return prefixes, [w / total for w in weights]


def _open(prefix: str) -> IndexedDataset:
    try:
        return IndexedDataset(prefix)
    except FileNotFoundError as e:
        raise ValueError(f"--data-path {prefix}: {e}") from e


def blend_schedule(weights: list[float], n: int) -> np.ndarray:
    """Dataset id of each of the ``n`` blended samples (see the module docstring)."""
    w = np.asarray(weights, dtype=np.float64)
    w = w / w.sum()
    keys, ids = [np.zeros(0)], [np.zeros(0, dtype=np.int64)]
    for d, wd in enumerate(w):
        if wd > 0:
            k = np.arange(int(np.ceil(n * wd)) + 1, dtype=np.float64)
            keys.append((k + 0.5) / wd)
            ids.append(np.full(k.size, d, dtype=np.int64))
    keys, ids = np.concatenate(keys), np.concatenate(ids)
    return ids[np.lexsort((ids, keys))[:n]]


class BlendedDataset(torch.utils.data.Dataset):
    """Sample ``i`` is sample ``k`` of ``datasets[schedule[i]]``, k counting its earlier uses."""

    def __init__(self, datasets: list, schedule: np.ndarray):
        self.datasets, self.schedule = datasets, np.asarray(schedule)
        self.sample_index = np.zeros(len(self.schedule), dtype=np.int64)
        for d, ds in enumerate(datasets):
            mask = self.schedule == d
            need = int(mask.sum())
            if need and (ds is None or len(ds) < need):
                raise ValueError(f"blended dataset {d} provides {0 if ds is None else len(ds)} "
                                 f"samples but the blend needs {need}")
            self.sample_index[mask] = np.arange(need)

    def __len__(self) -> int:
        return len(self.schedule)

    def __getitem__(self, idx: int) -> dict:
        if not 0 <= idx < len(self):
            raise IndexError(f"sample {idx} out of range [0, {len(self)})")
        return self.datasets[int(self.schedule[idx])][int(self.sample_index[idx])]
