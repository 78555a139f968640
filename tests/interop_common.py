"""Helpers shared by the Megatron-LM interop tests (no tests here): the real scripts' flag lists.

``tests/megatron_scripts/*.args`` hold the flags real Megatron-LM / Megatron-DeepSpeed launch
scripts pass to ``pretrain_gpt.py``, as the program receives them.  ``script_flags`` reads one
with its path words replaced; ``groups`` cuts a flag list into ``(flag, [values])``.
"""
from __future__ import annotations

import os

SCRIPTS = os.path.join(os.path.dirname(os.path.abspath(__file__)), "megatron_scripts")


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
