"""Gradient reduction and clipping over the rank mesh (docs/ARCHITECTURE.md, "distributed").

One path for every sharding mode; only the engine that reduces over DP x CP differs:

* Parameters replicated over DP and CP: gradients *summed* over the DP x CP group (the
  loss of each rank is already divided by the token count of the whole global batch, so
  the sum is the gradient of the global mean).  Replicated state: PyTorch DDP over that
  group (bucketed, overlapped with backward) with a summing comm hook.  Sharded state
  (``--use-torch-fsdp2``, ``--use-distributed-optimizer``): FSDP2 reduce-scatters into
  the shards with divide factor 1 (distributed/fsdp.py).
* Parameters replicated over TP but computed on Megatron-SP sequence shards
  (norm weights, row-parallel biases; ``param.sequence_parallel``): all-reduced
  over TP after backward.  Under FSDP2 each TP rank holds the same rows of such a
  parameter, so the local shards are all-reduced.
* Pipeline parallelism: each stage reduces its own parameters as above.  A tied
  input/output embedding lives on the first and the last stage; after the step's backward
  the two copies' gradients are summed over the embedding group (Megatron's
  ``_allreduce_word_embedding_grads``), so the copies get the same update and stay equal.
* The clipping norm counts each element once: squares of a rank's local elements are
  summed over DP x CP when the state is sharded, and squares of TP-sharded parameters
  over TP; replicated ones are counted on every rank once; the stages' sums are added
  over PP, leaving out the last stage's copy of a tied embedding.
"""
from __future__ import annotations

import contextlib
import inspect

import torch
import torch.distributed as dist
from torch.nn.parallel import DistributedDataParallel

from ..collective_errors import raise_named
from ..parallel_state import group_size
from .fsdp import deferred_grad_sync, is_sharded

_DDP_ARGS = inspect.signature(DistributedDataParallel.__init__).parameters


def local(t: torch.Tensor) -> torch.Tensor:
    """The elements this rank holds (a DTensor's local shard, else the tensor)."""
    return t.to_local() if hasattr(t, "to_local") else t


def _sum_hook(group, bucket):
    tensor = bucket.buffer()
    return dist.all_reduce(tensor, group=group, async_op=True).get_future().then(lambda f: _bucket(f, group))


def _bucket(fut, group):
    try:
        return fut.value()[0]
    except RuntimeError as exc:  # a hung or dead peer: name the collective and the group
        raise_named(exc, "all_reduce (gradient all-reduce, DDP)", group)
        raise


def wrap_data_parallel(model: torch.nn.Module, mesh) -> torch.nn.Module:
    """DDP over the DP x CP group (identity when that group has one rank, or the state is sharded)."""
    if group_size(mesh.dp_cp_group) == 1 or is_sharded(model):
        return model
    # Buffers are identical everywhere: never re-broadcast them per step.
    no_buffer_sync = ({"forward_sync_buffers": False} if "forward_sync_buffers" in _DDP_ARGS
                      else {"broadcast_buffers": False})
    ddp = DistributedDataParallel(model, process_group=mesh.dp_cp_group, bucket_cap_mb=25,
                                  gradient_as_bucket_view=True, **no_buffer_sync)
    ddp.register_comm_hook(mesh.dp_cp_group, _sum_hook)
    return ddp


def grad_sync(model: torch.nn.Module, last_micro_batch: bool):
    """The context of one micro-batch's backward: reduce over DP x CP only on the last one
    where the engine defers it (DDP's ``no_sync``; FSDP2 under ``--use-distributed-optimizer``)."""
    if last_micro_batch:
        return contextlib.nullcontext()
    if hasattr(model, "no_sync"):
        return model.no_sync()
    if getattr(model, "defer_grad_sync", False):
        return deferred_grad_sync(model)
    return contextlib.nullcontext()


def _coalesced_all_reduce(tensors, group):
    if not tensors:
        return
    flat = torch.cat([t.reshape(-1) for t in tensors])
    dist.all_reduce(flat, group=group)
    offset = 0
    for t in tensors:
        t.copy_(flat[offset:offset + t.numel()].view_as(t))
        offset += t.numel()


def allreduce_sequence_parallel_grads(model: torch.nn.Module, mesh) -> None:
    if mesh.tp_size == 1:
        return
    grads = [local(p.grad) for p in model.parameters()
             if getattr(p, "sequence_parallel", False) and p.grad is not None]
    _coalesced_all_reduce([g for g in grads if g.numel()], mesh.tp_group)


def allreduce_embedding_grads(model: torch.nn.Module, mesh) -> None:
    """Sum the gradients of the tied embedding's two copies (first and last pipeline stage)."""
    if mesh.embedding_group is None or model.cfg.untie_embeddings_and_output_weights:
        return
    if model.pre_process == model.post_process:  # both ends on this rank (one copy), or neither
        return
    weight = model.embedding.weight
    if weight.grad is None:
        weight.grad = torch.zeros_like(weight)
    dist.all_reduce(local(weight.grad), group=mesh.embedding_group)


def grad_norm(params, mesh) -> float:
    """Global L2 norm of the gradients, each full-model element counted once."""
    params = [p for p in params if p.grad is not None]
    device = local(params[0].grad).device if params else torch.device("cpu")
    sums = torch.zeros(2, dtype=torch.float32, device=device)  # [TP-sharded, TP-replicated]
    for p in params:
        if getattr(p, "pipeline_shared", False):  # counted on the first stage
            continue
        g = local(p.grad)
        if g.numel():
            sums[0 if getattr(p, "partition_dim", None) is not None else 1] += g.float().pow(2).sum()
    sharded_state = any(hasattr(p, "device_mesh") for p in params)
    if sharded_state and mesh.dp_cp_group is not None and group_size(mesh.dp_cp_group) > 1:
        dist.all_reduce(sums, group=mesh.dp_cp_group)
    if mesh.tp_size > 1:
        tp_sharded = sums[0:1].clone()
        dist.all_reduce(tp_sharded, group=mesh.tp_group)
        sums[0] = tp_sharded[0]
    total = sums.sum()
    if getattr(mesh, "pp_size", 1) > 1:
        dist.all_reduce(total, group=mesh.pp_group)
    return float(total.sqrt())


def clip_grad_norm(params, max_norm: float, mesh) -> float:
    """Scale gradients so the global norm is at most ``max_norm``; return the norm before."""
    params = [p for p in params if p.grad is not None]
    norm = grad_norm(params, mesh)
    if max_norm > 0 and norm > max_norm and norm == norm:
        coef = max_norm / (norm + 1e-6)
        for p in params:
            local(p.grad).mul_(coef)
    return norm


def found_inf(params, device) -> bool:
    """An inf/NaN in any gradient on any rank (every rank gets the same answer)."""
    flag = torch.zeros((), dtype=torch.float32, device=device)
    for p in params:
        if p.grad is not None and not torch.isfinite(local(p.grad)).all():
            flag.fill_(1.0)
            break
    if dist.is_initialized() and dist.get_world_size() > 1:
        dist.all_reduce(flag, op=dist.ReduceOp.MAX)  # every rank must agree to skip
    return bool(flag.item())
