"""Atomic, layout-free checkpoints: save in one layout and sharding mode, load into any other.

On disk (``--save DIR``)::

    DIR/latest_checkpointed_iteration.txt   "10"   (replaced atomically, after the rename)
    DIR/iter_0000010/
        __0_0.distcp, __1_0.distcp ...       --ckpt-format torch_dist (default): every rank's chunks,
        .metadata                            written by the ranks in parallel (torch_dist.py)
        model_optim.pt                       --ckpt-format torch: full tensors, written by rank 0
        rng/rank_00003.pt                    every rank's RNG streams with its (tp, cp, dp) coordinates
        metadata.json                        written LAST: format, iteration, layout, flags, data
                                             position, scheduler and loss scaler (torch_dist), every
                                             file with its size and CRC-32

Tensors are keyed by global parameter name and global shape (state.py), so a
checkpoint saved at TP2 x CP2 with FSDP2 loads at CP 4 without it, on one rank, or
in any other layout and mode.  RNG streams are restored only in the same layout (else
every rank reseeds from ``--seed`` and the iteration, and says so).

The protocol: every rank writes under ``iter_0000010.tmp/`` and checksums the files it
wrote; the ranks agree that every write succeeded (a failure, such as a full disk,
stops every rank with one line naming the path and the free space); rank 0 writes
``metadata.json``, fsyncs, renames the directory to ``iter_0000010/`` and only then
replaces the tracker.  A kill -9 at any moment therefore leaves the tracker at the
previous complete checkpoint; ``*.tmp`` leftovers are removed by the next save.
``--async-save`` runs the torch_dist write in the background from a host copy of the
pieces; the rename and tracker update happen once every rank's write is done (checked
each iteration, and before the next save or the end of training).

Loading verifies the checksums first, each rank a share of the files, so a damaged
file is named before anything is read into the model.
"""
from __future__ import annotations

import os
import shutil
import time
from dataclasses import dataclass, field

import torch
import torch.distributed as dist

from . import torch_dist, torch_legacy
from .files import (FORMAT_VERSION, METADATA, TRACKER, CheckpointError, check_save_dir,  # noqa: F401
                    checkpoint_dir, ckpt_format, commit_checkpoint, crc32_file, free_bytes, iter_dir_name, jsonable,
                    list_files, maybe_fault, prune, read_metadata, read_tracker, torch_save, verify_checksums)
from .state import ensure_optimizer_state, model_entries, optimizer_entries

# Flags that fix the shapes (and meaning) of the weights: they must match on load.
MODEL_SHAPE_FLAGS = ("num_layers", "hidden_size", "num_attention_heads", "num_query_groups", "ffn_hidden_size",
                     "kv_channels", "position_embedding_type", "max_position_embeddings", "normalization",
                     "swiglu", "disable_bias_linear", "untie_embeddings_and_output_weights", "padded_vocab_size",
                     "add_qkv_bias", "apply_layernorm_1p", "openai_gelu")


def _barrier():
    if dist.is_initialized():
        dist.barrier()


def _layout(mesh) -> dict:
    return {"world_size": mesh.world_size, "tp": mesh.tp_size, "cp": mesh.cp_size, "dp": mesh.dp_size,
            "ulysses": mesh.ulysses_size, "ring": mesh.ring_size, "pp": getattr(mesh, "pp_size", 1)}


def _group(mesh):
    return getattr(mesh, "checkpoint_group", None) if dist.is_initialized() else None


def _all_gather(obj, group) -> list:
    if not dist.is_initialized():
        return [obj]
    out = [None] * dist.get_world_size(group)
    dist.all_gather_object(out, obj, group=group)
    return out


def _agree(error, group) -> None:
    """Every rank raises the first rank's error, or none does (no rank waits for a dead one)."""
    errors = [e for e in _all_gather(error, group) if e]
    if errors:
        raise CheckpointError(errors[0])


