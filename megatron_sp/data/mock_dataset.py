"""Synthetic GPT samples for ``--mock-data``: a function of (seed, sample index) only.

Tokens are not uniform noise: each sample repeats a short random motif with
noise, so a model has something to learn and the loss visibly falls.  Nothing
depends on the parallel layout, so every layout sees the same global batch.
"""
from __future__ import annotations

import torch


def sample_dict(text: torch.Tensor, eod: int | None = None, eod_mask_loss: bool = False) -> dict:
    """Turn ``seq_length + 1`` token ids into the sample dict of this package."""
    tokens, labels = text[:-1].long(), text[1:].long()
    loss_mask = torch.ones(tokens.numel(), dtype=torch.float32)
    if eod_mask_loss and eod is not None:
        loss_mask[tokens == eod] = 0.0
    return {"tokens": tokens, "labels": labels, "loss_mask": loss_mask,
            "position_ids": torch.arange(tokens.numel(), dtype=torch.long)}


class MockGPTDataset(torch.utils.data.Dataset):
    def __init__(self, num_samples: int, seq_length: int, vocab_size: int, seed: int = 1234,
                 split_offset: int = 0):
        self.num_samples, self.seq_length, self.vocab_size = num_samples, seq_length, vocab_size
        self.seed, self.split_offset = seed, split_offset

    def __len__(self) -> int:
        return self.num_samples

    def __getitem__(self, idx: int) -> dict:
        if not 0 <= idx < self.num_samples:
            raise IndexError(idx)
        g = torch.Generator().manual_seed(self.seed * 1_000_003 + self.split_offset * 7_919 + idx)
        n = self.seq_length + 1
        motif_len = int(torch.randint(3, 17, (1,), generator=g))
        motif = torch.randint(0, self.vocab_size, (motif_len,), generator=g)
        text = motif.repeat(n // motif_len + 1)[:n]
        noise = torch.rand(n, generator=g) < 0.1
        text[noise] = torch.randint(0, self.vocab_size, (int(noise.sum()),), generator=g)
        return sample_dict(text)
