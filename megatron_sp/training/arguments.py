"""Command-line flags: Megatron-LM's names and meanings (DESIGN.md section 5).

``parse_args(argv)`` parses and validates; every error names the flag, the value
and the fix, and is raised before any collective so all ranks fail alike.
"""
from __future__ import annotations

import argparse
import math
import sys

import torch

from ..data.tokenizers import add_tokenizer_arguments, resolve_tokenizer_type, unused_tokenizer_flags
from ..flag_types import (FRACTION, NON_NEGATIVE, NON_NEGATIVE_INT, POSITIVE, POSITIVE_INT, PROBABILITY, SEED,
                          ArgumentParser, in_range)
from ..pipeline_parallel import SCHEDULES, layout_from_args
from ..sequence_parallel import ATTENTION_BACKENDS, CP_COMM_TYPES
from ..sequence_parallel.masks import window_size_type
from . import megatron_compat
from .argument_checks import ArgumentError, check_combinations
from .megatron_compat import normalization_type, position_embedding_type


def _model(p):
    g = p.add_argument_group("model")
    # required unless --use-checkpoint-args takes them from the checkpoint (validate_args checks)
    g.add_argument("--num-layers", type=POSITIVE_INT, default=None)
    g.add_argument("--hidden-size", type=POSITIVE_INT, default=None)
    g.add_argument("--num-attention-heads", type=POSITIVE_INT, default=None)
    g.add_argument("--group-query-attention", action="store_true")
    g.add_argument("--num-query-groups", type=POSITIVE_INT, default=1)
    g.add_argument("--ffn-hidden-size", type=POSITIVE_INT, default=None)
    g.add_argument("--kv-channels", type=POSITIVE_INT, default=None)
    g.add_argument("--seq-length", type=POSITIVE_INT, default=None)
    g.add_argument("--max-position-embeddings", type=POSITIVE_INT, default=None)
    g.add_argument("--position-embedding-type", type=position_embedding_type, default="learned_absolute",
                   metavar="{learned_absolute,rope}")
    g.add_argument("--rotary-base", type=POSITIVE, default=10000.0)
    g.add_argument("--normalization", type=normalization_type, default="LayerNorm", metavar="{LayerNorm,RMSNorm}")
    g.add_argument("--norm-epsilon", type=POSITIVE, default=1e-5)
    g.add_argument("--swiglu", action="store_true")
    g.add_argument("--disable-bias-linear", action="store_true")
    g.add_argument("--untie-embeddings-and-output-weights", action="store_true")
    g.add_argument("--hidden-dropout", type=PROBABILITY, default=0.1)
    g.add_argument("--attention-dropout", type=PROBABILITY, default=0.1)
    g.add_argument("--attention-backend", choices=list(ATTENTION_BACKENDS), default="auto",
                   help="attention implementation, Megatron's values: unfused/local materialise the scores "
                        "and keep the probabilities (the RSA paper's TP baseline); flash/fused kernels; auto")
    g.add_argument("--init-method-std", type=POSITIVE, default=0.02)
    g.add_argument("--make-vocab-size-divisible-by", type=POSITIVE_INT, default=128)
    g.add_argument("--recompute-granularity", choices=["full", "selective"], default=None)
    g.add_argument("--recompute-method", choices=["uniform", "block"], default=None)
    g.add_argument("--recompute-num-layers", type=POSITIVE_INT, default=1)
    g.add_argument("--recompute-activations", action="store_true",
                   help="Megatron's shorthand for --recompute-granularity selective")