def _failure(exc, iteration: int, tmp: str, save_dir: str, rank: int) -> str:
    failures = getattr(exc, "failures", None)  # DCP's CheckpointException: {rank: exception}
    if failures:
        rank, exc = next(iter(failures.items()))
        exc = exc[0] if isinstance(exc, tuple) else exc
    free = free_bytes(save_dir)
    space = f"{free / 2 ** 30:.2f} GiB free on {save_dir}" if free is not None else f"free space of {save_dir} unknown"
    return (f"saving the checkpoint of iteration {iteration} to {tmp} failed on rank {rank}: "
            f"{type(exc).__name__}: {exc} ({space}); nothing was renamed, the tracker still names the previous "
            "checkpoint")


# --- save ------------------------------------------------------------------------------
@dataclass
class PendingSave:
    """A save whose files are being written; finalised (rename, tracker) by :func:`finish_pending_save`."""
    iteration: int
    save_dir: str
    tmp: str
    files: list
    meta: dict
    start: float
    writer: object = None
    future: object = None
    errors: list = field(default_factory=list)


def save_checkpoint(ctx, save_dir: str | None = None) -> str:
    """Save model, optimizer, scheduler, loss scaler, RNG of every rank and the data position.

    Collective: every rank calls it.  Returns the final directory (with ``--async-save``
    the directory it will have once the background write is finalised).
    """
    finish_pending_save(ctx)
    args, mesh, state = ctx.args, ctx.mesh, ctx.state
    save_dir = save_dir or args.save
    fmt = getattr(args, "ckpt_format", "torch_dist")
    async_save = bool(getattr(args, "async_save", False)) and fmt == "torch_dist"
    iteration, rank, group = state.iteration, mesh.rank, _group(mesh)
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

    rng_file = os.path.join("rng", f"rank_{rank:05d}.pt")
    error = None
    try:  # local writes first: a failing rank must not leave the others in a collective
        maybe_fault(iteration, "enospc")
        torch_save({"layout": _layout(mesh), "coords": {"tp": mesh.tp_rank, "cp": mesh.cp_rank,
                                                                     "dp": mesh.dp_rank, "pp": mesh.pp_rank},
                                 "states": ctx.rng.get_states()}, os.path.join(tmp, rng_file))
    except OSError as exc:
        error = _failure(exc, iteration, tmp, save_dir, rank)
    _agree(error, group)

    ensure_optimizer_state(ctx.optimizer)
    model_e, optim_e = model_entries(ctx.model, mesh), optimizer_entries(ctx.optimizer, ctx.model, mesh)
    small = {"scheduler": ctx.scheduler.state_dict(), "loss_scaler": ctx.optimizer.scaler.state_dict(),
             "train_state": dict(vars(state))}
    meta = {"format_version": FORMAT_VERSION, "ckpt_format": fmt, "iteration": iteration,
            "consumed_samples": state.consumed_samples, "layout": _layout(mesh),
            "sharding": ctx.parallel.sharding, "model_shape": {k: jsonable(getattr(args, k, None))
                                                          for k in MODEL_SHAPE_FLAGS},
            "args": {k: jsonable(v) for k, v in sorted(vars(args).items())}}
    pending = PendingSave(iteration, save_dir, tmp, [rng_file], meta, start)
    error = None
    try:
        if fmt == "torch":
            pending.files += torch_legacy.save(model_e, optim_e, small, tmp, group, rank)
        else:
            meta.update(small)
            sd = torch_dist.state_dict(model_e, optim_e, staged=async_save)
            pending.writer, pending.future = torch_dist.save(sd, tmp, group, async_save)
    except Exception as exc:  # noqa: BLE001 - DCP raises the same CheckpointException on every rank
        error = _failure(exc, iteration, tmp, save_dir, rank)
    if pending.future is None:
        _agree(error, group)
        _finalize(ctx, pending)
    else:
        ctx.pending_save = pending
        if rank == mesh.world_size - 1:
            print(f"  checkpoint of iteration {iteration:7d} is being written to {tmp} in the background "
                  f"(--async-save) [ staged in {time.perf_counter() - start:.2f}s ]", flush=True)
    return final


