"""Rank ``r`` of a world of ``W`` in one process: torch's fake process group.

``torch.testing._internal.distributed.fake_pg`` registers the ``fake`` backend: every
collective returns at once without touching data, ``new_group`` works for any rank list
(every rank list is created, as on a real world, and this rank keeps the groups it is in),
so ``parallel_state.initialize_model_parallel`` builds exactly the groups rank ``r`` has.
A group asked for on an explicit backend (the gloo checkpoint group) is made fake as well, and
DDP's cross-rank parameter-shape check (C++, reads data) is skipped: the world is one process;
an asynchronous all-reduce's future gives its tensor, as a real group's does; FSDP2's
``DeviceMesh`` (a table of ranks) is made of real tensors.
"""
from __future__ import annotations

import contextlib

import torch
import torch.distributed as dist


class _Done:
    """An asynchronous all-reduce of the fake group, whose future gives ``[tensor]`` as a real
    group's does (the fake group's gives None; DDP's communication hook reads it)."""

    def __init__(self, work, tensor):
        self.work, self.tensor = work, tensor

    def wait(self, *args, **kwargs):
        return self.work.wait(*args, **kwargs)

    def is_completed(self):
        return True

    def get_future(self):
        future = torch.futures.Future()
        future.set_result([self.tensor])
        return future


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
    import torch.nn.parallel.distributed as ddp
    real_verify = ddp._verify_param_shape_across_processes
    # DDP's start-up check compares parameter shapes across ranks in C++ from the tensors' data,
    # which fake tensors do not have; every rank of a fake world is this one, so it holds
    ddp._verify_param_shape_across_processes = lambda process_group, tensors, logger=None: None
    real_all_reduce = dist.all_reduce

    def all_reduce(tensor, *args, **kwargs):
        work = real_all_reduce(tensor, *args, **kwargs)
        return _Done(work, tensor) if work is not None else None

    dist.all_reduce = all_reduce
    from torch.distributed.device_mesh import DeviceMesh
    real_from_group = DeviceMesh.__dict__["from_group"]

    def from_group(*args, **kwargs):  # its rank table is a real tensor, made outside fake tensors
        from torch._subclasses.fake_tensor import unset_fake_temporarily
        with unset_fake_temporarily():
            return real_from_group.__func__(*args, **kwargs)

    DeviceMesh.from_group = staticmethod(from_group)
    try:
        yield
    finally:
        DeviceMesh.from_group = real_from_group
        dist.all_reduce = real_all_reduce
        ddp._verify_param_shape_across_processes = real_verify
        dist.new_group = real_new_group
        dist.destroy_process_group()