def _parallel(p):
    g = p.add_argument_group("parallelism")
    g.add_argument("--tensor-model-parallel-size", type=POSITIVE_INT, default=1)
    g.add_argument("--sequence-parallel", action="store_true",
                   help="Megatron-SP: norm/dropout on sequence shards inside the TP group")
    g.add_argument("--context-parallel-size", "--sequence-parallel-size", dest="context_parallel_size",
                   type=POSITIVE_INT, default=1, help="CP/SP degree: ranks one sequence is split across")
    g.add_argument("--cp-comm-type", default="p2p", choices=list(CP_COMM_TYPES))
    g.add_argument("--hierarchical-context-parallel-sizes", type=POSITIVE_INT, nargs=2, default=None, metavar=("U", "R"))
    g.add_argument("--distributed-backend", choices=["gloo", "nccl"], default=None)
    g.add_argument("--distributed-timeout-minutes", type=POSITIVE, default=10.0)
    g = p.add_argument_group("pipeline parallelism (pipeline_parallel/, on torch.distributed.pipelining)")
    g.add_argument("--pipeline-model-parallel-size", type=POSITIVE_INT, default=1,
                   help="PP degree: the decoder layers are split into this many stages")
    g.add_argument("--num-layers-per-virtual-pipeline-stage", type=POSITIVE_INT, default=None,
                   help="interleaved schedule: layers per virtual stage (each rank runs several)")
    g.add_argument("--num-virtual-stages-per-pipeline-rank", "--virtual-pipeline-model-parallel-size",
                   dest="num_virtual_stages_per_pipeline_rank", type=POSITIVE_INT, default=None,
                   help="interleaved schedule: virtual stages (model chunks) per rank")
    g.add_argument("--decoder-first-pipeline-num-layers", type=POSITIVE_INT, default=None,
                   help="uneven split: layers of the first stage (the others share the rest evenly)")
    g.add_argument("--decoder-last-pipeline-num-layers", type=POSITIVE_INT, default=None,
                   help="uneven split: layers of the last stage")
    g.add_argument("--pipeline-schedule", choices=list(SCHEDULES), default=None,
                   help="torch.distributed.pipelining schedule (default 1F1B, Interleaved1F1B with virtual stages)")
    g = p.add_argument_group("model state sharding over DP x CP (distributed/fsdp.py)")
    g.add_argument("--use-torch-fsdp2", action="store_true",
                   help="ZeRO-3 on torch FSDP2: weights, gradients and Adam state sharded over DP x CP")
    g.add_argument("--use-distributed-optimizer", action="store_true",
                   help="ZeRO-2 (Megatron's distributed optimizer) on FSDP2: fp32 master weights, gradients "
                        "and Adam state sharded over DP x CP, compute weights gathered once per step")
    g.add_argument("--optimizer-cpu-offload", action="store_true",
                   help="keep the sharded fp32 weights, gradients and Adam state in host memory")
    g.add_argument("--overlap-grad-reduce", action="store_true",
                   help="accepted: gradient reduction always overlaps backward here (DDP buckets, FSDP2)")
    g.add_argument("--overlap-param-gather", action="store_true",
                   help="accepted with a sharding flag: FSDP2 always prefetches the next layer's weights")


def _memory(p):
    g = p.add_argument_group("long-sequence memory (chunked loss, tiled MLP, activation offload)")
    g.add_argument("--cross-entropy-chunk-size", type=NON_NEGATIVE_INT, default=2048, metavar="TOKENS",
                   help="the output layer and the cross entropy run fused over chunks of this many local "
                        "tokens, recomputed in backward, whenever there are more (0: full logits, unfused)")
    g.add_argument("--cross-entropy-loss-fusion", action="store_true",
                   help="Megatron's flag: the fused output layer + cross entropy even for one chunk")
    g.add_argument("--tiled-mlp-chunk-size", type=NON_NEGATIVE_INT, default=0, metavar="TOKENS",
                   help="MLP over chunks of this many tokens, recomputed in backward (ALST's tiled MLP; 0: off)")
    g.add_argument("--cpu-offloading", action="store_true",
                   help="keep what the first --cpu-offloading-num-layers layers save for backward in host memory")
    g.add_argument("--cpu-offloading-num-layers", type=NON_NEGATIVE_INT, default=0,
                   help="with --cpu-offloading: layers 0 .. N-1 (global indices, also under pipeline parallelism)")


