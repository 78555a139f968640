"""What ``--load`` decides before the model exists, with Megatron-LM's meaning:

* ``--use-checkpoint-args``: the model flags come from the checkpoint's saved flags.  As in
  Megatron, the sizes (``IF_UNSET``) are taken only where the command line leaves them out --
  so ``--seq-length`` can grow for context extension -- while the flags that fix what the
  weights mean (``ALWAYS``) and the tokenizer (``TOKENIZER``, unless
  ``--no-use-tokenizer-model-from-checkpoint-args``) always follow the checkpoint.  RoPE's
  base and scaling and the dropouts (``UNLESS_GIVEN``) follow it unless given on the command
  line (Megatron forces them; here ``--rotary-base`` can be raised to extend the context).
* ``--exit-on-missing-checkpoint``: ``--load`` naming a directory with no checkpoint is an
  error instead of a fresh start.
* A weights-only checkpoint (``model_only`` in its metadata: converted from Hugging Face or
  another framework) loads as ``--finetune`` (iteration 0, fresh optimizer), as Megatron
  loads its release checkpoints.

Everything reads files only, before any collective, so every rank decides the same.
Worked example: a checkpoint saved with ``--num-layers 2 --hidden-size 64 --seq-length 128
--position-embedding-type rope``, loaded with ``--use-checkpoint-args --seq-length 512``,
builds a 2-layer, 64-wide RoPE model trained on 512-token sequences.
"""
from __future__ import annotations

import os

from ..checkpointing.files import checkpoint_dir, read_metadata, read_tracker
from ..data.tokenizers import resolve_tokenizer_type, saved_null_tokenizer_is_legacy

IF_UNSET = ("num_layers", "hidden_size", "ffn_hidden_size", "seq_length", "num_attention_heads", "kv_channels",
            "max_position_embeddings", "padded_vocab_size")
# Megatron forces these from the checkpoint too; here a flag given on the command line wins, so a
# context extension can raise --rotary-base or add RoPE scaling, and a fine-tune can set dropout.
UNLESS_GIVEN = ("rotary_base", "rotary_seq_len_interpolation_factor", "use_rope_scaling", "rope_scaling_factor",
                "attention_dropout", "hidden_dropout", "window_size")
ALWAYS = ("num_query_groups", "group_query_attention", "position_embedding_type", "rotary_percent",
          "disable_bias_linear", "add_qkv_bias", "swiglu", "openai_gelu", "untie_embeddings_and_output_weights",
          "apply_layernorm_1p", "normalization", "norm_epsilon")
TOKENIZER = ("tokenizer_type", "tokenizer_model", "vocab_size", "vocab_file", "merge_file", "tiktoken_pattern",
             "tiktoken_num_special_tokens", "null_tokenizer_eod_id", "legacy_tokenizer")


def saved_checkpoint(load_dir: str | None):
    """``(path, metadata)`` of the checkpoint the tracker of ``load_dir`` names, or ``(None, None)``."""
    if not load_dir or not os.path.isdir(load_dir):
        return None, None
    iteration = read_tracker(load_dir)
    if iteration is None:
        return None, None
    path = checkpoint_dir(load_dir, iteration)
    return path, read_metadata(path)


def apply_checkpoint_args(args) -> list:
    """Apply the three rules of the module docstring to ``args``; return the start-up notes."""
    notes = []
    if (args.use_checkpoint_args or args.exit_on_missing_checkpoint) and not args.load:
        flag = "--use-checkpoint-args" if args.use_checkpoint_args else "--exit-on-missing-checkpoint"
        raise ValueError(f"{flag} needs --load CHECKPOINT_DIR")
    if not args.load:
        return notes
    path, meta = saved_checkpoint(args.load)
    if path is None:
        if args.exit_on_missing_checkpoint:
            raise ValueError(f"--load {args.load} holds no checkpoint (no latest_checkpointed_iteration.txt) and "
                             "--exit-on-missing-checkpoint is set; check the path")
        if args.use_checkpoint_args:
            notes.append(f"--use-checkpoint-args: no checkpoint in --load {args.load}; the flags are used as given")
        return notes
    if args.use_checkpoint_args:
        saved = meta.get("args", {})
        taken = []
        names = IF_UNSET + UNLESS_GIVEN + ALWAYS + (TOKENIZER if args.use_tokenizer_model_from_checkpoint_args else ())
        given = set(getattr(args, "explicit_flags", ()))
        for name in names:
            if name not in saved or (name in IF_UNSET and getattr(args, name, None) is not None) or (
                    name in UNLESS_GIVEN and name in given):
                continue
            value = saved[name]
            if getattr(args, name, None) != value:
                setattr(args, name, value)
                taken.append(f"{name}={value}")
        notes.append(f"--use-checkpoint-args: from {path}: {', '.join(taken) if taken else 'nothing differs'}")
    saved = meta.get("args", {})
    if (saved_null_tokenizer_is_legacy(saved) and not args.legacy_tokenizer and args.null_tokenizer_eod_id is None
            and resolve_tokenizer_type(args.tokenizer_type, args.vocab_file) == "NullTokenizer"
            and saved.get("vocab_size") == args.vocab_size):
        args.legacy_tokenizer = True  # the same flags keep the checkpoint's vocabulary and EOD
        notes.append(f"--load {args.load}: {path} was trained with the NullTokenizer of --vocab-size "
                     f"{args.vocab_size} + 1 ids, EOD {args.vocab_size} (this codebase's earlier meaning, and "
                     "Megatron-LM's up to megatron-core 0.17); this run keeps it, as --legacy-tokenizer")
    if meta.get("model_only") and not args.finetune:
        args.finetune = True
        notes.append(f"--load {args.load} holds weights only ({path}): loaded as --finetune "
                     "(iteration 0, fresh optimizer), as Megatron-LM loads release checkpoints")
    return notes
