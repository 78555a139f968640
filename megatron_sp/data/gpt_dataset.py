"""GPT pretraining samples packed from the documents of indexed datasets.

    train, valid, test = build_gpt_datasets(["0.3", "A", "0.7", "B"], "969,30,1",
                                            seq_length=1024, seed=1234,
                                            num_samples=(8000, 800, 80), eod=tok.eod)

How one split of one dataset becomes samples:

1. ``--split 969,30,1`` cuts the *documents* into three contiguous ranges
   (proportional, rounded), so no document is shared between train/valid/test.
2. **Document order.** Each epoch is a fresh permutation of the split's documents
   (seeded by ``(seed, epoch)``); epochs are appended until they hold ``num_samples``
   samples, so the data repeats when it runs out.
3. **Packing.** The epochs are read as one token stream; sample ``j`` is the
   ``seq_length + 1`` tokens starting at ``j * seq_length`` (consecutive samples share
   one token: the last label of one is the first input of the next).  Samples cross
   document boundaries; with ``--append-eod`` the EOD token marks them, and
   ``eod_mask_loss`` drops the loss on predictions made *from* an EOD.
   ``--reset-position-ids`` restarts positions after each EOD and ``--reset-attention-mask``
   adds the document starts ``cu_seqlens`` (mock_dataset.sample_dict).
4. **Shuffle.** Samples are permuted within each epoch (seeded by ``(seed, epoch)``),
   so each epoch is seen in full before the next begins, and asking for more samples
   (a longer run) keeps the first ones unchanged.

The arrays (document order, sample starts, shuffle) are cached next to the data
(``<data dir>/cache/GPTDataset_indices`` or ``cache_dir``) by rank 0; see
``index_cache``.  Everything depends on the seed and the data only -- never on the
parallel layout -- and sample ``i`` is always the same tokens.
"""
from __future__ import annotations

import os
import zlib

import numpy as np
import torch

from .blended_dataset import BlendedDataset, _open, blend_schedule, parse_data_path
from .index_cache import cached_arrays
from .indexed_dataset import IndexedDataset  # noqa: F401  (re-exported for callers)
from .mock_dataset import MockDocuments, sample_dict

SPLIT_NAMES = ("train", "valid", "test")


def parse_split(split: str) -> list[float]:
    """``"969,30,1"`` -> normalised ``[0.969, 0.03, 0.001]`` (missing parts are 0).

    Quotes around the value are dropped: launch scripts that keep ``"--split '99,1,0'"`` in a
    bash array pass the quotes through to the program."""
    split = str(split).strip().strip("'\"")
    try:
        parts = [float(x) for x in split.replace("/", ",").split(",") if x.strip()]
    except ValueError:
        parts = []
    if not 1 <= len(parts) <= 3 or any(p < 0 for p in parts) or sum(parts) <= 0:
        raise ValueError(f"--split {split!r} is malformed: give up to three non-negative "
                         "weights for train,valid,test, e.g. --split 969,30,1")
    parts += [0.0] * (3 - len(parts))
    return [p / sum(parts) for p in parts]


def split_bounds(num_docs: int, fractions: list[float]) -> list[int]:
    """Document boundaries ``[0, a, b, num_docs]`` of the three splits."""
    cum = np.cumsum(fractions)
    return [0] + [int(round(c * num_docs)) for c in cum[:-1]] + [num_docs]


