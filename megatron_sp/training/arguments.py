"""Command-line flags: Megatron-LM's names and meanings (DESIGN.md section 5).

``parse_args(argv)`` parses and validates; every error names the flag, the value
and the fix, and is raised before any collective so all ranks fail alike.
"""
from __future__ import annotations

import argparse
import math

from ..sequence_parallel import CP_COMM_TYPES


def _model(p):
    g = p.add_argument_group("model")
    g.add_argument("--num-layers", type=int, required=True)
    g.add_argument("--hidden-size", type=int, required=True)
    g.add_argument("--num-attention-heads", type=int, required=True)
    g.add_argument("--group-query-attention", action="store_true")
    g.add_argument("--num-query-groups", type=int, default=1)
    g.add_argument("--ffn-hidden-size", type=int, default=None)
    g.add_argument("--kv-channels", type=int, default=None)
    g.add_argument("--seq-length", type=int, required=True)
    g.add_argument("--max-position-embeddings", type=int, default=None)
    g.add_argument("--position-embedding-type", choices=["learned_absolute", "rope"], default="learned_absolute")
    g.add_argument("--rotary-base", type=float, default=10000.0)
    g.add_argument("--normalization", choices=["LayerNorm", "RMSNorm"], default="LayerNorm")
    g.add_argument("--norm-epsilon", type=float, default=1e-5)
    g.add_argument("--swiglu", action="store_true")
    g.add_argument("--disable-bias-linear", action="store_true")
    g.add_argument("--untie-embeddings-and-output-weights", action="store_true")
    g.add_argument("--hidden-dropout", type=float, default=0.1)
    g.add_argument("--attention-dropout", type=float, default=0.1)
    g.add_argument("--init-method-std", type=float, default=0.02)
    g.add_argument("--make-vocab-size-divisible-by", type=int, default=128)
    g.add_argument("--recompute-granularity", choices=["full", "selective"], default=None)
    g.add_argument("--recompute-method", choices=["uniform", "block"], default=None)
    g.add_argument("--recompute-num-layers", type=int, default=1)
    g.add_argument("--recompute-activations", action="store_true",
                   help="Megatron's shorthand for --recompute-granularity selective")


def _parallel(p):
    g = p.add_argument_group("parallelism")
    g.add_argument("--tensor-model-parallel-size", type=int, default=1)
    g.add_argument("--sequence-parallel", action="store_true",
                   help="Megatron-SP: norm/dropout on sequence shards inside the TP group")
    g.add_argument("--context-parallel-size", "--sequence-parallel-size", dest="context_parallel_size",
                   type=int, default=1, help="CP/SP degree: ranks one sequence is split across")
    g.add_argument("--cp-comm-type", default="p2p", choices=list(CP_COMM_TYPES))
    g.add_argument("--hierarchical-context-parallel-sizes", type=int, nargs=2, default=None, metavar=("U", "R"))
    g.add_argument("--distributed-backend", choices=["gloo", "nccl"], default=None)
    g.add_argument("--distributed-timeout-minutes", type=float, default=10.0)


def _memory(p):
    g = p.add_argument_group("long-sequence memory (chunked loss, tiled MLP, activation offload)")
    g.add_argument("--cross-entropy-chunk-size", type=int, default=2048, metavar="TOKENS",
                   help="the output layer and the cross entropy run fused over chunks of this many local "
                        "tokens, recomputed in backward, whenever there are more (0: full logits, unfused)")
    g.add_argument("--cross-entropy-loss-fusion", action="store_true",
                   help="Megatron's flag: the fused output layer + cross entropy even for one chunk")
    g.add_argument("--tiled-mlp-chunk-size", type=int, default=0, metavar="TOKENS",
                   help="MLP over chunks of this many tokens, recomputed in backward (ALST's tiled MLP; 0: off)")
    g.add_argument("--cpu-offloading", action="store_true",
                   help="keep what the first --cpu-offloading-num-layers layers save for backward in host memory")
    g.add_argument("--cpu-offloading-num-layers", type=int, default=0)


def _check_memory(args):
    for flag in ("cross_entropy_chunk_size", "tiled_mlp_chunk_size"):
        if getattr(args, flag) < 0:
            _fail(f"--{flag.replace('_', '-')} {getattr(args, flag)}: give a number of tokens, or 0 for off")
    if args.cross_entropy_loss_fusion and args.cross_entropy_chunk_size == 0:
        _fail("--cross-entropy-loss-fusion needs chunks: drop --cross-entropy-chunk-size 0")
    n = args.cpu_offloading_num_layers
    if args.cpu_offloading and not 1 <= n < args.num_layers:
        _fail(f"--cpu-offloading-num-layers {n}: offload between 1 and --num-layers - 1 = {args.num_layers - 1} "
              "layers (the last layer's backward comes first: offloading it saves nothing)")
    if n and not args.cpu_offloading:
        _fail(f"--cpu-offloading-num-layers {n} does nothing without --cpu-offloading: add it")


