"""The pretraining loop: build everything from the flags, then train (DESIGN.md section 2).

One iteration on a rank::

    global batch (seed, iteration) -> this DP rank's micro-batches -> this CP rank's tokens
      -> for each micro-batch: forward (autocast), loss = sum(mask * loss) / tokens of the
         whole global batch, backward (DDP sums gradients over DP x CP on the last one)
      -> TP all-reduce of Megatron-SP gradients -> overflow check, clip, AdamW step, LR step
"""
from __future__ import annotations

import math
import os
import time
from dataclasses import dataclass

import torch
import torch.distributed as dist

from ..model import GPTConfig, GPTModel
from ..parallel_state import init_distributed, initialize_model_parallel
from ..sequence_parallel import attention_summary, check_cp_config
from ..tensor_parallel import RNGTracker
from .arguments import build_parser, padded_vocab_size, validate_args
from .batches import build_datasets, build_tokenizer, evaluation_on, micro_batches
from ..checkpointing import check_save_dir, load_checkpoint, save_checkpoint
from .exit_conditions import ExitSignal, should_exit
from ..distributed import wrap_data_parallel
from .logging import (MetricsWriter, eval_line, flops_per_iteration, log_line, memory_mb, peak_tflops,
                      print_rank_last)
from .lr_scheduler import LRScheduler
from .optimizer import MixedPrecisionOptimizer
from .step import forward_backward, train_step

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
        cp_comm_type=args.cp_comm_type, recompute_granularity=args.recompute_granularity,
        recompute_method=args.recompute_method, recompute_num_layers=args.recompute_num_layers,
        cross_entropy_chunk_size=args.cross_entropy_chunk_size,
        cross_entropy_loss_fusion=args.cross_entropy_loss_fusion, tiled_mlp_chunk_size=args.tiled_mlp_chunk_size,
        cpu_offloading_num_layers=args.cpu_offloading_num_layers if args.cpu_offloading else 0)


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


# --- setup and the loop ----------------------------------------------------------------
@dataclass
class Context:
    args: object
    mesh: object
    device: torch.device
    tokenizer: object
    model: GPTModel
    ddp_model: torch.nn.Module
    optimizer: MixedPrecisionOptimizer
    scheduler: LRScheduler
    rng: RNGTracker
    datasets: tuple
    state: TrainState
    exit_reason: str | None = None


def setup(args) -> Context:
    """Validate everything first (no collective yet, so every rank fails alike), then build."""
    world = dist.get_world_size() if dist.is_initialized() else int(os.environ.get("WORLD_SIZE", "1"))
    validate_args(args, world)
    tokenizer = build_tokenizer(args)
    vocab = padded_vocab_size(tokenizer.vocab_size, args.make_vocab_size_divisible_by,
                              args.tensor_model_parallel_size)
    args.padded_vocab_size = vocab
    cfg = model_config(args, vocab)
    check_layout(args, cfg)
    init_distributed(args.distributed_backend, args.distributed_timeout_minutes * 60)
    mesh = initialize_model_parallel(args.tensor_model_parallel_size, args.context_parallel_size,
                                     args.hierarchical_context_parallel_sizes)
    device = torch.device("cuda", torch.cuda.current_device()) if (
        torch.cuda.is_available() and (args.distributed_backend or "nccl") == "nccl") else torch.device("cpu")
    rng = RNGTracker(args.seed, mesh.tp_rank, mesh.cp_rank, mesh.dp_rank, device)
    model = GPTModel(cfg, mesh, rng)
    model.init_weights(args.seed)
    model.to(device)
    ddp_model = wrap_data_parallel(model, mesh)
    optimizer = MixedPrecisionOptimizer(model, args, mesh)
    scheduler = LRScheduler(optimizer, args.lr, args.min_lr, args.lr_warmup_iters, args.lr_decay_iters,
                            args.lr_decay_style)
    return Context(args, mesh, device, tokenizer, model, ddp_model, optimizer, scheduler, rng,
                   build_datasets(args, tokenizer), TrainState())


def _is_last_rank(mesh) -> bool:
    return mesh.rank == mesh.world_size - 1


