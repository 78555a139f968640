"""``--ckpt-format torch``: the older single-file format, full tensors keyed by name.

``model_optim.pt`` holds ``{"model": {name: full}, "optimizer": {name: {key: full}},
"scheduler", "loss_scaler", "train_state"}``.  Saving gathers every tensor on global
rank 0, which writes the file alone (its memory and time grow with the whole model:
use ``torch_dist`` for anything large); loading memory-maps the file and copies each
rank's pieces out of the full tensors, so it loads into any layout and sharding mode.
"""
from __future__ import annotations

import os

import torch
import torch.distributed as dist

from ..tensor_parallel.sharding import piece_of
from .files import MODEL_FILE, CheckpointError, torch_save


def _gather_full(shape, pieces, group, rank: int):
    """The full tensor on rank 0 (None elsewhere) from every rank's pieces.  Collective; a rank that
    does not hold the tensor (another pipeline stage's) passes ``shape`` None and no pieces."""
    mine = (shape, [(v.detach().cpu().clone(), tuple(o)) for v, o in pieces])
    if group is None:
        everyone = [mine]
    else:
        everyone = [None] * dist.get_world_size(group) if rank == 0 else None
        dist.gather_object(mine, everyone, dst=0, group=group)
    if rank != 0:
        return None
    shape = next(s for s, _ in everyone if s is not None)
    dtype = next((p[0][0].dtype for _, p in everyone if p), torch.float32)
    full = torch.empty(shape, dtype=dtype)
    for _, rank_pieces in everyone:
        for view, offsets in rank_pieces:
            piece_of(full, view, offsets).copy_(view)
    return full


def _all_names(names: list, group) -> list:
    """The union of every rank's names, in one order on every rank (pipeline stages hold different ones)."""
    if group is None:
        return sorted(names)
    everyone = [None] * dist.get_world_size(group)
    dist.all_gather_object(everyone, sorted(names), group=group)
    return sorted(set().union(*everyone))


def save(model_entries: dict, optimizer_entries: dict, extra: dict, path: str, group, rank: int) -> list:
    """Gather to global rank 0 and write ``model_optim.pt``; returns the files this rank wrote."""
    model_sd, optim_sd = {}, {}
    for name in _all_names(list(model_entries), group):
        _, shape, pieces = model_entries.get(name, (None, None, []))
        full = _gather_full(shape, pieces, group, rank)
        if rank == 0:
            model_sd[name] = full
    keys = [f"{n}\0{k}" for n, entry in optimizer_entries.items() for k in entry]
    for name_key in _all_names(keys, group):  # every rank takes part in every gather
        name, key = name_key.split("\0")
        value = optimizer_entries.get(name, {}).get(key)
        if value is None:  # another pipeline stage's parameter
            value = (None, [])
        elif not isinstance(value, tuple):  # a replicated scalar (Adam's step)
            value = ((), [(value.detach().reshape(()), ())])
        full = _gather_full(*value, group, rank)
        if rank == 0:
            optim_sd.setdefault(name, {})[key] = full
    if rank != 0:
        return []
    torch_save({"model": model_sd, "optimizer": optim_sd, **extra}, os.path.join(path, MODEL_FILE))
    return [MODEL_FILE]


def load_full_state(path: str) -> dict:
    """The whole file, memory-mapped (nothing is read until a tensor is touched)."""
    file = os.path.join(path, MODEL_FILE)
    try:
        return torch.load(file, map_location="cpu", weights_only=True, mmap=True)
    except Exception as exc:  # noqa: BLE001 - any unpickling failure means a damaged file
        raise CheckpointError(f"checkpoint file {file} cannot be read ({type(exc).__name__}: {exc}); "
                              f"the checkpoint is corrupt, use an earlier iter_* directory") from None


@torch.no_grad()
def load(full: dict, model_entries: dict, optimizer_entries: dict, path: str, exact_names: bool = True) -> None:
    """Copy this rank's pieces out of the full tensors of ``full`` (see :func:`load_full_state`).
    ``exact_names``: the checkpoint holds exactly this rank's names (False for a pipeline stage,
    which holds some of them)."""
    model_sd = full["model"]
    _check_names(set(model_entries), set(model_sd) if exact_names else set(model_sd) & set(model_entries), path)
    for name, (_, shape, pieces) in model_entries.items():
        _copy_pieces(model_sd[name], shape, pieces, f"parameter {name}", path)
    optim_sd = full.get("optimizer") or {}
    for name, entry in optimizer_entries.items():
        saved = optim_sd.get(name)
        if saved is None:
            raise CheckpointError(f"checkpoint {path} holds no optimizer state for {name}; pass --no-load-optim "
                                  "(or --finetune) to load the weights only")
        for key, value in entry.items():
            if isinstance(value, tuple):
                _copy_pieces(saved[key], value[0], value[1], f"optimizer state {name}.{key}", path)
            else:
                value.copy_(saved[key])


def _check_names(mine: set, saved: set, path: str) -> None:
    missing, unexpected = sorted(mine - saved), sorted(saved - mine)
    if missing or unexpected:
        raise CheckpointError(f"checkpoint {path} does not match this model: missing {missing[:5]}, unexpected "
                              f"{unexpected[:5]}; check --num-layers, --untie-embeddings-and-output-weights, "
                              "--disable-bias-linear, --position-embedding-type, --normalization")


def _copy_pieces(full: torch.Tensor, shape, pieces, what: str, path: str) -> None:
    if tuple(full.shape) != tuple(shape):
        raise CheckpointError(f"checkpoint {path}: {what} has shape {tuple(full.shape)}, this model expects "
                              f"{tuple(shape)}; the model flags differ")
    for view, offsets in pieces:
        view.copy_(piece_of(full, view, offsets))
