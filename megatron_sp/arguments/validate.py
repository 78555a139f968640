"""Derived values and checks of the parsed flags: ``validate_args(args, world_size)``.

Every error names the flag, the value and the fix (``ArgumentError``, one line), and is raised
from the flags alone, before any collective, so all ranks fail alike.  Imports no torch.
"""
from __future__ import annotations

import math

from ..data.tokenizers import resolve_tokenizer_type, unused_tokenizer_flags
from .parallel import pipeline_layout
from ..sequence_parallel.config import HIERARCHICAL_MODES, cp_sizes
from . import megatron_compat
from .checkpoint_args import apply_checkpoint_args
from .checks import ArgumentError, check_combinations
from .parser import build_parser


def _fail(msg):
    raise ArgumentError(msg)


def validate_args(args, world_size: int, on_this_machine: bool = True):
    """Fill derived values (dp size, padded vocab, batch counts); raise on bad input.  With
    ``on_this_machine`` False (a plan for other hardware: the planner, the dry run) the checks of
    this machine's devices are left out."""
    _megatron_prelude(args)
    if on_this_machine and args.distributed_backend == "nccl":
        _nccl_needs_cuda()
    tp, cp, pp = args.tensor_model_parallel_size, args.context_parallel_size, args.pipeline_model_parallel_size
    if world_size % (tp * cp * pp):
        _fail(f"world size {world_size} is not divisible by --tensor-model-parallel-size {tp} x "
              f"--context-parallel-size {cp}" + (f" x --pipeline-model-parallel-size {pp}" if pp > 1 else ""))
    args.data_parallel_size = world_size // (tp * cp * pp)
    hier = args.hierarchical_context_parallel_sizes
    if hier and args.cp_comm_type not in HIERARCHICAL_MODES:
        _fail(f"--hierarchical-context-parallel-sizes is only used with --cp-comm-type "
              f"{' / '.join(HIERARCHICAL_MODES)} (got {args.cp_comm_type})")
    try:  # the Ulysses x ring degrees of the mode (raises, one line, when they do not multiply to CP)
        _, u, r = cp_sizes(args.cp_comm_type, tuple(hier) if hier else cp)
    except ValueError as exc:
        _fail(str(exc))
    if not hier and u > 1:  # a2a: the mesh builds its all-to-all groups from the degrees
        args.hierarchical_context_parallel_sizes = [u, r]
    if args.sequence_parallel and tp == 1:
        args.sequence_parallel = False  # as Megatron: nothing to split without TP
    if not args.group_query_attention:
        args.num_query_groups = args.num_attention_heads
    if args.max_position_embeddings is None:
        args.max_position_embeddings = args.seq_length
    if args.position_embedding_type == "learned_absolute" and args.max_position_embeddings < args.seq_length:
        _fail(f"--max-position-embeddings {args.max_position_embeddings} is smaller than --seq-length "
              f"{args.seq_length}")
    if args.bf16 and args.fp16:
        _fail("--bf16 and --fp16 are exclusive: pick one")
    if args.global_batch_size is None:
        args.global_batch_size = args.micro_batch_size * args.data_parallel_size
    per_step = args.micro_batch_size * args.data_parallel_size
    if args.global_batch_size % per_step:
        _fail(f"--global-batch-size {args.global_batch_size} is not divisible by --micro-batch-size "
              f"{args.micro_batch_size} x data-parallel size {args.data_parallel_size} = {per_step}")
    args.num_micro_batches = args.global_batch_size // per_step
    pipeline_layout(args)  # the pipeline split and schedule (raises PipelineLayoutError, a ValueError)
    if (args.train_iters is None) == (args.train_samples is None):
        _fail("give exactly one of --train-iters and --train-samples")
    if args.train_iters is None:  # as Megatron: whole global batches
        args.train_iters = args.train_samples // args.global_batch_size
        if args.train_iters < 1:
            _fail(f"--train-samples {args.train_samples} is less than one --global-batch-size "
                  f"{args.global_batch_size}")
    if args.mock_data == bool(args.data_path):
        _fail("give exactly one of --mock-data and --data-path")
    if args.tokenizer_type == "NullTokenizer" and args.vocab_size is None:
        _fail("--tokenizer-type NullTokenizer needs --vocab-size")
    if args.recompute_activations:
        if args.recompute_granularity == "full":
            _fail("--recompute-activations means --recompute-granularity selective; "
                  "it cannot be combined with --recompute-granularity full")
        args.recompute_granularity = "selective"
    if args.recompute_granularity == "full" and args.recompute_method is None:
        _fail("--recompute-granularity full needs --recompute-method uniform or block")
    _lr_schedule(args)
    if args.save_interval is not None and args.save is None:
        _fail("--save-interval needs --save DIR")
    check_combinations(args)
    return args


