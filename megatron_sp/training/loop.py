"""The pretraining loop: build everything from the flags, then train (DESIGN.md section 2).

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

from ..model import GPTConfig, GPTModel
from ..parallel_state import init_distributed, initialize_model_parallel
from ..pipeline_parallel import Pipeline, layout_from_args, stage_modules
from ..sequence_parallel import attention_summary, check_backend, check_cp_config
from ..tensor_parallel import RNGTracker
from ..tensor_parallel.sharding import keeping_tp_attributes
from .arguments import build_parser, padded_vocab_size, validate_args
from .batches import build_datasets, build_tokenizer, datasets_for_resume, evaluation_on, global_batches
from ..checkpointing import check_save_dir, finish_pending_save, load_checkpoint, save_checkpoint
from .divergence import DivergenceGuard
from .exit_conditions import ExitSignal, should_exit
from .faults import install_stop_fault
from ..distributed import describe_model_state, ensure_process_group, shard_model, sharding_mode, wrap_data_parallel
from .log_stats import log_extras
from .logging import (MetricsWriter, eval_line, flops_per_iteration, log_line, memory_mb, peak_tflops,
                      print_rank_last)
from .lr_scheduler import LRScheduler, build_scheduler
from .optimizer import MixedPrecisionOptimizer
from .step import autocast_context, forward_backward, masked_loss, train_step

@dataclass
class TrainState:
    iteration: int = 0
    consumed_samples: int = 0
    skipped_iterations: int = 0
    nan_iterations: int = 0


def model_config(args, vocab_size: int) -> GPTConfig:
    return GPTConfig(
        num_layers=args.num_layers, hidden_size=args.hidden_size, num_attention_heads=args.num_attention_heads,
        vocab_size=vocab_size, max_position_embeddings=args.max_position_embeddings,
        ffn_hidden_size=args.ffn_hidden_size, num_query_groups=args.num_query_groups, kv_channels=args.kv_channels,
        position_embedding_type=args.position_embedding_type, rotary_base=args.rotary_base,
        normalization=args.normalization, norm_epsilon=args.norm_epsilon, swiglu=args.swiglu,
        add_bias_linear=not args.disable_bias_linear,
        untie_embeddings_and_output_weights=args.untie_embeddings_and_output_weights,
        hidden_dropout=args.hidden_dropout, attention_dropout=args.attention_dropout,
        init_method_std=args.init_method_std, sequence_parallel=args.sequence_parallel,
        cp_comm_type=args.cp_comm_type, attention_backend=args.attention_backend,
        recompute_granularity=args.recompute_granularity,
        recompute_method=args.recompute_method, recompute_num_layers=args.recompute_num_layers,
        cross_entropy_chunk_size=args.cross_entropy_chunk_size,
        cross_entropy_loss_fusion=args.cross_entropy_loss_fusion, tiled_mlp_chunk_size=args.tiled_mlp_chunk_size,
        cpu_offloading_num_layers=args.cpu_offloading_num_layers if args.cpu_offloading else 0,
        **interop_model_config(args))


def _mask_note(a) -> str:
    """The start-up line's masks: documents (--reset-attention-mask) and the window (--window-size)."""
    from ..sequence_parallel.masks import left_window
    window = left_window(getattr(a, "window_size", None))
    parts = (["per-document (--reset-attention-mask)"] if getattr(a, "reset_attention_mask", False) else []) + (
        [f"sliding window: keys i-{window}..i (--window-size {window},0)"] if window is not None else [])
    return f"; masks: {', '.join(parts)}, empty ring blocks skipped" if parts else ""


def model_vocab_size(args, tokenizer_vocab: int) -> int:
    """The embedding's rows: ``--padded-vocab-size`` (or a checkpoint's, by --use-checkpoint-args),
    else the tokenizer's vocabulary padded (``padded_vocab_size``)."""
    given = getattr(args, "padded_vocab_size", None)
    if given is None:
        return padded_vocab_size(tokenizer_vocab, args.make_vocab_size_divisible_by, args.tensor_model_parallel_size)
    if given < tokenizer_vocab:
        raise ValueError(f"--padded-vocab-size {given} is smaller than the tokenizer's vocabulary of {tokenizer_vocab}")
    return given