def finish_pending_save(ctx, blocking: bool = True) -> None:
    """Finalise an ``--async-save`` whose files every rank has written (wait for it if ``blocking``).

    Collective when a save is pending (every rank has one, the same)."""
    pending = getattr(ctx, "pending_save", None)
    if pending is None:
        return
    if not blocking and dist.is_initialized():
        done = torch.tensor(float(pending.future.done()), device=ctx.device)
        dist.all_reduce(done, op=dist.ReduceOp.MIN)  # main-thread collectives stay off the checkpoint group
        if not done.item():
            return
    ctx.pending_save = None
    error = None
    try:
        pending.future.result()
    except Exception as exc:  # noqa: BLE001
        error = _failure(exc, pending.iteration, pending.tmp, pending.save_dir, ctx.mesh.rank)
    _agree(error, _group(ctx.mesh))
    _finalize(ctx, pending)


def _finalize(ctx, pending: PendingSave) -> None:
    """Checksums, metadata.json, rename, tracker: the steps that make a written checkpoint the latest."""
    mesh, rank, group = ctx.mesh, ctx.mesh.rank, _group(ctx.mesh)
    files = list(pending.files) + (list(pending.writer.written) if pending.writer is not None else [])
    mine = {rel: crc32_file(os.path.join(pending.tmp, rel)) for rel in files}
    maybe_fault(pending.iteration, "files")
    checksums = {}
    for part in _all_gather(mine, group):
        checksums.update(part)
    if rank == 0:
        listed = list_files(pending.tmp)
        for rel in sorted(set(listed) - set(checksums)):  # DCP's .metadata, written by the coordinator
            checksums[rel] = crc32_file(os.path.join(pending.tmp, rel))
        meta = dict(pending.meta, files=listed, checksums=checksums, saved_at=time.time())
        commit_checkpoint(pending.tmp, meta, pending.save_dir, pending.iteration, subdirs=("rng",),
                          before_tracker=lambda: maybe_fault(pending.iteration, "rename"))
        keep = getattr(ctx.args, "keep_last_n_checkpoints", None)
        if keep:
            prune(pending.save_dir, keep, pending.iteration)
    else:
        maybe_fault(pending.iteration, "rename")
    _barrier()
    if rank == mesh.world_size - 1:
        print(f"  successfully saved checkpoint at iteration {pending.iteration:7d} to {pending.save_dir} "
              f"[ {time.perf_counter() - pending.start:.2f}s ]", flush=True)


# --- load ------------------------------------------------------------------------------
def check_model_args(meta: dict, args, path: str) -> None:
    saved = meta.get("model_shape", {})
    for key in MODEL_SHAPE_FLAGS:
        if key not in saved:
            continue
        if key == "max_position_embeddings" and saved.get("position_embedding_type") == "rope" == \
                getattr(args, "position_embedding_type", None):
            continue  # RoPE has no position weights: a longer context loads the same checkpoint
        mine = jsonable(getattr(args, key, None))
        if saved[key] != mine:
            flag = "--" + key.replace("_", "-")
            if key == "padded_vocab_size":
                flag = "--vocab-size / --make-vocab-size-divisible-by (padded vocab)"
            raise CheckpointError(f"checkpoint {path} was saved with {flag} {saved[key]}, this run has {mine}; "
                                  f"use the checkpoint's value to load it")


def _verify(path: str, meta: dict, mesh) -> None:
    """Each rank checks a share of the files' checksums; every rank stops on a mismatch."""
    sums = meta.get("checksums") or {}
    rank, world = (mesh.rank, mesh.world_size) if dist.is_initialized() else (0, 1)
    _agree(verify_checksums(path, sums, lambda i: i % world == rank), _group(mesh))


def _reseed(ctx, iteration: int) -> None:
    from ..tensor_parallel import RNGTracker
    m = ctx.mesh
    fresh = RNGTracker(ctx.args.seed + iteration, m.tp_rank, m.cp_rank, m.dp_rank, ctx.device, m.pp_rank)
    ctx.rng.set_states(fresh.get_states())


