"""The pretraining loop: build everything from the flags, then train (docs/ARCHITECTURE.md, "Data flow of a run").

One iteration on a rank::

    global batch (seed, iteration) -> this DP rank's micro-batches -> this CP rank's tokens
      -> for each micro-batch: forward (autocast), loss = sum(mask * loss) / tokens of the
         whole global batch, backward (DDP sums gradients over DP x CP on the last one)
      -> TP all-reduce of Megatron-SP gradients -> overflow check, clip, AdamW step, LR step

Under pipeline parallelism (``--pipeline-model-parallel-size K``) each rank builds only its
stages' layers (pipeline_parallel/) and the micro-batches run through a
``torch.distributed.pipelining`` schedule instead of the loop above; the rest is the same.
"""
from __future__ import annotations

import contextlib
import math
import os
import time
from dataclasses import dataclass

import torch
import torch.distributed as dist

from ..model import GPTModel
from ..parallel_state import init_distributed, initialize_model_parallel
from ..sequence_parallel import attention_summary, check_backend
from ..sequence_parallel.config import left_window, reference_backward_bytes, score_block_bytes
from ..tensor_parallel import RNGTracker
from ..arguments import build_parser
from ..arguments.batch_schedule import batch_schedule_from_args
from ..arguments.parallel import ParallelConfig
from ..arguments.preflight import preflight
from .batches import (build_datasets, datasets_for_resume, evaluation_on, evaluation_window, global_batches,
                      validation_sets)
from ..checkpointing import check_save_dir, finish_pending_save, load_checkpoint, save_checkpoint
from .divergence import DivergenceGuard
from .exit_conditions import ExitSignal, should_exit
from .faults import install_stop_fault
from ..distributed import describe_model_state, ensure_process_group
from .log_stats import log_extras
from .logging import (MetricsWriter, eval_line, flops_per_iteration, log_line, memory_mb, peak_tflops,
                      print_rank_last)
from .lr_scheduler import LRScheduler, build_scheduler
from .optimizer import MixedPrecisionOptimizer
from .model_parts import build_model_parts, compute_dtype
from .step import forward_backward, train_step

@dataclass
class TrainState:
    iteration: int = 0
    consumed_samples: int = 0
    skipped_iterations: int = 0
    nan_iterations: int = 0


def _mask_note(a) -> str:
    """The start-up line's masks: documents (--reset-attention-mask) and the window (--window-size)."""
    window = left_window(getattr(a, "window_size", None))
    parts = (["per-document (--reset-attention-mask)"] if getattr(a, "reset_attention_mask", False) else []) + (
        [f"sliding window: keys i-{window}..i (--window-size {window},0)"] if window is not None else [])
    return f"; masks: {', '.join(parts)}, empty ring blocks skipped" if parts else ""


# --- setup and the loop ----------------------------------------------------------------
@dataclass
class Context:
    args: object
    mesh: object
    device: torch.device
    tokenizer: object
    model: GPTModel   # this rank's GPT (under PP: its stages' layers)
    model_parts: list  # what runs a forward: [the model] or the PP stages, DDP-wrapped when replicated
    pipeline: object   # the pipeline_parallel.Pipeline (schedule) over model_parts under PP, else None
    parallel: ParallelConfig
    optimizer: MixedPrecisionOptimizer
    scheduler: LRScheduler
    rng: RNGTracker
    datasets: tuple
    state: TrainState
    exit_reason: str | None = None
    pending_save: object = None  # an --async-save being written (checkpointing.save_load.PendingSave)
    own_process_group: bool = False  # the world-of-one group setup() created for FSDP2 without torchrun
    batch_schedule: object = None  # the global batch by consumed samples (arguments/batch_schedule.py)


def setup(args) -> Context:
    """Validate everything first (no collective yet, so every rank fails alike), then build."""
    world = dist.get_world_size() if dist.is_initialized() else int(os.environ.get("WORLD_SIZE", "1"))
    pre = preflight(args, world)  # every check that needs no collective, on every rank alike
    cfg, parallel = pre.model, pre.parallel
    init_distributed(args.distributed_backend, args.distributed_timeout_minutes * 60)
    if args.bf16 and args.disable_bf16_reduced_precision_matmul:  # as Megatron's TransformerConfig
        torch.backends.cuda.matmul.allow_bf16_reduced_precision_reduction = False
    device = torch.device("cuda", torch.cuda.current_device()) if (
        torch.cuda.is_available() and (args.distributed_backend or "nccl") == "nccl") else torch.device("cpu")
    check_backend(args.attention_backend, args.cp_comm_type, args.context_parallel_size, device,
                  compute_dtype(args), args.attention_dropout)  # on the device, before the first collective
    own_group = ensure_process_group() if parallel.sharded else False
    mesh = initialize_model_parallel(args.tensor_model_parallel_size, args.context_parallel_size,
                                     args.hierarchical_context_parallel_sizes, args.pipeline_model_parallel_size,
                                     args.distributed_timeout_minutes * 60)
    rng = RNGTracker(args.seed, mesh.tp_rank, mesh.cp_rank, mesh.dp_rank, device, mesh.pp_rank)
    model, parts, pipeline = build_model_parts(args, cfg, parallel, mesh, rng, device, pre.pipeline_layout)
    optimizer = MixedPrecisionOptimizer(model, args, mesh)
    scheduler = build_scheduler(optimizer, args)
    return Context(args, mesh, device, pre.tokenizer, model, parts, pipeline, parallel, optimizer, scheduler, rng,
                   build_datasets(args, pre.tokenizer), TrainState(), own_process_group=own_group,
                   batch_schedule=pre.batch_schedule)