def interop_model_config(args) -> dict:
    from ..sequence_parallel.masks import left_window
    """The GPTConfig fields of the Megatron-LM interop flags (defaults for flags an older checkpoint lacks)."""
    get = lambda name, default=None: getattr(args, name, default)  # noqa: E731
    return dict(rotary_percent=get("rotary_percent", 1.0),
                rotary_interpolation_factor=get("rotary_seq_len_interpolation_factor"),
                rope_scaling_factor=get("rope_scaling_factor") if get("use_rope_scaling") else None,
                apply_layernorm_1p=bool(get("apply_layernorm_1p")), add_qkv_bias=bool(get("add_qkv_bias")),
                openai_gelu=bool(get("openai_gelu")), window_size=left_window(get("window_size")))


def check_layout(args, cfg: GPTConfig) -> None:
    """Every layout error, raised on every rank before the first collective."""
    tp, cp = args.tensor_model_parallel_size, args.context_parallel_size
    cfg.check_tensor_parallel(tp)
    sizes = tuple(args.hierarchical_context_parallel_sizes or (1, cp))
    check_cp_config(args.seq_length, cfg.num_attention_heads // tp, cfg.num_query_groups // tp,
                    args.cp_comm_type, True, sizes, args.attention_dropout)
    if args.sequence_parallel and (args.seq_length // cp) % tp:
        raise ValueError(f"--sequence-parallel splits each CP shard of --seq-length {args.seq_length} / "
                         f"--context-parallel-size {cp} over --tensor-model-parallel-size {tp}: "
                         f"{args.seq_length // cp} is not divisible by {tp}")


def compute_dtype(args):
    return torch.bfloat16 if args.bf16 else torch.float16 if args.fp16 else torch.float32


def build_model(args, cfg: GPTConfig, mesh, rng, device, layout=None) -> tuple:
    """``(model, stages)``: the GPT of this rank with its weights initialised, its state sharded
    over DP x CP under a sharding flag, and under pipeline parallelism (``layout``) the
    :class:`~megatron_sp.pipeline_parallel.StageModule` of each of its virtual stages (else
    None).  Built on the meta device, sharded, then only this rank's elements are allocated
    and initialised (layout-invariant: the full tensor of each parameter from ``--seed`` and
    its name, then this rank's pieces)."""
    mode = sharding_mode(args)
    low = None if compute_dtype(args) == torch.float32 else compute_dtype(args)
    stages = None
    with torch.device("meta"):
        if layout is None:
            model = GPTModel(cfg, mesh, rng)
        else:
            ids = layout.stages_of(mesh.pp_rank)
            model = GPTModel(cfg, mesh, rng, layout.layers_of(mesh.pp_rank), pre_process=0 in ids,
                             post_process=layout.num_stages - 1 in ids)
            hidden_dtype = low if (mode and low is not None) else torch.float32  # what the one-stage model passes
            stages = stage_modules(model, layout, mesh.pp_rank, lambda: autocast_context(args, device), hidden_dtype)
    roots = stages if (stages and mode) else [model]
    if mode:
        shard_model(model, mesh, mode, device, low, args.optimizer_cpu_offload, roots=roots)
    with keeping_tp_attributes(model):
        for root in roots:
            root.to_empty(device=torch.device("cpu") if args.optimizer_cpu_offload else device)
    model.init_weights(args.seed)
    return model, stages


def build_pipeline(args, model, stages, layout, mesh, device) -> Pipeline:
    """The stages (DDP-wrapped over DP x CP with replicated state) and their schedule."""
    wrapped = stages if sharding_mode(args) else [wrap_data_parallel(s, mesh) for s in stages]
    return Pipeline(stages, wrapped, layout, mesh, device, masked_loss, args.pipeline_schedule,
                    args.num_micro_batches, args.micro_batch_size, args.seq_length // mesh.cp_size,
                    args.hidden_size, stages[0].hidden_dtype)


# --- setup and the loop ----------------------------------------------------------------
@dataclass
class Context:
    args: object
    mesh: object
    device: torch.device
    tokenizer: object
    model: GPTModel
    ddp_model: torch.nn.Module  # DDP over DP x CP, or the model; a pipeline_parallel.Pipeline under PP
    optimizer: MixedPrecisionOptimizer
    scheduler: LRScheduler
    rng: RNGTracker
    datasets: tuple
    state: TrainState
    exit_reason: str | None = None
    pending_save: object = None  # an --async-save being written (checkpointing.save_load.PendingSave)
    own_process_group: bool = False  # the world-of-one group setup() created for FSDP2 without torchrun


def setup(args) -> Context:
    """Validate everything first (no collective yet, so every rank fails alike), then build."""
    world = dist.get_world_size() if dist.is_initialized() else int(os.environ.get("WORLD_SIZE", "1"))
    validate_args(args, world)
    tokenizer = build_tokenizer(args)
    args.tokenizer_vocab_size = tokenizer.vocab_size  # saved with the flags: HF export trims padding to it
    vocab = args.padded_vocab_size = model_vocab_size(args, tokenizer.vocab_size)
    cfg = model_config(args, vocab)
    check_layout(args, cfg)
    init_distributed(args.distributed_backend, args.distributed_timeout_minutes * 60)
    device = torch.device("cuda", torch.cuda.current_device()) if (
        torch.cuda.is_available() and (args.distributed_backend or "nccl") == "nccl") else torch.device("cpu")
    check_backend(args.attention_backend, args.cp_comm_type, args.context_parallel_size, device,
                  compute_dtype(args), args.attention_dropout)  # on the device, before the first collective
    own_group = ensure_process_group() if sharding_mode(args) else False
    mesh = initialize_model_parallel(args.tensor_model_parallel_size, args.context_parallel_size,
                                     args.hierarchical_context_parallel_sizes, args.pipeline_model_parallel_size,
                                     args.distributed_timeout_minutes * 60)
    rng = RNGTracker(args.seed, mesh.tp_rank, mesh.cp_rank, mesh.dp_rank, device, mesh.pp_rank)
    layout = layout_from_args(args) if mesh.pp_size > 1 else None
    model, stages = build_model(args, cfg, mesh, rng, device, layout)
    if layout is None:
        ddp_model = wrap_data_parallel(model, mesh)
    else:  # the pipeline plays the wrapped model's part in a step (training/step.py)
        ddp_model = build_pipeline(args, model, stages, layout, mesh, device)
    optimizer = MixedPrecisionOptimizer(model, args, mesh)
    scheduler = build_scheduler(optimizer, args)
    return Context(args, mesh, device, tokenizer, model, ddp_model, optimizer, scheduler, rng,
                   build_datasets(args, tokenizer), TrainState(), own_process_group=own_group)


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
    attn, attn_warning = attention_summary(a.cp_comm_type, ctx.mesh.cp_size, ctx.device, compute_dtype(a),
                                           a.attention_dropout, attention_backend=a.attention_backend,
                                           ring_size=ctx.mesh.ring_size)
    attn += _mask_note(a)
    pipeline = (f"> pipeline: {ctx.ddp_model.describe()}; this rank (PP {ctx.mesh.pp_rank}) runs layers "
                f"{_ranges(ctx.model.decoder.layers)}\n" if getattr(ctx.ddp_model, "is_pipeline", False) else "")
    model_state = describe_model_state(sharding_mode(a), ctx.mesh.dp_size * ctx.mesh.cp_size, a.bf16, a.fp16,
                                       a.optimizer_cpu_offload)
    print_rank_last(
        f"> layout: {ctx.mesh.describe()}, cp-comm-type {a.cp_comm_type}, sequence-parallel {a.sequence_parallel}, "
        f"device {ctx.device}\n{pipeline}> model: {a.num_layers} layers, hidden {a.hidden_size}, heads "
        f"{a.num_attention_heads} (query groups {a.num_query_groups}), seq {a.seq_length}, padded vocab "
        f"{ctx.model.cfg.vocab_size}; parameters: {total / 1e6:.3f} M total, {n_params / 1e6:.3f} M on this rank\n"
        f"> batch: global {a.global_batch_size} = micro {a.micro_batch_size} x {a.num_micro_batches} accumulation "
        f"x DP {ctx.mesh.dp_size}; precision {'bf16' if a.bf16 else 'fp16' if a.fp16 else 'fp32'}\n"
        f"> model state: {model_state}\n"
        f"{_overlap_note(a)}"
        f"> attention: {attn}\n"
        f"> evaluation: {_evaluation_text(ctx)}\n"
        f"> MFU peak per device: {_peak_text(ctx)}"
        + "".join(f"\n> note: {n}" for n in getattr(a, "startup_notes", []))
        + (f"\nWARNING: {attn_warning}" if attn_warning else ""),
        _is_last_rank(ctx.mesh))


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
    parts = [f"{a.eval_iters} global batches of the {name} split {when}" if d is not None else
             f"no {name} split (--split {a.split} gives it weight 0)"
             for name, d, when in (("validation", ctx.datasets[1], f"every {a.eval_interval} iterations"),
                                   ("test", ctx.datasets[2], "at the end"))]
    return "; ".join(parts)


def _peak_text(ctx) -> str:
    peak, source = peak_tflops(ctx.device, ctx.args.peak_tflops)
    return f"{peak} TFLOP/s ({source})" if peak else source


@torch.no_grad()
def evaluate(ctx, iteration: int, split: int = 1) -> float:
    """Mean lm loss over ``--eval-iters`` global batches of a split (model.eval(), no grad).

    Validation (``split`` 1): the position is a function of the iteration only, so a resumed
    run evaluates on the same samples as an uninterrupted one.  Test (2): the first batches.
    """
    args = ctx.args
    dataset = ctx.datasets[split]
    run = max(iteration // args.eval_interval - 1, 0) if split == 1 else 0
    start = run * args.eval_iters * args.global_batch_size
    ctx.model.eval()
    model = ctx.ddp_model if getattr(ctx.ddp_model, "is_pipeline", False) else ctx.model
    total = 0.0
    for batches in global_batches(dataset, start, args.eval_iters, args, ctx.mesh, ctx.device):
        total += forward_backward(model, batches, args, ctx.mesh, ctx.device).item()
    ctx.model.train()
    return total / max(args.eval_iters, 1)


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
    batches_source = global_batches(ctx.datasets[0], state.consumed_samples, args.train_iters - state.iteration,
                                    args, mesh, ctx.device)
    with contextlib.closing(batches_source) as train_batches:  # --num-workers: the workers stop with it
        while state.iteration < args.train_iters:
            batches = next(train_batches)
            scale = ctx.optimizer.loss_scale
            stats = train_step(ctx, batches)
            lr = ctx.optimizer.param_groups[0]["lr"]
            if not stats["skipped"]:  # as Megatron: a skipped (overflow) step does not advance the schedule
                ctx.scheduler.step()
            state.iteration += 1
            state.consumed_samples += args.global_batch_size
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
                tflops = flops / elapsed / mesh.world_size / 1e12
                tokens_per_s = args.global_batch_size * args.seq_length / elapsed
                loss = interval["loss"] / interval["advanced"] if interval["advanced"] else None
                extras = log_extras(ctx)
                print_rank_last(log_line(
                    iteration=state.iteration, train_iters=args.train_iters, consumed=state.consumed_samples,
                    elapsed_ms=elapsed * 1e3, lr=lr, global_batch=args.global_batch_size,
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
            if evaluation_on(args) and ctx.datasets[1] is not None and state.iteration % args.eval_interval == 0:
                val = evaluate(ctx, state.iteration)
                print_rank_last(eval_line(state.iteration, val), last_rank)
                writer.scalars(state.iteration, {"validation lm loss": val,
                                                 "validation lm loss PPL": math.exp(min(20.0, val))})
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
