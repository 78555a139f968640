"""Shared test set-up.

Ranks are forked from the pytest process (megatron_sp/launch.py), so whatever is
imported here is imported once instead of once per rank: DDP pulls in
torch._dynamo, which costs seconds per process on a 2-core machine.
"""
import torch._dynamo  # noqa: F401
import torch.nn.parallel  # noqa: F401