def _is_last_rank(mesh) -> bool:
    return mesh.rank == mesh.world_size - 1


def print_summary(ctx) -> None:
    n_params = sum(p.numel() for p in ctx.model.parameters())
    counted = [p for p in ctx.model.parameters() if not getattr(p, "pipeline_shared", False)]
    full = torch.tensor([float(sum(p.numel() for p in counted if getattr(p, "partition_dim", None) is not None)),
                         float(sum(p.numel() for p in counted if getattr(p, "partition_dim", None) is None))])
    if ctx.mesh.tp_group is not None:
        dist.all_reduce(full[:1], group=ctx.mesh.tp_group)
    if ctx.mesh.pp_group is not None:
        dist.all_reduce(full, group=ctx.mesh.pp_group)
    total = int(full.sum().item())
    a = ctx.args
    u = ctx.parallel.ulysses_degree  # the reference kernel's largest block: the local portion after the all-to-all
    scores = reference_backward_bytes(score_block_bytes(a.micro_batch_size, a.num_attention_heads / (ctx.parallel.tp * u),
                                                        a.seq_length / ctx.parallel.cp * u), a.attention_dropout > 0)
    attn, attn_warning = attention_summary(a.cp_comm_type, ctx.mesh.cp_size, ctx.device, compute_dtype(a),
                                           a.attention_dropout, attention_backend=a.attention_backend,
                                           ring_size=ctx.mesh.ring_size, score_bytes=scores)
    attn += _mask_note(a)
    pipeline = (f"> pipeline: {ctx.pipeline.describe()}; this rank (PP {ctx.mesh.pp_rank}) runs layers "
                f"{_ranges(ctx.model.decoder.layers)}\n" if ctx.parallel.pipelined else "")
    model_state = describe_model_state(ctx.parallel.sharding, ctx.parallel.dp_cp, a.bf16, a.fp16,
                                       a.optimizer_cpu_offload)
    print_rank_last(
        f"> layout: {ctx.mesh.describe()}, cp-comm-type {a.cp_comm_type}, sequence-parallel {a.sequence_parallel}, "
        f"device {ctx.device}\n{pipeline}> model: {a.num_layers} layers, hidden {a.hidden_size}, heads "
        f"{a.num_attention_heads} (query groups {a.num_query_groups}), seq {a.seq_length}, padded vocab "
        f"{ctx.model.cfg.vocab_size}; parameters: {total / 1e6:.3f} M total, {n_params / 1e6:.3f} M on this rank\n"
        f"> batch: global {a.global_batch_size} = micro {a.micro_batch_size} x {a.num_micro_batches} accumulation "
        f"x DP {ctx.mesh.dp_size}{_schedule_text(ctx)}; precision {'bf16' if a.bf16 else 'fp16' if a.fp16 else 'fp32'}\n"
        f"> model state: {model_state}\n"
        f"{_overlap_note(a)}"
        f"> attention: {attn}\n"
        f"> evaluation: {_evaluation_text(ctx)}\n"
        f"> MFU peak per device: {_peak_text(ctx)}"
        + "".join(f"\n> note: {n}" for n in getattr(a, "startup_notes", []))
        + (f"\nWARNING: {attn_warning}" if attn_warning else ""),
        _is_last_rank(ctx.mesh))


def _schedule_text(ctx) -> str:
    s = ctx.batch_schedule
    return "" if s is None or s.kind == "constant" else f" at the end of a {s.describe()}"


def _ranges(layers) -> str:
    """``"4-7"`` or ``"2-3, 6-7"``: the global indices of a ModuleDict of layers."""
    ids, out = sorted(int(k) for k in layers), []
    for i in ids:
        if out and out[-1][1] == i - 1:
            out[-1][1] = i
        else:
            out.append([i, i])
    return ", ".join(f"{a}-{b}" if a != b else f"{a}" for a, b in out)


