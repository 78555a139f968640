"""Would ``pretrain_gpt.py`` run this command line?  One function answers, for everyone who asks.

``pretrain_gpt.py`` (through ``training.loop.setup``), the planner and the scaling tool all call
:func:`preflight`; it runs every check a run makes before its first collective, from the flags
alone, and returns what the run is built from::

    pre = preflight("--num-layers 2 --hidden-size 64 ... --context-parallel-size 2".split(), world_size=2)
    pre.args        # the validated namespace (derived values filled in)
    pre.model       # GPTConfig, from the flags by field name (model_config.py)
    pre.parallel    # ParallelConfig, derived once (parallel.py)
    pre.tokenizer   # the tokenizer the flags name (its vocabulary sizes the model)
    pre.pipeline_layout  # under PP: which layers each stage holds (else None)
    pre.batch_schedule   # the global batch size by consumed samples (constant, ramp-up, steps)

    refusal(argv, world_size)   # '' when it runs, else the one line pretrain_gpt.py would print

A plan for other hardware (the planner, the dry run) passes ``on_this_machine=False``: the checks
of this machine's devices (NCCL needs a GPU) are left out.  Imports no torch.
"""
from __future__ import annotations

import argparse
from dataclasses import dataclass

from ..data.tokenizers import build_tokenizer_from_args
from ..model.config import GPTConfig
from ..sequence_parallel.config import check_backend_for_mode, check_cp_config
from .batch_schedule import batch_schedule_from_args
from .model_config import gpt_config, model_vocab_size
from .parallel import ParallelConfig, pipeline_layout
from .parser import build_parser
from .validate import validate_args

# The run flags a model description does not need, filled in by parse_model_flags when absent.
RUN_FLAGS = (("--micro-batch-size", "1"), ("--lr", "0"), ("--train-iters", "1"))


@dataclass
class Preflight:
    args: argparse.Namespace
    model: GPTConfig
    parallel: ParallelConfig
    tokenizer: object
    pipeline_layout: object = None  # the PipelineLayout under PP (which layers each stage holds)
    batch_schedule: object = None   # the global batch by consumed samples (batch_schedule.py)


def check_layout(args, cfg: GPTConfig) -> None:
    """Every layout error of the model on this layout (one line each), before the first collective."""
    tp, cp = args.tensor_model_parallel_size, args.context_parallel_size
    cfg.check_tensor_parallel(tp)
    sizes = tuple(args.hierarchical_context_parallel_sizes or (1, cp))
    check_cp_config(args.seq_length, cfg.num_attention_heads // tp, cfg.num_query_groups // tp,
                    args.cp_comm_type, True, sizes, args.attention_dropout)
    if args.sequence_parallel and (args.seq_length // cp) % tp:
        raise ValueError(f"--sequence-parallel splits each CP shard of --seq-length {args.seq_length} / "
                         f"--context-parallel-size {cp} over --tensor-model-parallel-size {tp}: "
                         f"{args.seq_length // cp} is not divisible by {tp}")
    check_backend_for_mode(args.attention_backend, args.cp_comm_type, cp)


def preflight(argv, world_size: int, on_this_machine: bool = True) -> Preflight:
    """Parse (unless ``argv`` is a parsed namespace), validate, size the vocabulary, build the model
    and parallel configs, check the layout; raises ``ValueError`` (one line) where the run would stop."""
    args = argv if isinstance(argv, argparse.Namespace) else build_parser().parse_args(argv)
    validate_args(args, world_size, on_this_machine)
    tokenizer = build_tokenizer_from_args(args)
    args.tokenizer_vocab_size = tokenizer.vocab_size  # saved with the flags: HF export trims padding to it
    args.padded_vocab_size = model_vocab_size(args, tokenizer.vocab_size)
    model = gpt_config(args, args.padded_vocab_size)
    check_layout(args, model)
    parallel = ParallelConfig.from_args(args)
    return Preflight(args, model, parallel, tokenizer, pipeline_layout(args) if parallel.pipelined else None,
                     batch_schedule_from_args(args))


def refusal(argv, world_size: int, on_this_machine: bool = False) -> str:
    """``''`` when ``pretrain_gpt.py`` would start this command on ``world_size`` ranks, else the
    one line it would print."""
    try:
        preflight(argv, world_size, on_this_machine)
    except (ValueError, SystemExit) as exc:
        return str(exc) or "refused"
    return ""


def parse_model_flags(argv, world_size: int | None = None):
    """The validated namespace of a model description: ``argv`` with the run flags a model does not
    need (``RUN_FLAGS``, mock data, a --seq-length the layout divides) added where absent; the world is the layout's own (TP x CP x PP)
    unless given.  Every flag and default is the real parser's."""
    argv = list(argv)
    given = {w.split("=", 1)[0] for w in argv if w.startswith("--")}
    for flag, value in RUN_FLAGS:
        if flag not in given:
            argv += [flag, value]
    if not given & {"--mock-data", "--data-path", "--train-data-path"}:
        argv.append("--mock-data")
    args = build_parser().parse_args(argv)
    if args.seq_length is None:  # a model without a length (the memory model takes it per estimate)
        args.seq_length = 2 * args.context_parallel_size * args.tensor_model_parallel_size
    world = world_size or (args.tensor_model_parallel_size * args.context_parallel_size
                           * args.pipeline_model_parallel_size)
    return preflight(args, world, on_this_machine=False).args


def model_of(args) -> GPTConfig:
    """The GPTConfig of a validated namespace (the vocabulary from its tokenizer, padded)."""
    vocab = getattr(args, "padded_vocab_size", None)
    if vocab is None:
        vocab = model_vocab_size(args, build_tokenizer_from_args(args).vocab_size)
    return gpt_config(args, vocab)