def _training(p):
    g = p.add_argument_group("training")
    g.add_argument("--micro-batch-size", type=POSITIVE_INT, required=True)
    g.add_argument("--global-batch-size", type=POSITIVE_INT, default=None)
    g.add_argument("--train-iters", type=NON_NEGATIVE_INT, default=None)
    g.add_argument("--train-samples", type=NON_NEGATIVE_INT, default=None)
    g.add_argument("--seed", type=SEED, default=1234)
    g.add_argument("--optimizer", choices=["adam"], default="adam")
    g.add_argument("--lr", type=NON_NEGATIVE, required=True)
    g.add_argument("--min-lr", type=NON_NEGATIVE, default=0.0)
    g.add_argument("--lr-decay-style", choices=["constant", "linear", "cosine", "inverse-square-root", "WSD"],
                   default="linear")
    g.add_argument("--lr-decay-iters", type=POSITIVE_INT, default=None)
    g.add_argument("--lr-warmup-iters", type=NON_NEGATIVE_INT, default=0)
    g.add_argument("--lr-warmup-fraction", type=FRACTION, default=None)
    g.add_argument("--weight-decay", type=NON_NEGATIVE, default=0.01)
    g.add_argument("--adam-beta1", type=PROBABILITY, default=0.9)
    g.add_argument("--adam-beta2", type=PROBABILITY, default=0.999)
    g.add_argument("--adam-eps", type=POSITIVE, default=1e-8)
    g.add_argument("--clip-grad", type=NON_NEGATIVE, default=1.0)
    g.add_argument("--bf16", action="store_true")
    g.add_argument("--fp16", action="store_true")
    g.add_argument("--loss-scale", type=POSITIVE, default=None, help="static loss scale (fp16); default dynamic")
    g.add_argument("--initial-loss-scale", type=POSITIVE, default=2.0 ** 16,
                   help="fp16 dynamic scale to start from (Megatron: 2^32, which skips ~15 steps "
                        "backing off; 2^16 as torch's GradScaler and DeepSpeed)")
    g.add_argument("--min-loss-scale", type=POSITIVE, default=1.0)
    g.add_argument("--loss-scale-window", type=POSITIVE_INT, default=1000)
    g.add_argument("--hysteresis", type=POSITIVE_INT, default=2)
    g.add_argument("--max-skips-at-min-loss-scale", type=NON_NEGATIVE_INT, default=10,
                   help="fp16: stop after this many consecutive iterations skipped at the minimum (or a "
                        "static) loss scale, a diverged run; 0 never stops")
    g.add_argument("--check-for-nan-in-loss-and-grad", action=argparse.BooleanOptionalAction, default=True)
    g.add_argument("--exit-interval", type=POSITIVE_INT, default=None)
    g.add_argument("--exit-duration-in-mins", type=NON_NEGATIVE, default=None)
    g.add_argument("--exit-signal-handler", action="store_true")


def _data(p):
    g = p.add_argument_group("data and tokenizer")
    g.add_argument("--data-path", nargs="*", default=None)
    g.add_argument("--split", default="969,30,1")
    g.add_argument("--mock-data", action="store_true")
    g.add_argument("--data-cache-path", default=None)
    g.add_argument("--eod-mask-loss", action="store_true")
    g.add_argument("--reset-position-ids", action="store_true", help="positions restart after each EOD")
    g.add_argument("--reset-attention-mask", action="store_true",
                   help="tokens attend within their document only (documents end with EOD)")
    g.add_argument("--num-workers", type=NON_NEGATIVE_INT, default=0)
    add_tokenizer_arguments(g)


def _checkpoint_and_logging(p):
    g = p.add_argument_group("checkpointing")
    g.add_argument("--save", default=None)
    g.add_argument("--load", default=None)
    g.add_argument("--save-interval", type=POSITIVE_INT, default=None)
    g.add_argument("--no-load-optim", action="store_true")
    g.add_argument("--no-load-rng", action="store_true")
    g.add_argument("--finetune", action="store_true")
    g.add_argument("--keep-last-n-checkpoints", type=POSITIVE_INT, default=None)
    g.add_argument("--ckpt-format", choices=["torch_dist", "torch"], default="torch_dist",
                   help="torch_dist: every rank writes its shards (torch.distributed.checkpoint), loadable "
                        "in any layout; torch: one file gathered on rank 0 (the older format)")
    g.add_argument("--async-save", action="store_true",
                   help="torch_dist only: write checkpoints in the background while training continues")
    g = p.add_argument_group("logging")
    g.add_argument("--log-interval", type=POSITIVE_INT, default=100)
    g.add_argument("--eval-interval", type=NON_NEGATIVE_INT, default=1000)
    g.add_argument("--eval-iters", type=NON_NEGATIVE_INT, default=100)
    g.add_argument("--tensorboard-dir", default=None)
    g.add_argument("--wandb-project", default=None)
    g.add_argument("--wandb-exp-name", default=None)
    g.add_argument("--wandb-save-dir", default=None)
    g.add_argument("--peak-tflops", type=POSITIVE, default=None,
                   help="per-device peak TFLOP/s for MFU (default: a table by device)")


