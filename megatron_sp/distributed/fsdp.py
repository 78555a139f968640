"""Model state sharded over the DP x CP group with torch FSDP2 (``fully_shard``).

CP ranks hold the same weights as DP ranks, so both shard them: every transformer
layer, then the root (embeddings, final norm, output layer), is ``fully_shard``-ed
over a 1-D device mesh made from the DP x CP process group of this TP rank.  A TP
shard is therefore sharded again: the parameter becomes a DTensor holding rows
``[r0, r1)`` of dim 0 of this rank's TP shard (see ``tensor_parallel.sharding.local_pieces``).

Two modes share this one mechanism (``--use-torch-fsdp2`` / ``--use-distributed-optimizer``):

============================  =====================================  ======================================
                              ``fsdp2`` (ZeRO-3)                      ``dist-opt`` (ZeRO-2, Megatron's
                                                                       distributed optimizer)
============================  =====================================  ======================================
compute weights               gathered per layer, freed after its    gathered once per step (forward),
                              forward, gathered again in backward    kept until the last backward
gradients                     reduce-scattered after every           accumulated unsharded over the
                              micro-batch (sharded accumulation)      micro-batches, reduce-scattered once
fp32 master weights, Adam     1/(DP x CP) per rank                   1/(DP x CP) per rank
============================  =====================================  ======================================

Both use ``MixedPrecisionPolicy``: compute weights in bf16/fp16 under ``--bf16/--fp16``,
gradient reduction in fp32 into the fp32 sharded master weights, which the optimizer
steps (its Adam state is created on the shards).  ``--optimizer-cpu-offload`` keeps the
shards, their gradients and the Adam state in host memory (``CPUOffloadPolicy``).

Gradients are *summed* (divide factor 1): every rank's loss is already divided by the
token count of the whole global batch (training/step.py), as with DDP.
"""
from __future__ import annotations

import contextlib

import torch
import torch.distributed as dist

from ..tensor_parallel.sharding import keeping_tp_attributes

MODES = ("fsdp2", "dist-opt")


def _device_mesh(mesh, device: torch.device):
    from torch.distributed.device_mesh import DeviceMesh
    return DeviceMesh.from_group(mesh.dp_cp_group, device.type)


def shard_model(model: torch.nn.Module, mesh, mode: str, device: torch.device, param_dtype=None,
                cpu_offload: bool = False, roots=None) -> torch.nn.Module:
    """``fully_shard`` each decoder layer, then the root, over the DP x CP group (in place).

    ``roots``: the modules that run a forward (default: the model itself); under pipeline
    parallelism each pipeline stage module is the root of its own layers, embeddings and
    output layer (a stage's forward is what gathers them).  Works on a model still on the
    meta device (the usual case: shard, then ``to_empty`` and initialise the shards) as well
    as on a materialised one.  The TP attributes of every parameter survive the switch to
    DTensor parameters.
    """
    from torch.distributed.fsdp import (CPUOffloadPolicy, FSDPModule, MixedPrecisionPolicy, OffloadPolicy,
                                        fully_shard)
    if mode not in MODES:
        raise ValueError(f"unknown sharding mode {mode!r}: choose one of {MODES}")
    kwargs = dict(mesh=_device_mesh(mesh, device),
                  mp_policy=MixedPrecisionPolicy(param_dtype=param_dtype, reduce_dtype=torch.float32),
                  offload_policy=CPUOffloadPolicy(pin_memory=device.type == "cuda") if cpu_offload
                  else OffloadPolicy())
    zero3 = mode == "fsdp2"
    layers = list(model.decoder.layers.values())
    roots = list(roots) if roots else [model]
    with keeping_tp_attributes(model):
        for i, layer in enumerate(layers):
            # the last layer's backward starts right after forward: keep it gathered (as torchtitan)
            fully_shard(layer, reshard_after_forward=zero3 and i < len(layers) - 1, **kwargs)
        for root in roots:
            fully_shard(root, reshard_after_forward=False, **kwargs)
    for root in roots:
        for module in root.modules():
            if isinstance(module, FSDPModule):  # a plain SUM: gloo has no PREMUL_SUM
                module.set_gradient_divide_factor(1.0)
                module.set_force_sum_reduction_for_comms(True)
    model.defer_grad_sync = mode == "dist-opt"
    return model


@contextlib.contextmanager
def deferred_grad_sync(model):
    """Micro-batches before the last under ``dist-opt``: no reduce-scatter, weights stay gathered."""
    model.set_requires_gradient_sync(False)
    model.set_reshard_after_backward(False)
    try:
        yield
    finally:
        model.set_requires_gradient_sync(True)
        model.set_reshard_after_backward(True)


def is_sharded(model: torch.nn.Module) -> bool:
    return hasattr(model, "defer_grad_sync")


def ensure_process_group() -> bool:
    """FSDP2 needs a process group even on one process (no torchrun): a world of one.  Returns
    whether it created one (its creator destroys it when the run ends)."""
    if dist.is_initialized():
        return False
    dist.init_process_group("gloo", store=dist.HashStore(), rank=0, world_size=1)
    return True


def describe_model_state(mode: str, n: int, bf16: bool, fp16: bool, cpu_offload: bool) -> str:
    """One start-up line: who holds what, in bytes per parameter (of this TP rank's shard)."""
    low = "bf16" if bf16 else "fp16" if fp16 else None
    where = " in host memory (--optimizer-cpu-offload)" if cpu_offload else ""
    if mode == "replicated":
        compute = f"; {low} matmuls under autocast" if low else ""
        return (f"replicated over DP x CP {n} (DDP): fp32 weights, gradients and Adam m, v on every rank, "
                f"16 bytes/parameter{compute}")
    gathered = f"{low} compute weights" if low else "fp32 compute weights"
    when = "per layer, freed after its forward and backward" if mode == "fsdp2" else \
        "once per step, kept until backward ends; gradients accumulate unsharded over micro-batches"
    name = "FSDP2 (ZeRO-3)" if mode == "fsdp2" else "distributed optimizer (ZeRO-2 on FSDP2)"
    return (f"{name} over DP x CP {n}: fp32 master weights, gradients and Adam m, v sharded, "
            f"16/{n} = {16 / n:.2f} bytes/parameter{where}; {gathered} gathered {when}")