def _megatron_prelude(args) -> None:
    """Megatron-LM interop before anything is derived: --use-checkpoint-args fills the model flags,
    refused features stop here, deprecated spellings become the modern flags; the notes are kept
    for the start-up summary (args.startup_notes)."""
    notes = apply_checkpoint_args(args)
    notes += megatron_compat.apply_megatron_compat(args)
    args.tokenizer_type = resolve_tokenizer_type(args.tokenizer_type, args.vocab_file)
    notes += unused_tokenizer_flags(args)
    for flag in ("num_layers", "hidden_size", "num_attention_heads", "seq_length"):
        if getattr(args, flag) is None:
            _fail(f"--{flag.replace('_', '-')} is required (or --use-checkpoint-args with --load CHECKPOINT)")
    if not 0.0 < args.rotary_percent <= 1.0:
        _fail(f"--rotary-percent {args.rotary_percent} must be in (0, 1]")
    args.startup_notes = notes


def _nccl_needs_cuda() -> None:
    import torch  # only for this question, asked only when --distributed-backend nccl is given
    if not torch.cuda.is_available():
        _fail("--distributed-backend nccl needs CUDA GPUs and none is visible; use --distributed-backend gloo "
              "(or leave the flag out: gloo on CPU, NCCL on GPU)")


def _lr_schedule(args) -> None:
    """Megatron's schedule in samples: ``args.lr_warmup_steps`` / ``args.lr_decay_steps``."""
    gbs = args.global_batch_size
    if args.train_samples is None:  # iteration-based training: no sample-based schedule flags
        for flag, value in (("--lr-decay-samples", args.lr_decay_samples),
                            ("--lr-warmup-samples", args.lr_warmup_samples or None)):
            if value is not None:
                _fail(f"{flag} {value} goes with --train-samples; with --train-iters use "
                      f"{flag.replace('samples', 'iters')}")
        if args.lr_decay_iters is None:
            args.lr_decay_iters = args.train_iters
        args.lr_decay_steps = args.lr_decay_iters * gbs
        warmup_steps = args.lr_warmup_iters * gbs
        if args.lr_warmup_fraction is not None and args.lr_warmup_iters:
            _fail("give one of --lr-warmup-fraction and --lr-warmup-iters")
    else:
        for flag, value in (("--lr-decay-iters", args.lr_decay_iters),
                            ("--lr-warmup-iters", args.lr_warmup_iters or None)):
            if value is not None:
                _fail(f"{flag} {value} goes with --train-iters; with --train-samples use "
                      f"{flag.replace('iters', 'samples')}")
        if args.lr_decay_samples is None:
            args.lr_decay_samples = args.train_samples
        args.lr_decay_steps = args.lr_decay_samples
        warmup_steps = args.lr_warmup_samples
        if args.lr_warmup_fraction is not None and args.lr_warmup_samples:
            _fail("give one of --lr-warmup-fraction and --lr-warmup-samples")
    args.lr_warmup_steps = (args.lr_warmup_fraction * args.lr_decay_steps
                            if args.lr_warmup_fraction is not None else warmup_steps)
    if args.decoupled_min_lr is not None and args.decoupled_lr is None:
        _fail("--decoupled-min-lr needs --decoupled-lr")


def padded_vocab_size(vocab_size: int, divisible_by: int, tp: int) -> int:
    """Pad to a multiple of lcm(``divisible_by``, TP) so each TP rank holds an equal slice.

    Megatron pads to ``divisible_by x TP``, which changes the model with the layout;
    the lcm keeps the padded size (and so the weights) the same for every TP size
    that divides ``--make-vocab-size-divisible-by`` (128 by default).
    """
    multiple = math.lcm(divisible_by, tp)
    return int(math.ceil(vocab_size / multiple) * multiple)


def parse_args(argv=None, world_size: int = 1):
    return validate_args(build_parser().parse_args(argv), world_size)