def _megatron_interop(p):
    """Megatron-LM flags of features added for Megatron interop (issue 13), with Megatron's meaning."""
    g = p.add_argument_group("model (Megatron-LM interop)")
    g.add_argument("--rotary-percent", type=in_range(0, 1, lo_open=True), default=1.0,
                   help="fraction of each head's channels RoPE rotates (the rest pass through)")
    g.add_argument("--rotary-seq-len-interpolation-factor", type=POSITIVE, default=None,
                   help="RoPE positions are divided by this factor (linear position interpolation)")
    g.add_argument("--use-rope-scaling", action="store_true", help="Llama-3.1 RoPE frequency scaling")
    g.add_argument("--rope-scaling-factor", type=POSITIVE, default=8.0, help="with --use-rope-scaling")
    g.add_argument("--apply-layernorm-1p", action="store_true",
                   help="norm weights are stored as (gamma - 1), zero-centred (Megatron's LayerNorm1P)")
    g.add_argument("--add-qkv-bias", action="store_true", help="a bias in the QKV projection only (Qwen2)")
    g.add_argument("--openai-gelu", action="store_true", help="tanh-approximated GELU (GPT-2's gelu_new)")
    g.add_argument("--window-size", type=window_size_type, default=None, metavar="LEFT,RIGHT",
                   help="sliding-window attention: query i sees keys i-LEFT..i (RIGHT must be 0; -1: unlimited)")
    g.add_argument("--padded-vocab-size", type=POSITIVE_INT, default=None,
                   help="the model's vocabulary rows (default: the tokenizer's, padded)")
    g = p.add_argument_group("learning rate (Megatron-LM interop)")
    g.add_argument("--lr-warmup-samples", type=NON_NEGATIVE_INT, default=0)
    g.add_argument("--lr-decay-samples", type=POSITIVE_INT, default=None)
    g.add_argument("--lr-warmup-init", type=NON_NEGATIVE, default=0.0, help="the learning rate warmup starts from")
    g.add_argument("--decoupled-lr", type=NON_NEGATIVE, default=None,
                   help="learning rate of the embedding and output layer (same schedule shape)")
    g.add_argument("--decoupled-min-lr", type=NON_NEGATIVE, default=None, help="their --min-lr")
    g.add_argument("--override-opt_param-scheduler", "--override-opt-param-scheduler", action="store_true",
                   dest="override_opt_param_scheduler", help="on --load, the schedule flags win")
    g.add_argument("--use-checkpoint-opt_param-scheduler", "--use-checkpoint-opt-param-scheduler",
                   action="store_true", dest="use_checkpoint_opt_param_scheduler",
                   help="on --load, the checkpoint's schedule wins")
    g.add_argument("--calculate-per-token-loss", action="store_true",
                   help="the loss is the mean over the global batch's tokens (always, here)")
    g = p.add_argument_group("checkpointing (Megatron-LM interop)")
    g.add_argument("--use-checkpoint-args", action="store_true",
                   help="take the model flags (and tokenizer) from the --load checkpoint")
    g.add_argument("--no-use-tokenizer-model-from-checkpoint-args", action="store_false",
                   dest="use_tokenizer_model_from_checkpoint_args")
    g.add_argument("--exit-on-missing-checkpoint", action="store_true",
                   help="--load without a checkpoint is an error instead of a fresh start")
    g = p.add_argument_group("logging (Megatron-LM interop)")
    g.add_argument("--log-params-norm", action="store_true", help="'params norm' in the log line")
    g.add_argument("--log-num-zeros-in-grad", action="store_true", help="'num zeros' in the log line")
    g.add_argument("--log-validation-ppl-to-tensorboard", action="store_true")
    g.add_argument("--log-memory-to-tensorboard", action="store_true")
    g.add_argument("--log-world-size-to-tensorboard", action="store_true")
    g.add_argument("--log-batch-size-to-tensorboard", action="store_true")
    g.add_argument("--log-loss-scale-to-tensorboard", action=argparse.BooleanOptionalAction, default=True)
    g.add_argument("--no-log-learnig-rate-to-tensorboard", "--no-log-learning-rate-to-tensorboard",
                   action="store_false", dest="log_learning_rate_to_tensorboard")
    g.add_argument("--tensorboard-queue-size", type=POSITIVE_INT, default=1000)
    g.add_argument("--wandb-entity", default=None)


