"""Megatron-LM flags that are not features of their own here (docs/ARCHITECTURE.md, "arguments").

Real launch scripts carry flags for kernels, fusions, profilers and engines that a
different codebase cannot (or need not) have.  Each such flag is in exactly one table of
megatron_flags.py:

* ``NO_EFFECT`` -- switches Megatron-LM itself ignores, or that choose among kernels and
  fusions this codebase picks by device.  Accepted; the run prints one start-up note per
  flag given (``> note: --no-rope-fusion has no effect here: ...``).
* ``REFUSED`` -- features that change the math and are not built (MoE, fp8, sliding
  windows, ...).  Accepted by the parser only so that the run stops with ONE line naming
  the flag (``--num-experts 8: mixture of experts is not supported``) instead of argparse's
  usage dump.  An entry may name values that are harmless (``--pipeline-model-parallel-size 1``).
* ``DEPRECATED`` -- old spellings, rewritten by :func:`apply_deprecated` into the modern
  flags *before* anything is derived, so ``--use-rotary-position-embeddings`` builds exactly
  the ``--position-embedding-type rope`` model (``SAME_AS_HERE``: spellings that ask for
  exactly what happens here, accepted silently).

Flags unknown to every table fail with one line too (:func:`unknown_flag_message`), by
family where one is recognisable (``--moe-*``, ``--fp8-*`` ...).  Flags that another part of
the parser already defines win: a table entry is skipped when its option string exists,
so implementing a feature elsewhere never collides with its entry here.
"""
from __future__ import annotations

import argparse
import json

from ..sequence_parallel.config import ULYSSES
from .types import Range
from .megatron_flags import (DEPRECATED, NO_EFFECT, REFUSED, REFUSED_FAMILIES,  # noqa: F401 (the tables)
                             SAME_AS_HERE)

NORMALIZATIONS = {"layernorm": "LayerNorm", "rmsnorm": "RMSNorm"}
POSITION_EMBEDDINGS = ("learned_absolute", "rope")
POSITION_EMBEDDINGS_REFUSED = {"yarn": "YaRN RoPE is not supported", "mrope": "multimodal RoPE is not supported",
                               "relative": "relative position embeddings are not supported",
                               "none": "models without position embeddings (NoPE) are not supported"}


def normalization_type(value: str) -> str:
    """``--normalization``: Megatron's ``LayerNorm``/``RMSNorm`` and Megatron-DeepSpeed's lower case."""
    canonical = NORMALIZATIONS.get(str(value).lower())
    if canonical is None:
        raise argparse.ArgumentTypeError(f"invalid choice {value!r} (choose LayerNorm or RMSNorm)")
    return canonical


def position_embedding_type(value: str) -> str:
    if value not in POSITION_EMBEDDINGS and value not in POSITION_EMBEDDINGS_REFUSED:
        raise argparse.ArgumentTypeError(f"invalid choice {value!r} (choose learned_absolute or rope)")
    return value


def _dest(flag: str) -> str:
    return "compat_" + flag.lstrip("-").replace("-", "_")


def add_compat_arguments(parser: argparse.ArgumentParser) -> None:
    """Add every table's flags not already defined by the parser (call it last)."""
    known = set(parser._option_string_actions)  # noqa: SLF001 - argparse has no public accessor
    group = parser.add_argument_group("Megatron-LM compatibility (see README, 'Coming from Megatron-LM')")
    for table in (NO_EFFECT, REFUSED):
        for flag, entry in table.items():
            if flag not in known:
                group.add_argument(flag, dest=_dest(flag), default=argparse.SUPPRESS, help=argparse.SUPPRESS,
                                   **entry[0])
    for flag, (spec, target) in {**DEPRECATED, **SAME_AS_HERE}.items():
        if flag not in known:
            kwargs = dict(spec)
            if kwargs.get("type") in (int, float):  # a deprecated spelling takes its modern flag's range
                actions = [parser._option_string_actions.get(w) for w in target.split()]  # noqa: SLF001
                ranged = [a.type for a in actions if a is not None and isinstance(a.type, Range)]
                if ranged:
                    kwargs["type"] = ranged[0]
            kwargs.setdefault("dest", flag.lstrip("-").replace("-", "_"))
            kwargs.setdefault("default", None if kwargs.get("action") != "store_false" else True)
            group.add_argument(flag, help=argparse.SUPPRESS, **kwargs)


