"""Ulysses (DeepSpeed-Ulysses): all-to-all between sequence-sharded and head-sharded.

With a Ulysses degree U, rank u holds the tokens of its sequence shard for all
heads.  One all-to-all sends head group j to rank j and gathers the shards of
the sequence, so rank u then holds *every* token for heads
``[u*h/U, (u+1)*h/U)`` and can run ordinary attention; a second all-to-all
brings the output back to sequence shards.  Worked example, U = 2, 4 heads,
tokens t0..t3::

    before   rank 0: t0 t1 x heads 0-3       rank 1: t2 t3 x heads 0-3
    after    rank 0: t0..t3 x heads 0-1      rank 1: t0..t3 x heads 2-3

The received shards are concatenated in rank order, so the full sequence is in
the order of the ranks' local tokens (contiguous shards -> natural order).

GQA: K/V have ``hkv`` heads.  If ``hkv % U == 0`` they are split like the
queries; if ``U % hkv == 0`` each K/V head is repeated ``U / hkv`` times first,
the least that gives every rank the one K/V head its query heads use (query
head i uses K/V head ``i // (hq / hkv)``).  Any other combination is rejected
by :func:`check_cp_config`.
"""
from __future__ import annotations

import torch

from .comm import all_to_all


class _AllToAll(torch.autograd.Function):
    """all_to_all along (scatter_dim -> gather_dim); its gradient is the reverse all_to_all."""

    @staticmethod
    def forward(ctx, x, scatter_dim, gather_dim, group):
        ctx.args = (scatter_dim, gather_dim, group)
        return all_to_all(x, scatter_dim, gather_dim, group)

    @staticmethod
    def backward(ctx, grad):
        scatter_dim, gather_dim, group = ctx.args
        return all_to_all(grad, gather_dim, scatter_dim, group), None, None, None


def seq_to_heads(x, group):
    # x: [s_local, b, h, d] -> [s_local * U, b, h / U, d]
    return _AllToAll.apply(x, 2, 0, group)


def heads_to_seq(x, group):
    # x: [s_local * U, b, h / U, d] -> [s_local, b, h, d]
    return _AllToAll.apply(x, 0, 2, group)


def kv_heads_for_degree(kv, degree: int):
    """Repeat K/V heads as little as needed so that ``degree`` divides them."""
    # kv: [s, b, hkv, d] -> [s, b, max(hkv, degree), d]
    s, b, hkv, d = kv.shape
    if hkv % degree == 0:
        return kv
    rep = degree // hkv
    return kv[:, :, :, None].expand(s, b, hkv, rep, d).reshape(s, b, hkv * rep, d)
