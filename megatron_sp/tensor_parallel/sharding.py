"""How a parameter's shard relates to its full tensor, and layout-invariant initialisation.

Every parameter carries three attributes:

* ``partition_dim``: the dimension split across TP ranks, or ``None`` if replicated;
* ``partition_chunks``: the full tensor is ``partition_chunks`` blocks along that
  dimension, each split across ranks (2 for SwiGLU's fused ``[gate; up]``, else 1);
* ``init_kind``: ``"normal"``, ``"scaled_normal"``, ``"zeros"`` or ``"ones"``.

Example, TP = 2, SwiGLU fc1 with full rows ``[g0 g1 | u0 u1]`` (chunks = 2): rank 0
holds ``[g0 | u0]`` and rank 1 holds ``[g1 | u1]``, so each rank computes
``silu(gate) * up`` on its own half of the FFN.

Initialisation draws the *full* tensor from a generator seeded by ``(seed, name)``
and keeps this rank's shard, so the same seed gives the same full weights in every
TP/CP/DP layout.  Checkpoints use the same two functions to go between shards and
full tensors.
"""
from __future__ import annotations

import math
import zlib

import torch

from .mappings import gather_along


def set_tp_attributes(param: torch.nn.Parameter, partition_dim=None, chunks: int = 1,
                      init_kind: str = "normal", sequence_parallel: bool = False):
    param.partition_dim = partition_dim
    param.partition_chunks = chunks
    param.init_kind = init_kind
    # Replicated over TP but computed on sequence shards: its gradient is all-reduced over TP.
    param.sequence_parallel = sequence_parallel
    return param


def full_shape(param, tp_size: int) -> tuple:
    shape = list(param.shape)
    dim = getattr(param, "partition_dim", None)
    if dim is not None:
        shape[dim] *= tp_size
    return tuple(shape)


def shard_of(full: torch.Tensor, param, tp_rank: int, tp_size: int) -> torch.Tensor:
    """This rank's shard of ``full`` for ``param``'s partitioning."""
    dim = getattr(param, "partition_dim", None)
    if dim is None or tp_size == 1:
        return full
    chunks = full.chunk(getattr(param, "partition_chunks", 1), dim=dim)
    return torch.cat([c.chunk(tp_size, dim=dim)[tp_rank] for c in chunks], dim=dim)


def full_of(shard: torch.Tensor, param, tp_group, tp_size: int) -> torch.Tensor:
    """Gather the full tensor of ``param`` from its TP shards (inverse of :func:`shard_of`)."""
    dim = getattr(param, "partition_dim", None)
    if dim is None or tp_size == 1:
        return shard
    n_chunks = getattr(param, "partition_chunks", 1)
    gathered = gather_along(shard.detach(), tp_group, dim).chunk(tp_size, dim=dim)
    # gathered[r] = [chunk0_r | chunk1_r ...]; regroup per chunk
    per_rank = [g.chunk(n_chunks, dim=dim) for g in gathered]
    return torch.cat([torch.cat([per_rank[r][c] for r in range(tp_size)], dim=dim)
                      for c in range(n_chunks)], dim=dim)


def _name_seed(seed: int, name: str) -> int:
    return (seed * 1_000_003 + zlib.crc32(name.encode())) % (2 ** 63)


@torch.no_grad()
def init_parameters(model: torch.nn.Module, seed: int, tp_rank: int, tp_size: int,
                    init_std: float = 0.02, num_layers: int = 1):
    """Layout-invariant init: full tensor from ``(seed, name)``, then this rank's shard."""
    scaled_std = init_std / math.sqrt(2.0 * num_layers)
    for name, p in model.named_parameters():
        kind = getattr(p, "init_kind", "normal")
        shape = full_shape(p, tp_size)
        if kind == "zeros":
            full = torch.zeros(shape)
        elif kind == "ones":
            full = torch.ones(shape)
        else:
            g = torch.Generator().manual_seed(_name_seed(seed, name))
            std = scaled_std if kind == "scaled_normal" else init_std
            full = torch.empty(shape).normal_(0.0, std, generator=g)
        p.copy_(shard_of(full, p, tp_rank, tp_size))
