"""Layout-free, atomic checkpoints: save in one TP/CP/DP layout, load into any other.

On disk (``--save DIR``)::

    DIR/latest_checkpointed_iteration.txt      "10"   (replaced atomically, after the rename)
    DIR/iter_0000010/
        model_optim.pt     full (unsharded) tensors keyed by parameter NAME:
                           {"model": {name: tensor}, "optimizer": {name: {"exp_avg": .., "exp_avg_sq": .., "step": ..}},
                            "scheduler": {..}, "loss_scaler": {..}, "train_state": {iteration, consumed_samples, ..}}
        rng/rank_00003.pt  every rank's RNG streams with its (tp, cp, dp) coordinates
        metadata.json      written LAST: format version, iteration, layout, args, every file with its size

Why full tensors: parameters are replicated over DP x CP and sharded only over TP,
so the first TP group (cp = dp = 0) gathers each parameter and each Adam state
tensor with ``full_of`` and global rank 0 writes them.  Loading cuts this rank's
shard with ``shard_of``, whatever the new TP size; the global shape is the
contract, not the layout.  RNG streams are restored only when the layout is the
same (else every rank reseeds from ``--seed`` and the iteration, and says so).

Atomic writes: every rank writes under ``iter_0000010.tmp/``; after a barrier rank 0
fsyncs, writes ``metadata.json``, renames the directory to ``iter_0000010/`` and only
then replaces the tracker file (temp file + ``os.replace``).  A kill -9 at any
moment therefore leaves the tracker pointing at the previous complete checkpoint;
leftover ``*.tmp`` directories are ignored and cleaned up by the next save.
``--keep-last-n-checkpoints`` deletes older complete checkpoints after the tracker
update.

Fault injection for tests: ``MEGATRON_SP_CHECKPOINT_FAULT="<iteration>:<rank>:<point>"``
makes that rank SIGKILL itself at ``point`` (``files``: after writing its files,
before the rename; ``rename``: after the rename, before the tracker update) of the
save at that iteration.
"""
from __future__ import annotations

import json
import os
import shutil
import time

import torch
import torch.distributed as dist

from ..tensor_parallel.sharding import full_of, shard_of
from .files import (FORMAT_VERSION, METADATA, MODEL_FILE, TRACKER, CheckpointError,  # noqa: F401
                               check_save_dir, checkpoint_dir, fsync_dir, iter_dir_name, list_files,
                               load_full_state, maybe_fault, prune, read_metadata, read_tracker,
                               torch_save, write_text_atomic)


# Flags that fix the shapes (and meaning) of the weights: they must match on load.
MODEL_SHAPE_FLAGS = ("num_layers", "hidden_size", "num_attention_heads", "num_query_groups", "ffn_hidden_size",
                     "kv_channels", "position_embedding_type", "max_position_embeddings", "normalization",
                     "swiglu", "disable_bias_linear", "untie_embeddings_and_output_weights", "padded_vocab_size",
                     "add_qkv_bias", "apply_layernorm_1p", "openai_gelu")


def _barrier():
    if dist.is_initialized():
        dist.barrier()


def _jsonable(value):
    if isinstance(value, (str, int, float, bool)) or value is None:
        return value
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    return str(value)


# --- gather and shard ------------------------------------------------------------------
def _gather_full(model, optimizer, mesh, writer: bool):
    """Full model and optimizer tensors keyed by name (on the writer; ``None`` elsewhere).

    Collective over the first TP group only (cp = dp = 0): the other groups hold copies.
    """
    if mesh.cp_rank != 0 or mesh.dp_rank != 0:
        return None, None
    inner = optimizer.optimizer
    model_sd, optim_sd = {}, {}
    for name, p in model.named_parameters():
        full = full_of(p.detach(), p, mesh.tp_group, mesh.tp_size)
        if writer:
            model_sd[name] = full.cpu().clone()
        state = inner.state.get(p, {})
        entry = {}
        for key in sorted(state):
            value = state[key]
            if torch.is_tensor(value) and value.shape == p.shape:
                value = full_of(value, p, mesh.tp_group, mesh.tp_size)
            if writer:
                entry[key] = value.cpu().clone() if torch.is_tensor(value) else value
        if writer and entry:
            optim_sd[name] = entry
    return (model_sd, optim_sd) if writer else (None, None)


