"""Which tokens a CP rank holds, and moving tensors between full and local layouts.

Positions stay global: the model gathers position ids with the same indices,
so learned and rotary position embeddings see the true positions.

Layout (see usp.py): ring portion of ring rank r (contiguous, or zigzag chunks
r and 2R-1-r), then the u-th of U contiguous pieces of it.  Worked example,
causal p2p, P = 2, 8 tokens, chunks of 2::

    rank 0: chunks 0, 3 -> positions [0, 1, 6, 7]
    rank 1: chunks 1, 2 -> positions [2, 3, 4, 5]

Non-causal or rsa / a2a: rank c holds positions [c*N/P, (c+1)*N/P).
"""
from __future__ import annotations

import torch

from .comm import all_gather
from .config import check_seq_len, mesh_layout, uses_zigzag


def _indices(seq_len: int, zigzag: bool, u_size: int, u: int, r_size: int, r: int):
    if zigzag:
        chunk = seq_len // (2 * r_size)
        first, second = r * chunk, (2 * r_size - 1 - r) * chunk
        portion = torch.cat([torch.arange(first, first + chunk),
                             torch.arange(second, second + chunk)])
    else:
        size = seq_len // r_size
        portion = torch.arange(r * size, (r + 1) * size)
    return portion.chunk(u_size)[u].clone()


def cp_local_indices(seq_len: int, mode: str, causal: bool, mesh) -> torch.LongTensor:
    """Global token positions held by this CP rank, in local order."""
    check_seq_len(seq_len, mode, causal, mesh)
    u_size, u, r_size, r = mesh_layout(mode, mesh)
    return _indices(seq_len, uses_zigzag(mode, causal) and r_size > 1, u_size, u, r_size, r)


def shard_for_cp(x: torch.Tensor, seq_dim: int, mode: str, causal: bool, mesh) -> torch.Tensor:
    """This CP rank's part of a full-sequence tensor (tokens, labels, mask, positions...)."""
    idx = cp_local_indices(x.shape[seq_dim], mode, causal, mesh).to(x.device)
    return x.index_select(seq_dim, idx)


def unshard_from_cp(x_local: torch.Tensor, seq_dim: int, mode: str, causal: bool, mesh):
    """Inverse of :func:`shard_for_cp`: all-gather over CP and undo the permutation.

    Not differentiable (for tests, evaluation and generation).
    """
    u_size, _, r_size, _ = mesh_layout(mode, mesh)
    p = mesh.cp_size
    seq_len = x_local.shape[seq_dim] * p
    zigzag = uses_zigzag(mode, causal) and r_size > 1
    order = torch.cat([_indices(seq_len, zigzag, u_size, c % u_size, r_size, c // u_size)
                       for c in range(p)])
    full = all_gather(x_local.detach(), seq_dim, mesh.cp_group if p > 1 else None)
    inverse = torch.empty_like(order)
    inverse[order] = torch.arange(seq_len)
    return full.index_select(seq_dim, inverse.to(full.device))
