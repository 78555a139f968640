"""The flag table: every ``pretrain_gpt.py`` flag and its default, declared here and nowhere else.

Megatron-LM's names and meanings; ``validate.py`` derives and checks, ``megatron_compat.py`` adds
the Megatron flags accepted with a note or refused.  Imports no torch (docs/ARCHITECTURE.md,
"arguments").
"""
from __future__ import annotations

import argparse
import sys

from ..pipeline_parallel.schedule_rules import SCHEDULES
from ..sequence_parallel.config import ATTENTION_BACKENDS, CP_COMM_TYPES, RING
from . import megatron_compat
from .checks import ArgumentError
from .megatron_compat import normalization_type, position_embedding_type
from .tokenizer_flags import add_tokenizer_arguments
from .types import (FRACTION, NON_NEGATIVE, NON_NEGATIVE_INT, POSITIVE, POSITIVE_INT, PROBABILITY, SEED,
                    ArgumentParser, in_range)


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
    g.add_argument("--cp-comm-type", default=RING, choices=list(CP_COMM_TYPES))
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
                                      "line (megatron_sp/arguments/megatron_flags.py; README, 'Coming from "
                                      "Megatron-LM').")
    for add in (_model, _parallel, _memory, _training, _data, _checkpoint_and_logging, _megatron_interop):
        add(p)
    megatron_compat.add_compat_arguments(p)  # last: flags defined above take precedence
    return p
