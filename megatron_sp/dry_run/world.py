"""Rank ``r`` of a world of ``W`` in one process: torch's fake process group.

``torch.testing._internal.distributed.fake_pg`` registers the ``fake`` backend: every
collective returns at once without touching data, ``new_group`` works for any rank list
(every rank list is created, as on a real world, and this rank keeps the groups it is in),
so ``parallel_state.initialize_model_parallel`` builds exactly the groups rank ``r`` has.
A group asked for on an explicit backend (the gloo checkpoint group) is made fake as well.
"""
from __future__ import annotations

import contextlib

import torch.distributed as dist


@contextlib.contextmanager
def fake_world(world_size: int, rank: int):
    """A default group of ``world_size`` in which this process is ``rank`` (no other process exists)."""
    if dist.is_initialized():
        raise RuntimeError("a dry run needs its own fake world: a process group is already initialised here")
    if not 0 <= rank < world_size:
        raise ValueError(f"--rank {rank} is not a rank of a world of {world_size} (0 .. {world_size - 1})")
    from torch.testing._internal.distributed.fake_pg import FakeStore  # registers the 'fake' backend
    dist.init_process_group("fake", rank=rank, world_size=world_size, store=FakeStore())
    real_new_group = dist.new_group

    def new_group(*args, **kwargs):  # a group asked for on gloo (checkpoint planning) is fake too
        kwargs.pop("backend", None)
        return real_new_group(*args, **kwargs)

    dist.new_group = new_group
    try:
        yield
    finally:
        dist.new_group = real_new_group
        dist.destroy_process_group()
