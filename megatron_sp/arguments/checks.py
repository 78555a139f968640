"""Flag combinations that cannot work, reported as the user typed them (after the ranges).

Each flag alone is range-checked at parse time (megatron_sp/arguments/types.py); these need
several flags at once.  Called at the end of ``validate_args``, before any collective,
so every rank stops with the same line.  Example::

    --lr 1e-3 --min-lr 1e-2   ->  --min-lr 0.01 is larger than --lr 0.001: the schedule would
                                  raise the learning rate while it decays; lower --min-lr
"""
from __future__ import annotations


class ArgumentError(ValueError):
    """A bad flag or combination, in one line (pretrain_gpt.py prints it and exits 2)."""


def _fail(msg: str):
    raise ArgumentError(msg)


def check_schedule(args) -> None:
    """After ``arguments._lr_schedule``: warmup and decay in samples (``lr_warmup_steps``,
    ``lr_decay_steps``), whichever flags gave them."""
    if args.min_lr > args.lr:
        _fail(f"--min-lr {args.min_lr:g} is larger than --lr {args.lr:g}: the schedule would raise the learning "
              "rate while it decays; lower --min-lr")
    if args.lr_decay_style == "constant" or not args.lr_warmup_steps:
        return
    if args.lr_warmup_steps >= args.lr_decay_steps and getattr(args, "lr_decay_tokens", None) is not None:
        _fail(f"the warmup ({args.lr_warmup_steps * args.seq_length:g} tokens) must be shorter than --lr-decay-tokens "
              f"{args.lr_decay_tokens}: nothing is left to decay; lower the warmup or raise --lr-decay-tokens")
    if args.lr_warmup_steps >= args.lr_decay_steps:
        unit = "samples" if args.train_samples is not None else "iters"
        decay_flag = f"--lr-decay-{unit}"
        default = args.train_samples if unit == "samples" else args.train_iters
        given = args.lr_decay_samples if unit == "samples" else args.lr_decay_iters
        decay = f"{decay_flag} {given}" if given != default else f"{decay_flag} (default: --train-{unit} {default})"
        if args.lr_warmup_fraction is not None:
            _fail(f"--lr-warmup-fraction {args.lr_warmup_fraction} of {decay} leaves nothing to decay "
                  f"({args.lr_decay_style}); lower --lr-warmup-fraction")
        warmup = args.lr_warmup_samples if unit == "samples" else args.lr_warmup_iters
        _fail(f"--lr-warmup-{unit} {warmup} must be smaller than {decay}: nothing is left to decay "
              f"({args.lr_decay_style}); lower the warmup or use --lr-decay-style constant")


def check_split(args) -> None:
    """``--split`` is well formed, and a run on real data has something to train on."""
    if not args.data_path:
        return
    from ..data.gpt_dataset import parse_split
    fractions = parse_split(args.split)
    if fractions[0] == 0:
        _fail(f"--split {args.split} gives the train split weight 0: nothing to train on; give it a weight, "
              "e.g. --split 969,30,1")


def check_recompute(args) -> None:
    if args.recompute_method is not None and args.recompute_granularity != "full":
        _fail(f"--recompute-method {args.recompute_method} only applies to --recompute-granularity full (got "
              f"{args.recompute_granularity}); drop it or recompute full layers")


def check_model_state(args) -> None:
    """The sharding flags (distributed/fsdp.py) and what depends on them."""
    if args.use_torch_fsdp2 and args.use_distributed_optimizer:
        _fail("--use-torch-fsdp2 and --use-distributed-optimizer are exclusive: FSDP2 already shards the "
              "optimizer state (ZeRO-3); pick one")
    sharded = args.use_torch_fsdp2 or args.use_distributed_optimizer
    if args.optimizer_cpu_offload and not sharded:
        _fail("--optimizer-cpu-offload offloads the sharded optimizer state: add --use-distributed-optimizer "
              "or --use-torch-fsdp2")
    if args.overlap_param_gather and not sharded:
        _fail("--overlap-param-gather gathers sharded weights: add --use-distributed-optimizer or "
              "--use-torch-fsdp2")
    if args.async_save and args.ckpt_format != "torch_dist":
        _fail(f"--async-save needs --ckpt-format torch_dist (got {args.ckpt_format})")


def check_long_sequence(args) -> None:
    """Chunked loss, tiled MLP and activation offload (megatron_sp/activations)."""
    if args.cross_entropy_loss_fusion and args.cross_entropy_chunk_size == 0:
        _fail("--cross-entropy-loss-fusion needs chunks: drop --cross-entropy-chunk-size 0")
    n = args.cpu_offloading_num_layers
    if args.cpu_offloading and not 1 <= n < args.num_layers:
        _fail(f"--cpu-offloading-num-layers {n}: offload between 1 and --num-layers - 1 = {args.num_layers - 1} "
              "layers (the last layer's backward comes first: offloading it saves nothing)")
    if n and not args.cpu_offloading:
        _fail(f"--cpu-offloading-num-layers {n} does nothing without --cpu-offloading: add it")


def check_combinations(args) -> None:
    check_schedule(args)
    check_split(args)
    check_recompute(args)
    check_model_state(args)
    check_long_sequence(args)
