"""Communication for CP attention: ring P2P with double buffering, all-to-all, all-gather.

Every byte a CP mode moves goes through this module, so :func:`count_collectives`
can record the number and size of the operations a call issues (the tests
check them against each mode's formula).

Ring vocabulary, for a ring of ``P`` ranks where rank ``r`` sends to ``r+1`` and
receives from ``r-1`` (mod P)::

    step i:  rank r holds the block that rank (r - i) % P owns

Worked example, P = 3 (blocks A, B, C owned by ranks 0, 1, 2)::

    step 0:  r0: A  r1: B  r2: C
    step 1:  r0: C  r1: A  r2: B
    step 2:  r0: B  r1: C  r2: A        (P - 1 = 2 sends per rank)

:func:`circulate` yields those blocks and has the next one in flight while the
caller computes on the current one (two buffers alive: current and next).
:class:`TravellingSum` carries a gradient accumulator with the block: each rank
adds its contribution and passes it on; after ``P`` hops it is back at the
owner holding the sum over all ranks (``P`` sends per rank).
"""
from __future__ import annotations

from typing import List, Optional, Sequence

import torch
import torch.distributed as dist

from ..collective_errors import raise_named
from .records import COLLECTIVES

def count_collectives():
    """Record ``(kind, bytes)`` for every send / all_to_all / all_gather issued inside."""
    return COLLECTIVES.recording()


def _record(kind: str, tensor: torch.Tensor) -> None:
    if COLLECTIVES.on:
        COLLECTIVES.add((kind, tensor.numel() * tensor.element_size()))


class Ring:
    """A ring over ``ranks`` (global ranks, in ring order); this rank is ``ranks[index]``."""

    def __init__(self, ranks: Sequence[int], index: int, group=None):
        self.ranks, self.index, self.group = list(ranks), index, group
        self.size = len(self.ranks)
        self.next = self.ranks[(index + 1) % self.size]
        self.prev = self.ranks[(index - 1) % self.size]

    def source(self, step: int) -> int:
        """Ring index of the block held at ``step``."""
        return (self.index - step) % self.size

    def send_recv(self, tensors: Sequence[torch.Tensor]) -> "Pending":
        """Post async sends of ``tensors`` to next and receives of same-shaped ones from prev.

        A permuted view of contiguous memory (``[s, b, h, d]`` seen as
        ``[b, h, s, d]``) is sent as that memory, without a copy.
        """
        if self.size == 1:
            return Pending(list(tensors), [], list(tensors))
        sent, recv, ops = [], [], []
        for t in tensors:
            order = sorted(range(t.dim()), key=lambda i: -t.stride(i))
            base = t.permute(order).contiguous()  # no copy for a permuted contiguous tensor
            buf = torch.empty_like(base)
            _record("send", base)
            ops.append(dist.P2POp(dist.isend, base, self.next, self.group))
            ops.append(dist.P2POp(dist.irecv, buf, self.prev, self.group))
            sent.append(base)
            recv.append(buf.permute([order.index(i) for i in range(t.dim())]))
        return Pending(sent, dist.batch_isend_irecv(ops), recv, self.group)


class Pending:
    """In-flight ring exchange; keeps the sent tensors alive until :meth:`wait`."""

    def __init__(self, sent, works, recv, group=None):
        self.sent, self.works, self.recv, self.group = sent, works, recv, group

    def wait(self) -> List[torch.Tensor]:
        for w in self.works:
            try:
                w.wait()
            except RuntimeError as exc:  # a hung or dead peer: name the exchange and the group
                raise_named(exc, "send/recv (ring P2P)", self.group)
                raise
        self.sent = self.works = None
        return self.recv


def circulate(ring: Ring, tensors: Sequence[torch.Tensor]):
    """Yield ``(step, source_index, tensors_at_step)`` for ``step = 0 .. P-1``.

    The exchange for ``step + 1`` is posted before yielding ``step``, so the
    caller's computation overlaps it (double buffering).
    """
    current = list(tensors)
    for step in range(ring.size):
        pending = ring.send_recv(current) if step < ring.size - 1 else None
        yield step, ring.source(step), current
        if pending is not None:
            current = pending.wait()


class TravellingSum:
    """A gradient accumulator that travels with a circulating block (see module doc).

    Per ring step: add this rank's contribution into :meth:`take`, then
    :meth:`pass_on` the sum; :meth:`settle` completes that hop.  Callers settle at
    the end of each step, before :func:`circulate` posts the next K/V
    prefetch, so one accumulator (not two in flight) is alive while the block
    kernel runs; the K/V prefetch still overlaps the computation.
    :meth:`result` returns the owner's complete sum.
    """

    def __init__(self, ring: Ring):
        self.ring = ring
        self.pending: Optional[Pending] = None
        self.acc: Optional[List[torch.Tensor]] = None

    def settle(self) -> None:
        """Complete the hop in flight (the accumulator arrives from the previous rank)."""
        if self.pending is not None:
            self.acc, self.pending = self.pending.wait(), None

    def take(self) -> Optional[List[torch.Tensor]]:
        """The accumulator of the block held at this step, to add into in place
        (None at the first step: the caller's own contribution starts the sum)."""
        self.settle()
        acc, self.acc = self.acc, None
        return acc

    def pass_on(self, acc: List[torch.Tensor]) -> None:
        self.pending = self.ring.send_recv(acc)

    def result(self) -> List[torch.Tensor]:
        self.settle()
        return self.acc


def all_to_all(x: torch.Tensor, scatter_dim: int, gather_dim: int, group) -> torch.Tensor:
    """Split ``x`` in ``G`` parts along ``scatter_dim``, send part j to group rank j, and
    concatenate the received parts along ``gather_dim`` (in group-rank order).

    One copy to lay the parts out (none when ``scatter_dim == 0``), one receive
    buffer, and one copy to interleave them (none when ``gather_dim == 0``).
    """
    world = dist.get_world_size(group) if group is not None else 1
    if world == 1:
        return x
    # send: [G, ...] with part j first so all_to_all_single splits along dim 0
    send = x.unflatten(scatter_dim, (world, -1)).movedim(scatter_dim, 0).contiguous()
    recv = torch.empty_like(send)
    _record("all_to_all", send)
    dist.all_to_all_single(recv, send, group=group)
    return recv.movedim(0, gather_dim).flatten(gather_dim, gather_dim + 1)


def all_gather(x: torch.Tensor, dim: int, group) -> torch.Tensor:
    """Concatenate every group rank's ``x`` along ``dim`` (in group-rank order)."""
    world = dist.get_world_size(group) if group is not None else 1
    if world == 1:
        return x
    parts = [torch.empty_like(x) for _ in range(world)]
    _record("all_gather", x)
    dist.all_gather(parts, x.contiguous(), group=group)
    return torch.cat(parts, dim=dim)