def build_sample_indices(sizes: np.ndarray, doc_ids: np.ndarray, seq_length: int,
                         num_samples: int, seed: int) -> dict:
    """The document order, sample starts and shuffle of one GPT dataset (see module doc).

    Epoch ``e`` of documents and the sample shuffle inside epoch ``e`` each draw from
    their own random stream ``(seed, e)``, so a run asking for more samples sees the
    same samples first: a shorter run's order is a prefix of a longer run's.
    """
    T, L = int(sizes[doc_ids].sum(dtype=np.int64)), seq_length
    epoch_start = lambda e: -(-e * T // L)  # noqa: E731  first sample starting in epoch e
    num_epochs = max(1, (max(num_samples, 1) - 1) * L // T + 1)  # epochs to shuffle
    total = epoch_start(num_epochs)                               # samples they hold
    doc_epochs = -(-(total * L + 1) // T)                         # epochs of documents read
    seed = seed % 2**32
    doc_idx = np.concatenate([np.random.RandomState([seed, e, 0]).permutation(doc_ids)
                              for e in range(doc_epochs)])
    lengths = sizes[doc_idx].astype(np.int64)
    ends = np.cumsum(lengths)
    starts = np.arange(total + 1, dtype=np.int64) * L
    pos = np.searchsorted(ends, starts, side="right")
    sample_idx = np.stack([pos, starts - (ends[pos] - lengths[pos])], axis=1)
    shuffle = np.concatenate([
        epoch_start(e) + np.random.RandomState([seed, e, 1]).permutation(
            epoch_start(e + 1) - epoch_start(e)) for e in range(num_epochs)])
    small = np.int32 if len(sizes) < 2**31 and total < 2**31 else np.int64
    return {"doc_idx": doc_idx.astype(small), "sample_idx": sample_idx.astype(np.int64),
            "shuffle_idx": shuffle.astype(small)}


class GPTDataset(torch.utils.data.Dataset):
    """``num_samples`` packed samples from documents ``doc_ids`` of ``indexed``."""

    def __init__(self, indexed: IndexedDataset, doc_ids: np.ndarray, seq_length: int,
                 num_samples: int, seed: int, eod: int | None = None,
                 eod_mask_loss: bool = False, cache_dir: str | None = None, name: str = "",
                 reset_position_ids: bool = False, reset_attention_mask: bool = False):
        if seq_length < 1:
            raise ValueError(f"--seq-length must be >= 1, got {seq_length}")
        self.eod, self.eod_mask_loss, self.name = eod, eod_mask_loss, name
        self.resets = (reset_position_ids, reset_attention_mask)
        sizes = indexed.sizes
        if len(doc_ids) == 0 or int(sizes[doc_ids].sum(dtype=np.int64)) == 0:
            raise ValueError(f"{indexed.prefix}: the {name or 'requested'} split has no tokens "
                             f"({len(doc_ids)} of {len(sizes)} documents); give it documents with "
                             "--split (train,valid,test weights)" + (
                                 "" if name == "train" else " or turn evaluation off with --eval-iters 0"))
        if num_samples is None:  # one epoch (--full-validation): the whole samples its tokens hold
            num_samples = max((int(sizes[doc_ids].sum(dtype=np.int64)) - 1) // seq_length, 1)
        self.indexed, self.seq_length, self.num_samples = indexed, seq_length, num_samples
        description = {
            "class": "GPTDataset", "version": 2,
            "prefix": getattr(indexed, "cache_key", None) or os.path.abspath(indexed.prefix),
            "split": name, "first_doc": int(doc_ids[0]), "num_docs": len(doc_ids),
            "sizes_crc32": zlib.crc32(np.ascontiguousarray(sizes[doc_ids]).tobytes()),
            "seq_length": seq_length, "num_samples": num_samples, "seed": seed}
        arrays = cached_arrays(cache_dir, description, lambda: build_sample_indices(
            sizes, doc_ids, seq_length, num_samples, seed))
        self.doc_idx, self.sample_idx = arrays["doc_idx"], arrays["sample_idx"]
        self.shuffle_idx = arrays["shuffle_idx"]

    def __len__(self) -> int:
        return self.num_samples

    def get_tokens(self, idx: int) -> np.ndarray:
        """The ``seq_length + 1`` token ids of sample ``idx``."""
        if not 0 <= idx < self.num_samples:
            raise IndexError(f"sample {idx} out of range [0, {self.num_samples})")
        j = int(self.shuffle_idx[idx])
        (p0, o0), (p1, o1) = self.sample_idx[j], self.sample_idx[j + 1]
        get = self.indexed.get
        if p0 == p1:
            parts = [get(int(self.doc_idx[p0]), int(o0), int(o1 - o0 + 1))]
        else:
            parts = [get(int(self.doc_idx[p0]), int(o0))]
            parts += [get(int(self.doc_idx[p])) for p in range(p0 + 1, p1)]
            parts.append(get(int(self.doc_idx[p1]), 0, int(o1 + 1)))
        tokens = np.concatenate(parts).astype(np.int64)
        assert tokens.size == self.seq_length + 1, (tokens.size, idx)
        return tokens

    def __getitem__(self, idx: int) -> dict:
        return sample_dict(torch.from_numpy(self.get_tokens(idx)), self.eod, self.eod_mask_loss, *self.resets)


def default_cache_dir(prefix: str) -> str:
    return os.path.join(os.path.dirname(os.path.abspath(prefix)), "cache", "GPTDataset_indices")


def _split_datasets(indexed, fractions, seq_length, seed, counts, eod, eod_mask_loss, cache_dir, resets=(False, False)):
    """The three GPTDatasets (or None) of one indexed dataset, with ``counts[i]`` samples each."""
    bounds = split_bounds(len(indexed), fractions)
    out = []
    for i, name in enumerate(SPLIT_NAMES):
        if counts[i] <= 0:
            out.append(None)
            continue
        doc_ids = np.arange(bounds[i], bounds[i + 1], dtype=np.int64)
        out.append(GPTDataset(indexed, doc_ids, seq_length, int(counts[i]), seed, eod,
                              eod_mask_loss, cache_dir, name, *resets))
    return out


def _counts(num_samples, fractions) -> tuple:
    """Samples asked of each split; 0 where its ``--split`` weight is 0 (as Megatron: no dataset)."""
    if len(num_samples) != 3 or any(int(n) < 0 for n in num_samples):
        raise ValueError(f"num_samples {num_samples!r} must be three counts >= 0 "
                         "(train, valid, test)")
    return tuple(int(n) if f > 0 else 0 for n, f in zip(num_samples, fractions))


def build_gpt_datasets(data_path: list[str], split: str, seq_length: int, seed: int,
                       num_samples: tuple[int, int, int], eod: int,
                       eod_mask_loss: bool = False, cache_dir: str | None = None,
                       reset_position_ids: bool = False, reset_attention_mask: bool = False):
    """``(train, valid, test)`` from ``--data-path``/``--split``; None where 0 samples are
    asked for or, as in Megatron, the split's ``--split`` weight is 0.

    With several prefixes, each is split the same way and the splits are blended with
    the weights (``BlendedDataset``); each prefix gets exactly the samples the blend
    draws from it.  All ranks must call this together (rank 0 builds the cached indices).
    """
    prefixes, weights = parse_data_path(data_path)
    fractions = parse_split(split)
    num_samples = _counts(num_samples, fractions)

    def of_prefix(prefix, counts):
        return _split_datasets(_open(prefix), fractions, seq_length, seed, counts, eod, eod_mask_loss,
                               cache_dir or default_cache_dir(prefix), (reset_position_ids, reset_attention_mask))

    if len(prefixes) == 1:
        return tuple(of_prefix(prefixes[0], num_samples))
    schedules = [blend_schedule(weights, int(n)) for n in num_samples]
    per_prefix = [of_prefix(prefix, [int((s == d).sum()) for s in schedules]) for d, prefix in enumerate(prefixes)]
    return tuple(
        BlendedDataset([per_prefix[d][i] for d in range(len(prefixes))], schedules[i])
        if num_samples[i] > 0 else None for i in range(3))


def build_per_split_gpt_datasets(paths: list, seq_length: int, seed: int, num_samples: tuple, eod: int,
                                 eod_mask_loss: bool = False, cache_dir: str | None = None,
                                 multiple_validation_sets: bool = False, reset_position_ids: bool = False,
                                 reset_attention_mask: bool = False):
    """``(train, valid, test)`` from Megatron's ``--train-data-path`` / ``--valid-data-path`` /
    ``--test-data-path``: each split is its own blend, every document of its prefixes in it (no
    ``--split``); a split without a path has no dataset (None).  ``num_samples[i]`` None: one
    epoch (``--full-validation``).  With ``multiple_validation_sets`` the validation entry is a
    list, one dataset per prefix, evaluated separately (as Megatron, unweighted prefixes)."""
    out = []
    for i, path in enumerate(paths):
        if not path or num_samples[i] == 0:
            out.append(None)
            continue
        prefixes, weights = parse_data_path(path)

        def of_prefix(prefix, n, name=SPLIT_NAMES[i]):  # every document of the prefix is in the split
            if n == 0:
                return None
            indexed = _open(prefix)
            return GPTDataset(indexed, np.arange(len(indexed), dtype=np.int64), seq_length, n, seed, eod,
                              eod_mask_loss, cache_dir or default_cache_dir(prefix), name, reset_position_ids,
                              reset_attention_mask)

        n = num_samples[i]
        if i == 1 and multiple_validation_sets:
            out.append([of_prefix(prefix, n) for prefix in prefixes])
        elif len(prefixes) == 1:
            out.append(of_prefix(prefixes[0], n))
        elif n is None:
            raise ValueError(f"--full-validation over the blend {' '.join(map(str, path))}: one epoch of a "
                             "weighted blend is not defined here; give one prefix or --multiple-validation-sets")
        else:
            schedule = blend_schedule(weights, int(n))
            out.append(BlendedDataset([of_prefix(prefix, int((schedule == d).sum()))
                                       for d, prefix in enumerate(prefixes)], schedule))
    return tuple(out)


def build_mock_gpt_datasets(split: str, seq_length: int, seed: int, num_samples: tuple[int, int, int],
                            vocab_size: int, eod: int, eod_mask_loss: bool = False, cache_dir: str | None = None,
                            reset_position_ids: bool = False, reset_attention_mask: bool = False):
    """``--mock-data``: the same splits, packing and index cache over generated documents
    (mock_dataset.MockDocuments); the index is cached only under ``--data-cache-path``."""
    fractions = parse_split(split)
    return tuple(_split_datasets(MockDocuments(seq_length, vocab_size, eod, seed), fractions, seq_length, seed,
                                 _counts(num_samples, fractions), eod, eod_mask_loss, cache_dir,
                                 (reset_position_ids, reset_attention_mask)))