def _given(args, flag: str):
    """``(True, value)`` if a NO_EFFECT/REFUSED flag was on the command line."""
    dest = _dest(flag)
    return (True, getattr(args, dest)) if hasattr(args, dest) else (False, None)


def _show(value) -> str:
    if value is True or value is None:
        return ""
    if isinstance(value, (list, tuple)):
        return " " + " ".join(str(v) for v in value)
    return f" {value}"


def refusal(args) -> str | None:
    """The one-line reason the first refused flag given cannot run, else None."""
    for flag, (_, reason, harmless) in REFUSED.items():
        given, value = _given(args, flag)
        if given and (harmless is None or value not in harmless):
            return f"{flag}{_show(value)}: {reason}"
    if getattr(args, "lr_decay_style", None) == "WSD":
        return "--lr-decay-style WSD: the warmup-stable-decay schedule is not supported"
    pe = getattr(args, "position_embedding_type", None)
    if pe in POSITION_EMBEDDINGS_REFUSED:
        return f"--position-embedding-type {pe}: {POSITION_EMBEDDINGS_REFUSED[pe]}"
    return None


def no_effect_notes(args) -> list:
    notes = []
    for flag, (_, reason) in NO_EFFECT.items():
        given, value = _given(args, flag)
        if given:
            notes.append(f"{flag}{_show(value)} has no effect here: {reason}")
    return notes


def _check_deepspeed_config(args, path: str) -> None:
    """A DeepSpeed JSON config is accepted when it agrees with the flags (batch sizes, precision)."""
    try:
        with open(path) as f:
            cfg = json.load(f)
    except (OSError, ValueError) as exc:
        raise ValueError(f"--deepspeed_config {path}: cannot be read ({exc}); fix it or drop the flag") from None
    checks = [("train_micro_batch_size_per_gpu", cfg.get("train_micro_batch_size_per_gpu"),
               "--micro-batch-size", args.micro_batch_size),
              ("train_batch_size", cfg.get("train_batch_size"), "--global-batch-size", args.global_batch_size)]
    for key, flag in (("bf16", "--bf16"), ("fp16", "--fp16")):
        enabled = (cfg.get(key) or {}).get("enabled")
        if enabled is not None:
            checks.append((f"{key}.enabled", bool(enabled), flag, bool(getattr(args, key))))
    for key, value, flag, mine in checks:
        if value is not None and mine is not None and value != mine:
            raise ValueError(f"--deepspeed_config {path}: {key} is {value} but {flag} is {mine}; this loop "
                             f"takes batch sizes and precision from the flags, make them agree")
    stage = (cfg.get("zero_optimization") or {}).get("stage", 0)
    if stage:
        raise ValueError(f"--deepspeed_config {path}: zero_optimization.stage {stage}: "
                         f"{REFUSED['--zero-stage'][1]}")