def _shard_into(model, optimizer, mesh, model_sd, optim_sd, load_optim: bool, path: str) -> None:
    params = dict(model.named_parameters())
    missing = sorted(set(params) - set(model_sd))
    unexpected = sorted(set(model_sd) - set(params))
    if missing or unexpected:
        raise CheckpointError(f"checkpoint {path} does not match this model: missing {missing[:5]}, unexpected "
                              f"{unexpected[:5]}; check --num-layers, --untie-embeddings-and-output-weights, "
                              "--disable-bias-linear, --position-embedding-type, --normalization")
    inner = optimizer.optimizer
    states = {}
    with torch.no_grad():
        for name, p in params.items():
            full = model_sd[name]
            expected = list(p.shape)
            if getattr(p, "partition_dim", None) is not None:
                expected[p.partition_dim] *= mesh.tp_size
            if list(full.shape) != expected:
                raise CheckpointError(f"checkpoint {path}: parameter {name} has shape {tuple(full.shape)}, this "
                                      f"model expects {tuple(expected)}; the model flags differ")
            p.copy_(shard_of(full, p, mesh.tp_rank, mesh.tp_size).to(p.device, p.dtype))
            entry = optim_sd.get(name) if load_optim else None
            if entry:
                states[p] = {k: (shard_of(v, p, mesh.tp_rank, mesh.tp_size).clone()
                                 if torch.is_tensor(v) and list(v.shape) == expected
                                 else v.clone() if torch.is_tensor(v) else v) for k, v in entry.items()}
    if load_optim:
        # Through the optimizer's own load_state_dict (by index), so it moves and casts each
        # state tensor the way its implementation (foreach, fused, apex) wants.
        sd = inner.state_dict()
        order = [p for g in inner.param_groups for p in g["params"]]
        sd["state"] = {i: states[p] for i, p in enumerate(order) if p in states}
        inner.load_state_dict(sd)


# --- save ------------------------------------------------------------------------------
def _layout(mesh) -> dict:
    return {"world_size": mesh.world_size, "tp": mesh.tp_size, "cp": mesh.cp_size, "dp": mesh.dp_size,
            "ulysses": mesh.ulysses_size, "ring": mesh.ring_size}


def save_checkpoint(ctx, save_dir: str | None = None) -> str:
    """Save model, optimizer, scheduler, loss scaler, RNG of every rank and the data position.

    Collective: every rank calls it.  Returns the final directory.
    """
    save_dir = save_dir or ctx.args.save
    mesh, state = ctx.mesh, ctx.state
    iteration = state.iteration
    rank = mesh.rank
    final = os.path.join(save_dir, iter_dir_name(iteration))
    tmp = final + ".tmp"
    start = time.perf_counter()
    if rank == 0:
        os.makedirs(save_dir, exist_ok=True)
        for name in os.listdir(save_dir):  # leftovers of saves that died half-way
            if name.endswith(".tmp") and name.startswith("iter_"):
                shutil.rmtree(os.path.join(save_dir, name), ignore_errors=True)
        os.makedirs(os.path.join(tmp, "rng"))
    _barrier()

    model_sd, optim_sd = _gather_full(ctx.model, ctx.optimizer, mesh, writer=rank == 0)
    if rank == 0:
        torch_save({"model": model_sd, "optimizer": optim_sd,
                     "scheduler": ctx.scheduler.state_dict(),
                     "loss_scaler": ctx.optimizer.scaler.state_dict(),
                     "train_state": dict(vars(state))}, os.path.join(tmp, MODEL_FILE))
    torch_save({"layout": _layout(mesh), "coords": {"tp": mesh.tp_rank, "cp": mesh.cp_rank, "dp": mesh.dp_rank},
                 "states": ctx.rng.get_states()}, os.path.join(tmp, "rng", f"rank_{rank:05d}.pt"))
    maybe_fault(iteration, "files")
    _barrier()  # every rank's files are on disk

    if rank == 0:
        meta = {"format_version": FORMAT_VERSION, "iteration": iteration,
                "consumed_samples": state.consumed_samples, "layout": _layout(mesh),
                "model_shape": {k: _jsonable(getattr(ctx.args, k, None)) for k in MODEL_SHAPE_FLAGS},
                "args": {k: _jsonable(v) for k, v in sorted(vars(ctx.args).items())},
                "files": list_files(tmp), "saved_at": time.time()}
        meta_path = os.path.join(tmp, METADATA)
        with open(meta_path, "w") as f:
            json.dump(meta, f, indent=1)
            f.flush()
            os.fsync(f.fileno())
        fsync_dir(os.path.join(tmp, "rng"))
        fsync_dir(tmp)
        if os.path.exists(final):  # a checkpoint of this iteration the tracker no longer points at
            stale = final + ".old.tmp"
            shutil.rmtree(stale, ignore_errors=True)
            os.rename(final, stale)
            shutil.rmtree(stale, ignore_errors=True)
        os.rename(tmp, final)
        fsync_dir(save_dir)
    maybe_fault(iteration, "rename")
    if rank == 0:
        write_text_atomic(os.path.join(save_dir, TRACKER), f"{iteration}\n")
        keep = getattr(ctx.args, "keep_last_n_checkpoints", None)
        if keep:
            prune(save_dir, keep, iteration)
    _barrier()
    if rank == mesh.world_size - 1:
        print(f"  successfully saved checkpoint at iteration {iteration:7d} to {save_dir} "
              f"[ {time.perf_counter() - start:.2f}s ]", flush=True)
    return final