def _overlap_note(a) -> str:
    flags = [f for f, on in (("--overlap-grad-reduce", a.overlap_grad_reduce),
                             ("--overlap-param-gather", a.overlap_param_gather)) if on]
    if not flags:
        return ""
    return (f"> {' and '.join(flags)}: always on here (DDP buckets and FSDP2 reduce-scatter run during backward; "
            "FSDP2 prefetches the next layer's weights)\n")


def _evaluation_text(ctx) -> str:
    a = ctx.args
    if not evaluation_on(a):
        return "off (--eval-interval 0 or --eval-iters 0)"
    per_split = not a.data_path and not a.mock_data
    missing = lambda key: (f"no --{key}-data-path" if per_split  # noqa: E731
                           else f"--split {a.split} gives it weight 0")
    sets = validation_sets(ctx.datasets)
    if not sets:
        valid = f"no validation split ({missing('valid')})"
    else:
        size = ("every whole global batch (--full-validation)" if getattr(a, "full_validation", False)
                else f"{a.eval_iters} global batches")
        valid = (f"{size} of the validation split" if len(sets) == 1 else f"{size} of each of {len(sets)} "
                 "validation sets") + f" every {a.eval_interval} iterations"
    test = (f"{a.eval_iters} global batches of the test split at the end" if ctx.datasets[2] is not None
            else f"no test split ({missing('test')})")
    return f"{valid}; {test}"


def _peak_text(ctx) -> str:
    peak, source = peak_tflops(ctx.device, ctx.args.peak_tflops)
    return f"{peak} TFLOP/s ({source})" if peak else source


@torch.no_grad()
def evaluate(ctx, iteration: int, split: int = 1, dataset=None) -> float:
    """Mean lm loss over the global batches of a split that batches.evaluation_window names
    (model.eval(), no grad); ``dataset``: one of several validation sets."""
    args = ctx.args
    dataset = ctx.datasets[split] if dataset is None else dataset
    start, count = evaluation_window(args, dataset, iteration, split)
    ctx.model.eval()
    parts = ctx.model_parts if ctx.parallel.pipelined else [ctx.model]  # no DDP hooks without backward
    total = 0.0
    for batches in global_batches(dataset, start, count, args, ctx.mesh, ctx.device):
        total += forward_backward(parts, batches, args, ctx.mesh, ctx.device, pipeline=ctx.pipeline).item()
    ctx.model.train()
    return total / max(count, 1)


def _new_interval() -> dict:
    """Counters of one log interval, as Megatron's: iterations, the advanced (not skipped) ones
    and their loss sum, skipped and NaN iterations; the log line reports them, then they reset."""
    return dict(iters=0, advanced=0, loss=0.0, skipped=0, nans=0)


