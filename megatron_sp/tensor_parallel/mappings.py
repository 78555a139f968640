"""Autograd communication mappings over a process group (Megatron's region vocabulary).

Each mapping is a pair (forward op, backward op) run by one autograd Function::

    mapping                                     forward            backward
    copy_to_tensor_parallel_region              identity           all-reduce
    reduce_from_tensor_parallel_region          all-reduce         identity
    scatter_to_tensor_parallel_region           split last dim     all-gather last dim
    gather_from_tensor_parallel_region          all-gather last    split last dim
    scatter_to_sequence_parallel_region         split first dim    all-gather first dim
    gather_from_sequence_parallel_region        all-gather first   reduce-scatter first (or split)
    reduce_scatter_to_sequence_parallel_region  reduce-scatter 1st all-gather first dim

Example with TP = 2 and Megatron-SP: a ``[s/2, b, h]`` shard is all-gathered to
``[s, b, h]`` before a column-parallel linear; the gradient of that gather is the
reduce-scatter of the partial input-gradients the two ranks computed.

Groups are always passed in; ``None`` means "no group" (never the default group),
and it or a group of size 1 makes every mapping the identity.
"""
from __future__ import annotations

import torch
import torch.distributed as dist

from ..parallel_state import group_rank, group_size

_all_gather_single = getattr(dist, "all_gather_single", None) or dist.all_gather_into_tensor
_reduce_scatter_single = getattr(dist, "reduce_scatter_single", None) or dist.reduce_scatter_tensor


def _size(group) -> int:
    return group_size(group)


def _rank(group) -> int:
    return group_rank(group)


# --- primitives on plain tensors -------------------------------------------------------
def _identity(x, group):
    return x


def all_reduce(x, group):
    if _size(group) == 1:
        return x
    x = x.contiguous().clone()
    dist.all_reduce(x, group=group)
    return x


def split_along(x, group, dim):
    n = _size(group)
    if n == 1:
        return x
    if x.shape[dim] % n:
        raise ValueError(f"cannot split dimension {dim} of size {x.shape[dim]} into {n} equal parts")
    return x.chunk(n, dim=dim)[_rank(group)].contiguous()


def gather_along(x, group, dim):
    n = _size(group)
    if n == 1:
        return x
    x = x.movedim(dim, 0).contiguous()
    out = x.new_empty((n * x.shape[0],) + tuple(x.shape[1:]))
    _all_gather_single(out, x, group=group)
    return out.movedim(0, dim)


def reduce_scatter_along(x, group, dim):
    n = _size(group)
    if n == 1:
        return x
    if x.shape[dim] % n:
        raise ValueError(f"cannot reduce-scatter dimension {dim} of size {x.shape[dim]} over {n} ranks")
    x = x.movedim(dim, 0).contiguous()
    out = x.new_empty((x.shape[0] // n,) + tuple(x.shape[1:]))
    _reduce_scatter_single(out, x, group=group)
    return out.movedim(0, dim)


def _split_first(x, g): return split_along(x, g, 0)
def _split_last(x, g): return split_along(x, g, -1)
def _gather_first(x, g): return gather_along(x, g, 0)
def _gather_last(x, g): return gather_along(x, g, -1)
def _reduce_scatter_first(x, g): return reduce_scatter_along(x, g, 0)


class _Mapping(torch.autograd.Function):
    """One autograd Function for every region: ``forward_op`` now, ``backward_op`` on the gradient."""

    @staticmethod
    def forward(ctx, x, group, forward_op, backward_op):
        ctx.group, ctx.backward_op = group, backward_op
        return forward_op(x, group)

    @staticmethod
    def backward(ctx, grad):
        return ctx.backward_op(grad, ctx.group), None, None, None


def _apply(x, group, fwd, bwd):
    if _size(group) == 1:
        return x
    return _Mapping.apply(x, group, fwd, bwd)


# --- the regions -----------------------------------------------------------------------
def copy_to_tensor_parallel_region(x, group):
    return _apply(x, group, _identity, all_reduce)


def reduce_from_tensor_parallel_region(x, group):
    return _apply(x, group, all_reduce, _identity)


def scatter_to_tensor_parallel_region(x, group):
    return _apply(x, group, _split_last, _gather_last)


def gather_from_tensor_parallel_region(x, group):
    return _apply(x, group, _gather_last, _split_last)


def scatter_to_sequence_parallel_region(x, group):
    return _apply(x, group, _split_first, _gather_first)


def gather_from_sequence_parallel_region(x, group, tensor_parallel_output_grad: bool = True):
    """All-gather along the sequence.  ``tensor_parallel_output_grad``: the gradient
    arriving here is a partial sum over TP ranks (it feeds a column-parallel linear), so
    backward reduce-scatters; otherwise every rank holds the full gradient and backward splits."""
    return _apply(x, group, _gather_first,
                  _reduce_scatter_first if tensor_parallel_output_grad else _split_first)


def reduce_scatter_to_sequence_parallel_region(x, group):
    return _apply(x, group, _reduce_scatter_first, _gather_first)
