"""The flag contract of ``pretrain_gpt.py``: the one place a flag and its default are declared.

    args = parse_args(argv, world_size)     # parse (parser.py) + derive and check (validate.py)

Modules: ``parser`` (the flag table), ``validate`` (derived values, checks that need several
flags), ``checks`` (combination checks, ``ArgumentError``), ``megatron_flags`` / ``megatron_compat``
(Megatron-LM flags accepted with a note, deprecated or refused), ``checkpoint_args``
(``--use-checkpoint-args``), ``types`` (range-checked flag types).  Nothing here imports torch:
the memory model, the planner and the scaling tool read the same table (docs/ARCHITECTURE.md).
"""
from .checks import ArgumentError
from .parser import build_parser
from .validate import padded_vocab_size, parse_args, validate_args

__all__ = ["ArgumentError", "build_parser", "padded_vocab_size", "parse_args", "validate_args"]
