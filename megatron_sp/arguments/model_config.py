"""From the parsed flags to the model's configuration, by field name.

A field of :class:`~megatron_sp.model.GPTConfig` whose name is a flag's dest takes that flag's
value; only the few values that are *derived* (the padded vocabulary, a flag that turns another
off) are written out below.  The memory model's ``ModelSpec`` is built the same way from the
``GPTConfig`` (``memory/terms.py``), so the model that trains and the model that is sized read
one table: a new model flag needs a ``GPTConfig`` field of the same name and nothing else.
"""
from __future__ import annotations

import dataclasses

from ..model.config import GPTConfig
from .validate import padded_vocab_size


def fields_from(cls, source, **derived):
    """``cls(**kw)``: every init field of the dataclass ``cls`` that ``source`` (a namespace or a
    dataclass) has, by name, then ``derived`` on top."""
    kw = {f.name: getattr(source, f.name) for f in dataclasses.fields(cls) if f.init and hasattr(source, f.name)}
    kw.update(derived)
    return cls(**kw)


def model_vocab_size(args, tokenizer_vocab: int) -> int:
    """The embedding's rows: ``--padded-vocab-size`` (or a checkpoint's, by --use-checkpoint-args),
    else the tokenizer's vocabulary padded (``padded_vocab_size``)."""
    given = getattr(args, "padded_vocab_size", None)
    if given is None:
        return padded_vocab_size(tokenizer_vocab, args.make_vocab_size_divisible_by, args.tensor_model_parallel_size)
    if given < tokenizer_vocab:
        raise ValueError(f"--padded-vocab-size {given} is smaller than the tokenizer's vocabulary of {tokenizer_vocab}")
    return given


def gpt_config(args, vocab_size: int) -> GPTConfig:
    """The GPT of these flags with ``vocab_size`` rows (flags an older checkpoint lacks take
    GPTConfig's defaults)."""
    get = lambda name, default=None: getattr(args, name, default)  # noqa: E731
    return fields_from(GPTConfig, args, vocab_size=vocab_size,
                       add_bias_linear=not get("disable_bias_linear", False),
                       cpu_offloading_num_layers=get("cpu_offloading_num_layers", 0) if get("cpu_offloading") else 0,
                       rope_scaling_factor=get("rope_scaling_factor") if get("use_rope_scaling") else None,
                       apply_layernorm_1p=bool(get("apply_layernorm_1p")), add_qkv_bias=bool(get("add_qkv_bias")),
                       openai_gelu=bool(get("openai_gelu")))