def _load_tensors(path: str, meta: dict, ctx, load_optim: bool) -> dict:
    """Fill this rank's pieces of the model (and optimizer); return the small state (scheduler ...)."""
    mesh = ctx.mesh
    if load_optim:
        ensure_optimizer_state(ctx.optimizer)
    model_e = model_entries(ctx.model, mesh)
    optim_e = optimizer_entries(ctx.optimizer, ctx.model, mesh) if load_optim else {}
    if ckpt_format(meta) == "torch":
        full = torch_legacy.load_full_state(path)
        torch_legacy.load(full, model_e, optim_e, path, exact_names=getattr(mesh, "pp_size", 1) == 1)
        return full
    saved = torch_dist.saved_keys(path)
    for name, (_, shape, _) in model_e.items():
        if f"model.{name}" not in saved:
            raise CheckpointError(f"checkpoint {path} does not match this model: it has no {name}; check "
                                  "--num-layers, --untie-embeddings-and-output-weights, --disable-bias-linear, "
                                  "--position-embedding-type, --normalization")
        if saved[f"model.{name}"] != tuple(shape):
            raise CheckpointError(f"checkpoint {path}: parameter {name} has shape {saved[f'model.{name}']}, this "
                                  f"model expects {tuple(shape)}; the model flags differ")
    if optim_e and not any(k.startswith("optimizer.") for k in saved):
        raise CheckpointError(f"checkpoint {path} holds no optimizer state (a weights-only checkpoint); pass "
                              "--finetune, or --no-load-optim to keep its iteration")
    try:
        torch_dist.load(torch_dist.state_dict(model_e, optim_e), path, _group(mesh))
    except Exception as exc:  # noqa: BLE001 - DCP raises the same CheckpointException on every rank
        raise CheckpointError(f"checkpoint {path} cannot be read: {type(exc).__name__}: "
                              f"{str(exc).splitlines()[0] if str(exc) else ''}") from None
    return meta


def load_checkpoint(ctx, load_dir: str | None = None) -> int:
    """Restore what ``--load`` (and ``--no-load-optim``, ``--no-load-rng``, ``--finetune``) ask for.

    Returns the iteration loaded (0 when there is nothing to load).  Every rank reads the
    pieces it holds, so any TP/CP/PP/DP layout and sharding mode loads any checkpoint.
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
    _verify(path, meta, mesh)
    finetune = args.finetune
    load_optim = not (args.no_load_optim or finetune)
    small = _load_tensors(path, meta, ctx, load_optim)
    if load_optim:
        ctx.optimizer.scaler.load_state_dict(small["loss_scaler"])
        ctx.scheduler.load_state_dict(small["scheduler"])
    if not finetune:
        for key, value in small["train_state"].items():
            setattr(ctx.state, key, value)
        if not load_optim:  # --no-load-optim: Megatron keeps the iteration, the schedule restarts from it
            ctx.scheduler.num_steps = ctx.state.iteration
            ctx.scheduler.step(0)
    resumed = 0 if finetune else ctx.state.iteration
    same_layout = {"pp": 1, **(meta.get("layout") or {})} == _layout(mesh)  # checkpoints before PP: no "pp"
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
                print(f"> checkpoint layout TP {lay.get('tp')} x CP {lay.get('cp')} x PP {lay.get('pp', 1)} x DP "
                      f"{lay.get('dp')} differs "
                      f"from this run's: RNG streams reseeded from --seed and iteration {resumed} "
                      "(as --no-load-rng)", flush=True)
    elif args.no_load_rng or finetune:
        _reseed(ctx, resumed)
    _barrier()
    if last:
        what = "model only (--finetune)" if finetune else (
            "model (--no-load-optim)" if not load_optim else "model, optimizer, scheduler, loss scaler")
        print(f"  loaded checkpoint {path} ({ckpt_format(meta)}, saved {meta.get('sharding', 'replicated')}) at "
              f"iteration {iteration}: {what}; continuing from iteration {ctx.state.iteration}, consumed samples "
              f"{ctx.state.consumed_samples} [ {time.perf_counter() - start:.2f}s ]", flush=True)
    return resumed
