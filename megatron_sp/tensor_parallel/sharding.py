"""How a parameter's shard relates to its full tensor, and layout-invariant initialisation.

Every parameter carries three attributes:

* ``partition_dim``: the dimension split across TP ranks, or ``None`` if replicated;
* ``partition_chunks``: the full tensor is ``partition_chunks`` blocks along that
  dimension, each split across ranks (2 for SwiGLU's fused ``[gate; up]``, else 1);
* ``init_kind``: ``"normal"``, ``"scaled_normal"``, ``"zeros"`` or ``"ones"``.

Example, TP = 2, SwiGLU fc1 with full rows ``[g0 g1 | u0 u1]`` (chunks = 2): rank 0
holds ``[g0 | u0]`` and rank 1 holds ``[g1 | u1]``, so each rank computes
``silu(gate) * up`` on its own half of the FFN.

Under FSDP2 (``--use-torch-fsdp2``, ``--use-distributed-optimizer``) a parameter is a
DTensor over the DP x CP group that keeps rows ``[r0, r1)`` of dim 0 of this rank's TP
shard.  :func:`local_pieces` says where every element a rank holds sits in the *full*
tensor, whatever the TP chunking and the FSDP rows: initialisation, checkpoints and
their resharding all go through it.

Initialisation draws the *full* tensor from a generator seeded by ``(seed, name)``
and keeps this rank's pieces, so the same seed gives the same full weights in every
TP/CP/DP layout and sharding mode.
"""
from __future__ import annotations

import contextlib
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


# (+ ``pipeline_shared``: the last pipeline stage's copy of a tied embedding, model/gpt.py;
#  ``is_embedding_or_output_parameter``: --decoupled-lr's parameters, training/optimizer.py)
TP_ATTRIBUTES = ("partition_dim", "partition_chunks", "init_kind", "sequence_parallel", "pipeline_shared",
                 "is_embedding_or_output_parameter")


@contextlib.contextmanager
def keeping_tp_attributes(model: torch.nn.Module):
    """Re-attach the attributes above to parameters that an operation replaces by new objects
    (``to_empty`` from the meta device, FSDP2's switch to DTensor parameters); by name."""
    saved = {name: {k: getattr(p, k) for k in TP_ATTRIBUTES if hasattr(p, k)}
             for name, p in model.named_parameters()}
    yield
    for name, p in model.named_parameters():
        for k, v in saved[name].items():
            setattr(p, k, v)


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


def _local_data(tensor) -> tuple:
    """``(local tensor, its row offset along dim 0 in the TP shard)``; FSDP2 DTensors shard dim 0.

    The local tensor is detached (the same storage, outside autograd): a checkpoint load writes
    into several views of it in turn, which autograd forbids for views of ``to_local()``'s output
    ("... is a view and its base ... has been modified inplace") whenever one piece receives more
    than one saved chunk."""
    from torch.distributed.tensor import DTensor
    if not isinstance(tensor, DTensor):
        return tensor.detach(), 0
    from torch.distributed.tensor._utils import compute_local_shape_and_global_offset
    _, offsets = compute_local_shape_and_global_offset(tensor.shape, tensor.device_mesh, tensor.placements)
    return tensor.to_local().detach(), (offsets[0] if len(offsets) else 0)


def local_pieces(param, tp_rank: int, tp_size: int, tensor=None) -> list:
    """This rank's elements of ``param`` (or of ``tensor``, an optimizer state laid out like it)
    as ``[(view, offsets)]``: ``view`` is a writable view of the local data, ``offsets`` where
    it starts in the full tensor (its sizes are ``view.shape``).

    Worked example, SwiGLU fc1 with ffn 8, hidden 4, TP 2 and FSDP over 2 ranks: the full
    weight is ``[16, 4]`` = ``[g0..g7 | u0..u7]``; TP rank 1 holds ``[g4..g7 | u4..u7]``
    (``[8, 4]``); its FSDP rank 0 keeps rows 0-3 of that, one piece at offsets ``(4, 0)``,
    and FSDP rank 1 rows 4-7, one piece at ``(12, 0)``.  Without FSDP the same TP rank has
    two pieces, ``(4, 0)`` and ``(12, 0)``.  An FSDP rank with no rows has no piece.
    """
    data, row0 = _local_data(param if tensor is None else tensor)
    if data.dim() == 0:
        return [(data, ())]
    dim = getattr(param, "partition_dim", None)
    if dim is None or tp_size == 1:
        return [(data, (row0,) + (0,) * (data.dim() - 1))] if data.shape[0] else []
    full = full_shape(param, tp_size)
    chunks = getattr(param, "partition_chunks", 1)
    seg = full[dim] // (chunks * tp_size)  # one chunk's share of one TP rank along ``dim``
    rows = data.shape[0]
    pieces = []
    for c in range(chunks):
        lo, hi = c * seg, (c + 1) * seg  # the chunk's segment in TP-shard coordinates
        start = c * (full[dim] // chunks) + tp_rank * seg  # ... and in full coordinates
        offsets = [row0] + [0] * (data.dim() - 1)
        if dim == 0:
            a, b = max(lo, row0), min(hi, row0 + rows)
            if a >= b:
                continue
            view, offsets[0] = data.narrow(0, a - row0, b - a), start + (a - lo)
        else:
            if rows == 0:
                continue
            view, offsets[dim] = data.narrow(dim, lo, seg), start
        pieces.append((view, tuple(offsets)))
    return pieces


def piece_of(full: torch.Tensor, view: torch.Tensor, offsets) -> torch.Tensor:
    """The block of ``full`` that a piece ``(view, offsets)`` holds."""
    for d, (o, n) in enumerate(zip(offsets, view.shape)):
        full = full.narrow(d, o, n)
    return full


def _name_seed(seed: int, name: str) -> int:
    return (seed * 1_000_003 + zlib.crc32(name.encode())) % (2 ** 63)


@torch.no_grad()
def init_parameters(model: torch.nn.Module, seed: int, tp_rank: int, tp_size: int,
                    init_std: float = 0.02, num_layers: int = 1):
    """Layout-invariant init: full tensor from ``(seed, name)``, then this rank's pieces."""
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
        for view, offsets in local_pieces(p, tp_rank, tp_size):
            view.copy_(piece_of(full, view, offsets))