def train(ctx, writer=None, start_time: float | None = None, exit_signal=None) -> list:
    """Run to ``--train-iters`` (or an exit condition); return this process's per-iteration losses."""
    args, state, mesh = ctx.args, ctx.state, ctx.mesh
    writer = writer or MetricsWriter(args, False)
    start_time = time.time() if start_time is None else start_time
    exit_signal = exit_signal or ExitSignal(False)
    last_rank = _is_last_rank(mesh)
    ctx.model.train()
    flops = flops_per_iteration(args, ctx.model.cfg.vocab_size)
    peak, _ = peak_tflops(ctx.device, args.peak_tflops)
    losses, interval_start, interval = [], time.perf_counter(), _new_interval()
    saved_at = state.iteration if args.load else None
    guard = DivergenceGuard(args, ctx.optimizer.scaler)
    schedule = ctx.batch_schedule or batch_schedule_from_args(args)
    last_gbs = schedule.global_batch_size(state.consumed_samples)
    batches_source = global_batches(ctx.datasets[0], state.consumed_samples, args.train_iters - state.iteration,
                                    args, mesh, ctx.device, schedule)
    with contextlib.closing(batches_source) as train_batches:  # --num-workers: the workers stop with it
        while state.iteration < args.train_iters:
            gbs = schedule.global_batch_size(state.consumed_samples)  # this iteration's (a ramp changes it)
            if gbs != last_gbs and args.save and state.iteration and saved_at != state.iteration \
                    and not guard.holding:  # as Megatron: a checkpoint where the micro-batch count changes
                save_checkpoint(ctx)
                saved_at = state.iteration
            last_gbs = gbs
            batches = next(train_batches)
            scale = ctx.optimizer.loss_scale
            stats = train_step(ctx, batches)
            lr = ctx.optimizer.param_groups[0]["lr"]
            if not stats["skipped"]:  # as Megatron: a skipped (overflow) step does not advance the schedule
                ctx.scheduler.step(samples=gbs)
            state.iteration += 1
            state.consumed_samples += gbs
            nan = not math.isfinite(stats["loss"])
            state.skipped_iterations += int(stats["skipped"])
            state.nan_iterations += int(nan)
            losses.append(stats["loss"])
            interval["iters"] += 1
            interval["skipped"] += int(stats["skipped"])
            interval["nans"] += int(nan)
            if not stats["skipped"]:
                interval["advanced"] += 1
                interval["loss"] += stats["loss"]
            if state.iteration % args.log_interval == 0 or state.iteration == args.train_iters:
                elapsed = (time.perf_counter() - interval_start) / interval["iters"]
                tflops = flops * gbs / args.global_batch_size / elapsed / mesh.world_size / 1e12
                tokens_per_s = gbs * args.seq_length / elapsed
                loss = interval["loss"] / interval["advanced"] if interval["advanced"] else None
                extras = log_extras(ctx, gbs)
                print_rank_last(log_line(
                    iteration=state.iteration, train_iters=args.train_iters, consumed=state.consumed_samples,
                    elapsed_ms=elapsed * 1e3, lr=lr, global_batch=gbs,
                    loss=loss, loss_scale=ctx.optimizer.loss_scale, grad_norm=stats["grad_norm"],
                    skipped=interval["skipped"], nans=interval["nans"], tokens_per_s=tokens_per_s, tflops=tflops,
                    mfu=tflops / peak if peak else None, memory=memory_mb(ctx.device),
                    num_zeros=extras.get("num-zeros"), params_norm=extras.get("params-norm")), last_rank)
                writer.scalars(state.iteration, {  # None values (no advanced iteration) are left out
                    "lm loss": loss, "learning-rate": lr, "loss-scale": ctx.optimizer.loss_scale,
                    "grad-norm": stats["grad_norm"], "skipped-iterations": interval["skipped"],
                    "nan-iterations": interval["nans"], "tokens-per-sec": tokens_per_s, "tflops-per-device": tflops,
                    "consumed-samples": state.consumed_samples, "iteration-time-ms": elapsed * 1e3, **extras})
                interval_start, interval = time.perf_counter(), _new_interval()
            guard.update(stats["skipped"], scale, state.iteration, stats["loss"])
            for name, dataset in (validation_sets(ctx.datasets) if evaluation_on(args) and
                                  state.iteration % args.eval_interval == 0 else []):
                val = evaluate(ctx, state.iteration, dataset=dataset)
                print_rank_last(eval_line(state.iteration, val, name=name), last_rank)
                writer.scalars(state.iteration, {f"{name} lm loss": val,
                                                 f"{name} lm loss PPL": math.exp(min(20.0, val))})
            finish_pending_save(ctx, blocking=False)
            if args.save and args.save_interval and state.iteration % args.save_interval == 0 and not guard.holding:
                save_checkpoint(ctx)
                saved_at = state.iteration
            reason = should_exit(ctx, exit_signal, start_time)
            if reason:
                if args.save and saved_at != state.iteration and not guard.holding:
                    save_checkpoint(ctx)
                    saved_at = state.iteration
                finish_pending_save(ctx)
                print_rank_last(f"exiting program at iteration {state.iteration}: {reason}", last_rank)
                ctx.exit_reason = reason
                return losses
        if args.save and saved_at != state.iteration and state.iteration > 0 and not guard.holding:
            save_checkpoint(ctx)
        finish_pending_save(ctx)
        if evaluation_on(args) and ctx.datasets[2] is not None and state.iteration > 0:  # as Megatron, at the end
            test = evaluate(ctx, state.iteration, split=2)
            print_rank_last(eval_line(state.iteration, test, where=f"iteration {state.iteration} on test set"),
                            last_rank)
            writer.scalars(state.iteration, {"test lm loss": test, "test lm loss PPL": math.exp(min(20.0, test))})
        return losses


def pretrain(argv=None, return_context: bool = False):
    """Parse flags, build, load (``--load``), train, save; returns the per-iteration losses.

    With ``return_context`` returns ``(losses, ctx)`` (tests inspect parameters and state).
    """
    start_time = time.time()
    args = build_parser().parse_args(argv)
    writer = MetricsWriter(args, False)  # import check on every rank, before any collective
    ctx = setup(args)
    writer = MetricsWriter(args, _is_last_rank(ctx.mesh))
    exit_signal = ExitSignal(args.exit_signal_handler)
    install_stop_fault(ctx)
    try:
        print_summary(ctx)
        if args.load:
            load_checkpoint(ctx)
            ctx.datasets = datasets_for_resume(ctx.datasets, args, ctx.tokenizer, ctx.state)
        if args.save:  # every rank reads the same tracker: all stop together, before any save
            check_save_dir(args.save, ctx.state.iteration)
        losses = train(ctx, writer, start_time, exit_signal)
        if dist.is_initialized():
            dist.barrier()
    finally:
        exit_signal.restore()
        writer.close()
        if ctx.own_process_group and not return_context:  # the caller of a context keeps its group
            dist.destroy_process_group()
    return (losses, ctx) if return_context else losses
