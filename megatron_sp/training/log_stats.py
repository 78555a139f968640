"""Optional statistics of the log line (Megatron-LM's ``--log-params-norm``, ``--log-num-zeros-in-grad``).

Both count every element of the full model once, whatever the layout: TP-sharded
parameters (``partition_dim`` set) are summed over the TP group, replicated ones are
counted on each rank once (they are identical there, gradients included, after the
DP x CP and Megatron-SP reductions).
"""
from __future__ import annotations

import torch
import torch.distributed as dist

from .logging import memory_bytes


def _over_model(params, value, mesh) -> float:
    """``sum value(t)`` over the full model: TP-sharded terms summed over TP."""
    sharded = sum((value(p) for p in params if getattr(p, "partition_dim", None) is not None),
                  torch.zeros((), dtype=torch.float64))
    replicated = sum((value(p) for p in params if getattr(p, "partition_dim", None) is None),
                     torch.zeros((), dtype=torch.float64))
    if mesh.tp_size > 1:
        sharded = sharded.to(params[0].device)
        dist.all_reduce(sharded, group=mesh.tp_group)
    return float(sharded.cpu() + replicated.cpu())


def params_norm(model, mesh) -> float:
    """L2 norm of all parameters (``params norm`` of Megatron's log line)."""
    params = list(model.parameters())
    return _over_model(params, lambda p: p.detach().double().pow(2).sum().cpu(), mesh) ** 0.5


def grad_zeros(model, mesh) -> int:
    """Gradient elements that are exactly zero (``num zeros`` of Megatron's log line)."""
    params = [p for p in model.parameters() if p.grad is not None]
    if not params:
        return 0
    return int(_over_model(params, lambda p: (p.grad == 0).sum().double().cpu(), mesh))


def log_extras(ctx, batch_size: int | None = None) -> dict:
    """What Megatron's logging switches add to the log line and TensorBoard (collective over TP);
    ``batch_size``: the iteration's global batch (a batch-size schedule changes it)."""
    a, out = ctx.args, {}
    if getattr(a, "log_num_zeros_in_grad", False):
        out["num-zeros"] = grad_zeros(ctx.model, ctx.mesh)
    if getattr(a, "log_params_norm", False):
        out["params-norm"] = params_norm(ctx.model, ctx.mesh)
    if getattr(a, "log_batch_size_to_tensorboard", False):
        out["batch-size"] = batch_size or a.global_batch_size
    if getattr(a, "log_world_size_to_tensorboard", False):
        out["world-size"] = ctx.mesh.world_size
    if getattr(a, "log_memory_to_tensorboard", False):
        out.update(memory_bytes(ctx.device))
    return out