# --- load ------------------------------------------------------------------------------


def check_model_args(meta: dict, args, path: str) -> None:
    saved = meta.get("model_shape", {})
    for key in MODEL_SHAPE_FLAGS:
        if key not in saved:
            continue
        if key == "max_position_embeddings" and saved.get("position_embedding_type") == "rope" == \
                getattr(args, "position_embedding_type", None):
            continue  # RoPE has no position weights: a longer context loads the same checkpoint
        mine = _jsonable(getattr(args, key, None))
        if saved[key] != mine:
            flag = "--" + key.replace("_", "-")
            if key == "padded_vocab_size":
                flag = "--vocab-size / --make-vocab-size-divisible-by (padded vocab)"
            raise CheckpointError(f"checkpoint {path} was saved with {flag} {saved[key]}, this run has {mine}; "
                                  f"use the checkpoint's value to load it")


def _reseed(ctx, iteration: int) -> None:
    from ..tensor_parallel import RNGTracker
    m = ctx.mesh
    fresh = RNGTracker(ctx.args.seed + iteration, m.tp_rank, m.cp_rank, m.dp_rank, ctx.device)
    ctx.rng.set_states(fresh.get_states())


def load_checkpoint(ctx, load_dir: str | None = None) -> int:
    """Restore what ``--load`` (and ``--no-load-optim``, ``--no-load-rng``, ``--finetune``) ask for.

    Returns the iteration loaded (0 when there is nothing to load).  Every rank reads the
    full tensors and keeps its shard, so any TP/CP/DP layout loads any checkpoint.
    """
    args, mesh = ctx.args, ctx.mesh
    load_dir = load_dir or args.load
    last = mesh.rank == mesh.world_size - 1
    start = time.perf_counter()
    iteration = read_tracker(load_dir) if os.path.isdir(load_dir) else None
    if iteration is None:
        if last:
            print(f"WARNING: no {TRACKER} in --load {load_dir}; starting from iteration 0 with fresh weights",
                  flush=True)
        return 0
    path = checkpoint_dir(load_dir, iteration)
    meta = read_metadata(path)
    check_model_args(meta, args, path)
    full = load_full_state(path)
    finetune = args.finetune
    load_optim = not (args.no_load_optim or finetune)
    _shard_into(ctx.model, ctx.optimizer, mesh, full["model"], full.get("optimizer") or {}, load_optim, path)
    if load_optim:
        ctx.optimizer.scaler.load_state_dict(full["loss_scaler"])
        ctx.scheduler.load_state_dict(full["scheduler"])
    if not finetune:
        for key, value in full["train_state"].items():
            setattr(ctx.state, key, value)
        if not load_optim:  # --no-load-optim: Megatron keeps the iteration, the schedule restarts from it
            ctx.scheduler.num_steps = ctx.state.iteration
            ctx.scheduler.step(0)
    resumed = 0 if finetune else ctx.state.iteration
    same_layout = meta.get("layout") == _layout(mesh)
    if not (finetune or args.no_load_rng):
        if same_layout:
            rng_file = os.path.join(path, "rng", f"rank_{mesh.rank:05d}.pt")
            try:
                rng = torch.load(rng_file, map_location="cpu", weights_only=True)
            except Exception as exc:  # noqa: BLE001
                raise CheckpointError(f"checkpoint file {rng_file} cannot be read ({exc}); "
                                      "pass --no-load-rng to reseed instead") from None
            ctx.rng.set_states(rng["states"])
        else:
            _reseed(ctx, resumed)
            if last:
                lay = meta.get("layout", {})
                print(f"> checkpoint layout TP {lay.get('tp')} x CP {lay.get('cp')} x DP {lay.get('dp')} differs "
                      f"from this run's: RNG streams reseeded from --seed and iteration {resumed} "
                      "(as --no-load-rng)", flush=True)
    elif args.no_load_rng or finetune:
        _reseed(ctx, resumed)
    _barrier()
    if last:
        what = "model only (--finetune)" if finetune else (
            "model (--no-load-optim)" if not load_optim else "model, optimizer, scheduler, loss scaler")
        print(f"  loaded checkpoint {path} at iteration {iteration}: {what}; continuing from iteration "
              f"{ctx.state.iteration}, consumed samples {ctx.state.consumed_samples} "
              f"[ {time.perf_counter() - start:.2f}s ]", flush=True)
    return resumed