def _training(p):
    g = p.add_argument_group("training")
    g.add_argument("--micro-batch-size", type=int, required=True)
    g.add_argument("--global-batch-size", type=int, default=None)
    g.add_argument("--train-iters", type=int, default=None)
    g.add_argument("--train-samples", type=int, default=None)
    g.add_argument("--seed", type=int, default=1234)
    g.add_argument("--optimizer", choices=["adam"], default="adam")
    g.add_argument("--lr", type=float, required=True)
    g.add_argument("--min-lr", type=float, default=0.0)
    g.add_argument("--lr-decay-style", choices=["constant", "linear", "cosine"], default="linear")
    g.add_argument("--lr-decay-iters", type=int, default=None)
    g.add_argument("--lr-warmup-iters", type=int, default=0)
    g.add_argument("--lr-warmup-fraction", type=float, default=None)
    g.add_argument("--weight-decay", type=float, default=0.01)
    g.add_argument("--adam-beta1", type=float, default=0.9)
    g.add_argument("--adam-beta2", type=float, default=0.999)
    g.add_argument("--adam-eps", type=float, default=1e-8)
    g.add_argument("--clip-grad", type=float, default=1.0)
    g.add_argument("--bf16", action="store_true")
    g.add_argument("--fp16", action="store_true")
    g.add_argument("--loss-scale", type=float, default=None, help="static loss scale (fp16); default dynamic")
    g.add_argument("--initial-loss-scale", type=float, default=2.0 ** 16,
                   help="fp16 dynamic scale to start from (Megatron: 2^32, which skips ~15 steps "
                        "backing off; 2^16 as torch's GradScaler and DeepSpeed)")
    g.add_argument("--min-loss-scale", type=float, default=1.0)
    g.add_argument("--loss-scale-window", type=int, default=1000)
    g.add_argument("--hysteresis", type=int, default=2)
    g.add_argument("--check-for-nan-in-loss-and-grad", action=argparse.BooleanOptionalAction, default=True)
    g.add_argument("--exit-interval", type=int, default=None)
    g.add_argument("--exit-duration-in-mins", type=float, default=None)
    g.add_argument("--exit-signal-handler", action="store_true")


def _data(p):
    g = p.add_argument_group("data and tokenizer")
    g.add_argument("--data-path", nargs="*", default=None)
    g.add_argument("--split", default="969,30,1")
    g.add_argument("--mock-data", action="store_true")
    g.add_argument("--data-cache-path", default=None)
    g.add_argument("--eod-mask-loss", action="store_true")
    g.add_argument("--num-workers", type=int, default=0)
    g.add_argument("--tokenizer-type", default="NullTokenizer",
                   choices=["NullTokenizer", "SentencePieceTokenizer", "GPTSentencePieceTokenizer",
                            "HuggingFaceTokenizer"])
    g.add_argument("--tokenizer-model", default=None)
    g.add_argument("--vocab-size", type=int, default=None)


def _checkpoint_and_logging(p):
    g = p.add_argument_group("checkpointing")
    g.add_argument("--save", default=None)
    g.add_argument("--load", default=None)
    g.add_argument("--save-interval", type=int, default=None)
    g.add_argument("--no-load-optim", action="store_true")
    g.add_argument("--no-load-rng", action="store_true")
    g.add_argument("--finetune", action="store_true")
    g.add_argument("--keep-last-n-checkpoints", type=int, default=None)
    g = p.add_argument_group("logging")
    g.add_argument("--log-interval", type=int, default=100)
    g.add_argument("--eval-interval", type=int, default=1000)
    g.add_argument("--eval-iters", type=int, default=100)
    g.add_argument("--tensorboard-dir", default=None)
    g.add_argument("--wandb-project", default=None)
    g.add_argument("--wandb-exp-name", default=None)
    g.add_argument("--wandb-save-dir", default=None)
    g.add_argument("--peak-tflops", type=float, default=None,
                   help="per-device peak TFLOP/s for MFU (default: a table by device)")


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description="Pretrain a GPT with TP x CP x DP (megatron_sp)",
                                allow_abbrev=False)
    for add in (_model, _parallel, _memory, _training, _data, _checkpoint_and_logging):
        add(p)
    return p


class ArgumentError(ValueError):
    pass


def _fail(msg):
    raise ArgumentError(msg)


def validate_args(args, world_size: int):
    """Fill derived values (dp size, padded vocab, batch counts); raise on bad input."""
    tp, cp = args.tensor_model_parallel_size, args.context_parallel_size
    if world_size % (tp * cp):
        _fail(f"world size {world_size} is not divisible by --tensor-model-parallel-size {tp} x "
              f"--context-parallel-size {cp}")
    args.data_parallel_size = world_size // (tp * cp)
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
    if (args.train_iters is None) == (args.train_samples is None):
        _fail("give exactly one of --train-iters and --train-samples")
    if args.train_iters is None:
        args.train_iters = math.ceil(args.train_samples / args.global_batch_size)
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
    if args.lr_decay_iters is None:
        args.lr_decay_iters = args.train_iters
    if args.lr_warmup_fraction is not None:
        args.lr_warmup_iters = int(args.lr_warmup_fraction * args.lr_decay_iters)
    if args.save_interval is not None and args.save is None:
        _fail("--save-interval needs --save DIR")
    _check_memory(args)
    return args


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