def print_summary(ctx) -> None:
    n_params = sum(p.numel() for p in ctx.model.parameters())
    full = torch.tensor(float(sum(p.numel() for p in ctx.model.parameters()
                                  if getattr(p, "partition_dim", None) is not None)))
    if ctx.mesh.tp_group is not None:
        dist.all_reduce(full, group=ctx.mesh.tp_group)
    total = int(full.item()) + sum(p.numel() for p in ctx.model.parameters()
                                   if getattr(p, "partition_dim", None) is None)
    a = ctx.args
    compute_dtype = torch.bfloat16 if a.bf16 else torch.float16 if a.fp16 else torch.float32
    attn, attn_warning = attention_summary(a.cp_comm_type, ctx.mesh.cp_size, ctx.device, compute_dtype,
                                           a.attention_dropout)
    print_rank_last(
        f"> layout: {ctx.mesh.describe()}, cp-comm-type {a.cp_comm_type}, sequence-parallel {a.sequence_parallel}, "
        f"device {ctx.device}\n> model: {a.num_layers} layers, hidden {a.hidden_size}, heads "
        f"{a.num_attention_heads} (query groups {a.num_query_groups}), seq {a.seq_length}, padded vocab "
        f"{ctx.model.cfg.vocab_size}; parameters: {total / 1e6:.3f} M total, {n_params / 1e6:.3f} M on this rank\n"
        f"> batch: global {a.global_batch_size} = micro {a.micro_batch_size} x {a.num_micro_batches} accumulation "
        f"x DP {ctx.mesh.dp_size}; precision {'bf16' if a.bf16 else 'fp16' if a.fp16 else 'fp32'}"
        f"{' (autocast, fp32 parameters/gradients/optimizer)' if a.bf16 or a.fp16 else ''}\n"
        f"> attention: {attn}\n"
        f"> evaluation: {_evaluation_text(ctx)}\n"
        f"> MFU peak per device: {_peak_text(ctx)}"
        + (f"\nWARNING: {attn_warning}" if attn_warning else ""),
        _is_last_rank(ctx.mesh))


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
    total = 0.0
    for i in range(args.eval_iters):
        batches = micro_batches(dataset, start + i * args.global_batch_size, args, ctx.mesh, ctx.device)
        total += forward_backward(ctx.model, batches, args, ctx.mesh, ctx.device).item()
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
    while state.iteration < args.train_iters:
        batches = micro_batches(ctx.datasets[0], state.consumed_samples, args, mesh, ctx.device)
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
            print_rank_last(log_line(
                iteration=state.iteration, train_iters=args.train_iters, consumed=state.consumed_samples,
                elapsed_ms=elapsed * 1e3, lr=lr, global_batch=args.global_batch_size,
                loss=loss, loss_scale=ctx.optimizer.loss_scale, grad_norm=stats["grad_norm"],
                skipped=interval["skipped"], nans=interval["nans"], tokens_per_s=tokens_per_s, tflops=tflops,
                mfu=tflops / peak if peak else None, memory=memory_mb(ctx.device)), last_rank)
            writer.scalars(state.iteration, {  # None values (no advanced iteration) are left out
                "lm loss": loss, "learning-rate": lr, "loss-scale": ctx.optimizer.loss_scale,
                "grad-norm": stats["grad_norm"], "skipped-iterations": interval["skipped"],
                "nan-iterations": interval["nans"], "tokens-per-sec": tokens_per_s, "tflops-per-device": tflops,
                "consumed-samples": state.consumed_samples, "iteration-time-ms": elapsed * 1e3})
            interval_start, interval = time.perf_counter(), _new_interval()
        if evaluation_on(args) and ctx.datasets[1] is not None and state.iteration % args.eval_interval == 0:
            val = evaluate(ctx, state.iteration)
            print_rank_last(eval_line(state.iteration, val), last_rank)
            writer.scalars(state.iteration, {"validation lm loss": val,
                                             "validation lm loss PPL": math.exp(min(20.0, val))})
        if args.save and args.save_interval and state.iteration % args.save_interval == 0:
            save_checkpoint(ctx)
            saved_at = state.iteration
        reason = should_exit(ctx, exit_signal, start_time)
        if reason:
            if args.save and saved_at != state.iteration:
                save_checkpoint(ctx)
                saved_at = state.iteration
            print_rank_last(f"exiting program at iteration {state.iteration}: {reason}", last_rank)
            ctx.exit_reason = reason
            return losses
    if args.save and saved_at != state.iteration and state.iteration > 0:
        save_checkpoint(ctx)
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
    try:
        print_summary(ctx)
        if args.load:
            load_checkpoint(ctx)
        if args.save:  # every rank reads the same tracker: all stop together, before any save
            check_save_dir(args.save, ctx.state.iteration)
        losses = train(ctx, writer, start_time, exit_signal)
        if dist.is_initialized():
            dist.barrier()
    finally:
        exit_signal.restore()
        writer.close()
    return (losses, ctx) if return_context else losses