class MegatronArgumentParser(ArgumentParser):
    """argparse whose errors are one line (ArgumentError, a ValueError, which pretrain_gpt.py
    prints as ``error: ...`` on every rank) and whose unknown flags are named with why
    (megatron_compat.unknown_flag_message), never a usage dump."""

    def error(self, message):
        raise ArgumentError(message)

    def parse_args(self, args=None, namespace=None):
        argv = list(sys.argv[1:] if args is None else args)
        parsed, extras = self.parse_known_args(argv, namespace)
        if extras:
            flags = [e for e in extras if e.startswith("-")]
            raise ArgumentError(megatron_compat.unknown_flag_message(flags[0]) if flags else
                                f"unexpected value {extras[0]!r} (a flag before it takes fewer values)")
        # which flags the command line gave (--use-checkpoint-args lets some of them win)
        words = {w.split("=", 1)[0] for w in argv if w.startswith("--")}
        parsed.explicit_flags = sorted({a.dest for a in self._actions if words & set(a.option_strings)})
        return parsed


def build_parser() -> argparse.ArgumentParser:
    p = MegatronArgumentParser(description="Pretrain a GPT with TP x CP x PP x DP (megatron_sp)",
                               allow_abbrev=False,
                               epilog="Other Megatron-LM flags are accepted with a start-up note or refused in one "
                                      "line (megatron_sp/training/megatron_flags.py; README, 'Coming from "
                                      "Megatron-LM').")
    for add in (_model, _parallel, _memory, _training, _data, _checkpoint_and_logging, _megatron_interop):
        add(p)
    megatron_compat.add_compat_arguments(p)  # last: flags defined above take precedence
    return p


def _fail(msg):
    raise ArgumentError(msg)


def validate_args(args, world_size: int):
    """Fill derived values (dp size, padded vocab, batch counts); raise on bad input."""
    _megatron_prelude(args)
    tp, cp, pp = args.tensor_model_parallel_size, args.context_parallel_size, args.pipeline_model_parallel_size
    if world_size % (tp * cp * pp):
        _fail(f"world size {world_size} is not divisible by --tensor-model-parallel-size {tp} x "
              f"--context-parallel-size {cp}" + (f" x --pipeline-model-parallel-size {pp}" if pp > 1 else ""))
    args.data_parallel_size = world_size // (tp * cp * pp)
    if args.cp_comm_type == "a2a+p2p" and cp > 1 and not args.hierarchical_context_parallel_sizes:
        _fail("--cp-comm-type a2a+p2p needs --hierarchical-context-parallel-sizes U R with U x R = "
              f"--context-parallel-size {cp}")
    if args.hierarchical_context_parallel_sizes and args.cp_comm_type != "a2a+p2p":
        _fail(f"--hierarchical-context-parallel-sizes is only used with --cp-comm-type a2a+p2p "
              f"(got {args.cp_comm_type})")
    if args.cp_comm_type == "a2a":
        args.hierarchical_context_parallel_sizes = [cp, 1]
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
    layout_from_args(args)  # the pipeline split and schedule (raises PipelineLayoutError, a ValueError)
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
    from .checkpoint_args import apply_checkpoint_args
    notes = apply_checkpoint_args(args)
    notes += megatron_compat.apply_megatron_compat(args)
    args.tokenizer_type = resolve_tokenizer_type(args.tokenizer_type, args.vocab_file)
    notes += unused_tokenizer_flags(args)
    for flag in ("num_layers", "hidden_size", "num_attention_heads", "seq_length"):
        if getattr(args, flag) is None:
            _fail(f"--{flag.replace('_', '-')} is required (or --use-checkpoint-args with --load CHECKPOINT)")
    if args.distributed_backend == "nccl" and not torch.cuda.is_available():
        _fail("--distributed-backend nccl needs CUDA GPUs and none is visible; use --distributed-backend gloo "
              "(or leave the flag out: gloo on CPU, NCCL on GPU)")
    if not 0.0 < args.rotary_percent <= 1.0:
        _fail(f"--rotary-percent {args.rotary_percent} must be in (0, 1]")
    args.startup_notes = notes


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
