"""Synthetic documents for ``--mock-data``, packed into samples exactly as real data is.

As in Megatron-LM, mock data is a low-level dataset of generated *documents* (each ending
with EOD) that the ordinary GPT dataset splits (``--split``), orders, packs and shuffles, with
its index cached under ``--data-cache-path`` when one is given.  So ``--split``,
``--data-cache-path``, ``--eod-mask-loss`` and ``--seed`` mean on mock data what they mean
on real data.

The documents are not uniform noise: token ids follow a Zipf law (id k with weight
1 / (k + 1), as word frequencies do) and each document repeats a short motif with 10% noise,
so a model has something to learn at once (frequencies) and later (copying).  ``MOCK_DOCUMENTS`` documents of
1 .. 2 x seq_length tokens each; document ``i`` is a function of ``(seed, i)`` only, so
nothing depends on the parallel layout.
"""
from __future__ import annotations

import numpy as np
import torch

MOCK_DOCUMENTS = 100_000  # as Megatron-LM's mock dataset: every split has many documents


def sample_dict(text: torch.Tensor, eod: int | None = None, eod_mask_loss: bool = False,
                reset_position_ids: bool = False, reset_attention_mask: bool = False) -> dict:
    """Turn ``seq_length + 1`` token ids into the sample dict of this package.

    As Megatron-LM's GPT dataset: an EOD among the input tokens ends its document, the next one
    starts after it.  ``reset_position_ids``: positions restart at 0 there.
    ``reset_attention_mask``: the sample also carries ``cu_seqlens``, the document starts
    ``[0, e1 + 1, e2 + 1, ..., seq_length]`` (EODs at e1, e2, ...), which the attention masks
    with (sequence_parallel/masks.py) on every CP rank, whatever tokens it holds."""
    tokens, labels = text[:-1].long(), text[1:].long()
    n = tokens.numel()
    loss_mask = torch.ones(n, dtype=torch.float32)
    if eod_mask_loss and eod is not None:
        loss_mask[tokens == eod] = 0.0
    starts = torch.zeros(0, dtype=torch.long)
    if eod is not None and (reset_position_ids or reset_attention_mask):
        starts = (tokens == eod).nonzero().flatten() + 1
        starts = starts[starts < n]
    position_ids = torch.arange(n, dtype=torch.long)
    if reset_position_ids and starts.numel():
        # position - start of its document: the last start at or before each position
        doc_start = torch.cat([torch.zeros(1, dtype=torch.long), starts])
        position_ids -= doc_start[torch.bucketize(position_ids, starts, right=True)]
    sample = {"tokens": tokens, "labels": labels, "loss_mask": loss_mask, "position_ids": position_ids}
    if reset_attention_mask:
        sample["cu_seqlens"] = torch.cat([torch.zeros(1, dtype=torch.long), starts, torch.tensor([n])])
    return sample


class MockDocuments:
    """The indexed-dataset interface (``sizes``, ``get``, ``prefix``) over generated documents."""

    def __init__(self, seq_length: int, vocab_size: int, eod: int, seed: int = 1234,
                 num_documents: int = MOCK_DOCUMENTS):
        if vocab_size < 2:
            raise ValueError(f"--mock-data needs a vocabulary of at least 2 ids (got {vocab_size})")
        self.vocab_size, self.eod, self.seed = int(vocab_size), int(eod), int(seed)
        rng = np.random.RandomState([self.seed % 2**32, 0x6D6F636B])
        self.sizes = rng.randint(1, 2 * seq_length + 1, size=num_documents).astype(np.int32)
        self.prefix = "mock"
        # what the cached index depends on besides the sizes (GPTDataset hashes it)
        self.cache_key = "mock-documents-v1"
        self.num_tokens = int(self.sizes.sum(dtype=np.int64))
        weights = 1.0 / np.arange(1, self.vocab_size, dtype=np.float64)
        self._cdf = np.cumsum(weights) / weights.sum()

    def _draw(self, rng, n: int) -> np.ndarray:
        """``n`` ids in ``[0, vocab_size - 1)``, Zipf-distributed."""
        return np.minimum(np.searchsorted(self._cdf, rng.rand(n), side="right"), self.vocab_size - 2)

    def __len__(self) -> int:
        return len(self.sizes)

    def document(self, idx: int) -> np.ndarray:
        n = int(self.sizes[idx])
        rng = np.random.RandomState([self.seed % 2**32, 1 + idx])
        motif = self._draw(rng, rng.randint(3, 17))
        text = np.resize(motif, n)
        noise = rng.rand(n) < 0.1
        text[noise] = self._draw(rng, int(noise.sum()))
        text[text >= self.eod] += 1  # ids other than EOD, so EOD marks document ends only
        text[-1] = self.eod
        return text.astype(np.int64)

    def get(self, idx: int, offset: int = 0, length: int | None = None) -> np.ndarray:
        doc = self.document(idx)
        return doc[offset:] if length is None else doc[offset:offset + length]