def apply_deprecated(args) -> list:
    """Rewrite deprecated spellings into the modern flags; return one note per spelling used."""
    notes = []
    for flag, (spec, _) in {**DEPRECATED, **SAME_AS_HERE}.items():  # entries another parser entry replaced
        dest = spec.get("dest", flag.lstrip("-").replace("-", "_"))
        if not hasattr(args, dest):
            setattr(args, dest, True if spec.get("action") == "store_false" else None)

    def note(flag, modern):
        notes.append(f"{flag} is read as {modern} (deprecated spelling)")

    if args.use_rotary_position_embeddings:
        args.position_embedding_type = "rope"
        note("--use-rotary-position-embeddings", "--position-embedding-type rope")
    if not args.add_position_embedding:
        if args.position_embedding_type != "rope":
            raise ValueError("--no-position-embedding without RoPE would train without position information, "
                             "which is not supported; use --position-embedding-type rope "
                             "(Megatron-LM refuses it too)")
        notes.append("--no-position-embedding: nothing to do, a RoPE model has no learned position embedding "
                     "(deprecated spelling)")
    if args.checkpoint_activations:
        if args.recompute_granularity not in (None, "full"):
            raise ValueError("--checkpoint-activations means --recompute-granularity full; it cannot be "
                             f"combined with --recompute-granularity {args.recompute_granularity}")
        args.recompute_granularity = "full"
        args.recompute_method = args.recompute_method or "uniform"
        args.recompute_num_layers = args.checkpoint_num_layers or args.recompute_num_layers
        note("--checkpoint-activations", f"--recompute-granularity full --recompute-method {args.recompute_method} "
                                         f"--recompute-num-layers {args.recompute_num_layers}")
    elif args.checkpoint_num_layers is not None:
        raise ValueError("--checkpoint-num-layers needs --checkpoint-activations (or use "
                         "--recompute-granularity full --recompute-method uniform --recompute-num-layers N)")
    if args.num_key_value_heads is not None:
        args.group_query_attention = args.num_key_value_heads != args.num_attention_heads
        args.num_query_groups = args.num_key_value_heads
        note("--num-key-value-heads", f"--group-query-attention --num-query-groups {args.num_key_value_heads}")
    for old, new, modern in (("layernorm_epsilon", "norm_epsilon", "--norm-epsilon"),
                             ("rotary_position_embeddings_theta", "rotary_base", "--rotary-base"),
                             ("encoder_num_layers", "num_layers", "--num-layers"),
                             ("encoder_seq_length", "seq_length", "--seq-length")):
        value = getattr(args, old)
        if value is not None:
            mine = getattr(args, new)
            if new in ("num_layers", "seq_length") and mine is not None and mine != value:
                raise ValueError(f"--{old.replace('_', '-')} {value} and {modern} {mine} disagree; give one")
            setattr(args, new, value)
            note(f"--{old.replace('_', '-')}", modern)
    if args.ds_sequence_parallel_size is not None:
        if args.context_parallel_size not in (1, args.ds_sequence_parallel_size):
            raise ValueError(f"--ds-sequence-parallel-size {args.ds_sequence_parallel_size} and "
                             f"--context-parallel-size {args.context_parallel_size} disagree; give one")
        args.context_parallel_size = args.ds_sequence_parallel_size
        if args.ds_sequence_parallel_size > 1:
            args.cp_comm_type = ULYSSES
        note("--ds-sequence-parallel-size", f"--context-parallel-size {args.ds_sequence_parallel_size} "
                                            "--cp-comm-type a2a (DeepSpeed-Ulysses)")
    if args.data_impl is not None and args.data_impl not in ("mmap", "infer"):
        raise ValueError(f"--data-impl {args.data_impl}: only Megatron's mmap indexed dataset is supported "
                         "(--data-impl mmap)")
    if args.deepspeed_config is not None:
        _check_deepspeed_config(args, args.deepspeed_config)
    return notes


def apply_megatron_compat(args) -> list:
    """Refuse what cannot run, rewrite deprecated spellings; return the start-up notes."""
    reason = refusal(args)
    if reason:
        raise ValueError(reason)
    return apply_deprecated(args) + no_effect_notes(args)


def unknown_flag_message(flag: str) -> str:
    for prefix, reason in REFUSED_FAMILIES.items():
        if flag.startswith(prefix):
            return f"{flag}: {reason}"
    return (f"unrecognized flag {flag}: not a Megatron-LM flag this codebase knows (python pretrain_gpt.py --help "
            "lists them; README 'Coming from Megatron-LM' lists what is refused)")

