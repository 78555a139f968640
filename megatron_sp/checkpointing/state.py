"""What a checkpoint holds, in layout-free terms: tensors by global name and global shape.

A rank's share of a tensor is a list of pieces ``(view, offsets)``
(``tensor_parallel.sharding.local_pieces``): views of the elements it holds and where
they sit in the full tensor.  Both formats are written and read through the pieces,
so neither cares how the tensor is split (TP chunks, FSDP2 rows, replicas)::

    model state      "model"/<parameter name>             -> full shape of the parameter
    optimizer state  "optimizer"/<parameter name>/exp_avg -> same shape (every state of the
                                                             parameter's shape)
                     "optimizer"/<parameter name>/step    -> a scalar, replicated

Parameter names are global (``decoder.layers.<i>...``, ``i`` the layer's index in the whole
model whatever pipeline stage holds it), so the same names mean the same tensors in every
layout and sharding mode.  A pipeline stage contributes the names it holds; the tied
embedding's two copies (first and last stage) are the same ``embedding.weight`` chunks,
which DCP writes once.
"""
from __future__ import annotations

import torch

from ..tensor_parallel.sharding import full_shape, local_pieces


def _global_shape(param, mesh) -> tuple:
    return tuple(full_shape(param, mesh.tp_size))


def model_entries(model, mesh) -> dict:
    """``{name: (param, global shape, pieces)}`` of every parameter."""
    return {name: (p, _global_shape(p, mesh), local_pieces(p, mesh.tp_rank, mesh.tp_size))
            for name, p in model.named_parameters()}


@torch.no_grad()
def ensure_optimizer_state(optimizer) -> None:
    """Create the Adam state (zeros, step 0 -> 1) where it does not exist yet, so that a load
    has tensors to fill and a save at iteration 0 has the full structure.  A step with zero
    gradients and learning rate 0 leaves every weight unchanged, whatever the implementation
    (torch foreach/fused, apex) and however the parameters are sharded."""
    inner = optimizer.optimizer
    params = [p for g in inner.param_groups for p in g["params"]]
    if all(p in inner.state and inner.state[p] for p in params):
        return
    grads = {p: p.grad for p in params}
    lrs = [g["lr"] for g in inner.param_groups]
    for p in params:
        p.grad = torch.zeros_like(p)
    for g in inner.param_groups:
        g["lr"] = 0.0
    inner.step()
    for g, lr in zip(inner.param_groups, lrs):
        g["lr"] = lr
    for p in params:
        p.grad = grads[p]


def optimizer_entries(optimizer, model, mesh) -> dict:
    """``{name: {key: (global shape, pieces) | scalar tensor}}`` of the Adam state by parameter name."""
    inner = optimizer.optimizer
    out = {}
    for name, p in model.named_parameters():
        state = inner.state.get(p)
        if not state:
            continue
        entry = {}
        for key, value in sorted(state.items()):
            if not torch.is_tensor(value):
                continue
            if value.dim() == 0:
                entry[key] = value.to_local() if hasattr(value, "to_local") else value
            else:
                entry[key] = (_global_shape(p, mesh), local_pieces(p, mesh.tp_rank, mesh.tp_size, tensor=value))
        out[name] = entry
    return out
