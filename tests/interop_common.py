"""Helpers shared by the Megatron-LM interop tests (no tests here): the real scripts' flag lists.

``tests/megatron_scripts/*.args`` hold the flags real Megatron-LM / Megatron-DeepSpeed launch
scripts pass to ``pretrain_gpt.py``, as the program receives them.  ``script_flags`` reads one
with its path words replaced; ``groups`` cuts a flag list into ``(flag, [values])``.
"""
from __future__ import annotations

import os

from megatron_sp.training.arguments import build_parser

SCRIPTS = os.path.join(os.path.dirname(os.path.abspath(__file__)), "megatron_scripts")
# Flags of features other parts of the project implement (issues 10, 11, 16): dropped from a replay
# while the parser does not know them yet, replayed as soon as it does.
OWNED_ELSEWHERE = {"--attention-backend", "--cross-entropy-loss-fusion", "--use-distributed-optimizer",
                   "--overlap-grad-reduce", "--overlap-param-gather", "--ckpt-format", "--async-save",
                   "--use-torch-fsdp2", "--optimizer-cpu-offload"}


def script_flags(name: str, paths: dict | None = None) -> list:
    """The words of ``megatron_scripts/NAME.args`` (comments dropped, path words replaced)."""
    words = []
    for line in open(os.path.join(SCRIPTS, name + ".args")):
        if line.lstrip().startswith("#"):
            continue
        for w in line.split():
            for key, value in (paths or {}).items():
                w = w.replace(key, value) if (w == key or w.endswith("=" + key)) else w
            words.append(w)
    return words


def groups(words: list) -> list:
    """``["--a", "1", "--b", "--c=2"]`` -> ``[("--a", ["1"]), ("--b", []), ("--c", ["2"])]``."""
    out = []
    for w in words:
        if w.startswith("--"):
            flag, _, value = w.partition("=")
            out.append((flag, [value] if value else []))
        else:
            out[-1][1].append(w)
    return out


def flatten(gs) -> list:
    return [w for flag, values in gs for w in [flag, *values]]


def known_to_parser(gs) -> list:
    """Drop the groups of OWNED_ELSEWHERE flags the parser does not define (yet)."""
    known = set(build_parser()._option_string_actions)  # noqa: SLF001
    return [(f, v) for f, v in gs if f in known or f not in OWNED_ELSEWHERE]


def replace(gs, **changes) -> list:
    """Set flags' values (``num_layers=2`` -> ``--num-layers 2``; None drops the flag)."""
    out, done = [], set()
    for flag, values in gs:
        key = flag.lstrip("-").replace("-", "_")
        if key in changes:
            done.add(key)
            if changes[key] is None:
                continue
            values = [str(v) for v in changes[key]] if isinstance(changes[key], (list, tuple)) else [str(changes[key])]
        out.append((flag, values))
    for key in set(changes) - done:
        if changes[key] is not None:
            value = changes[key]
            out.append(("--" + key.replace("_", "-"), [str(v) for v in value] if isinstance(value, (list, tuple))
                        else ([] if value is True else [str(value)])))
    return out
