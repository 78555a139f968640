"""Shared test set-up.

Ranks are forked from the pytest process (megatron_sp/launch.py), so whatever is
imported here is imported once instead of once per rank: DDP pulls in
torch._dynamo, which costs seconds per process on a 2-core machine.
"""
import torch._dynamo  # noqa: F401
import torch.nn.parallel  # noqa: F401

import pytest
import torch.distributed as dist


@pytest.fixture(autouse=True)
def _no_process_group_left_behind():
    """A test that builds an FSDP2 run in this process (setup(), pretrain(return_context=True))
    leaves its world-of-one group for the test to inspect; it must not reach the ranks the next
    test forks, which create their own default group."""
    yield
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()
