#!/usr/bin/env python
"""Dry-run a ``pretrain_gpt.py`` command: its training steps with fake tensors, as one rank.

    python tools/dry_run.py --world-size 8 --rank 0 -- <pretrain_gpt.py flags>

Builds everything through the training set-up and runs ``--steps`` training steps (default 2,
so the second has optimizer state) as rank ``--rank`` of a world of ``--world-size``, under
``FakeTensorMode`` and torch's fake process group (megatron_sp/dry_run/).  Prints the live
bytes at the peak of the accelerator and of the host by category, the phase of each peak, the
attention kernel, the memory model's figure beside each, and what the run had to stub.
Needs no GPU.  Bad flags: one line on stderr, exit status 2.
"""
from __future__ import annotations

import argparse
import os
import sys

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

from megatron_sp.dry_run import dry_run  # noqa: E402


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0], allow_abbrev=False)
    p.add_argument("--world-size", type=int, default=1, help="ranks of the world the command runs in")
    p.add_argument("--rank", type=int, default=0, help="the rank to dry-run")
    p.add_argument("--steps", type=int, default=2, help="training steps (the second has optimizer state)")
    p.add_argument("--no-direct-count", action="store_true",
                   help="skip the direct count of live storages (faster on large models)")
    p.add_argument("command", nargs=argparse.REMAINDER, help="-- then the pretrain_gpt.py flags")
    a = p.parse_args(argv)
    a.command = a.command[1:] if a.command[:1] == ["--"] else a.command
    if a.world_size < 1 or a.steps < 1:
        p.error(f"--world-size {a.world_size} and --steps {a.steps} must be >= 1")
    return a


def main(argv=None) -> int:
    a = parse_args(argv)
    try:
        _, _, text = dry_run(a.command, a.world_size, a.rank, a.steps, direct=not a.no_direct_count)
    except ValueError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print("\n".join(text))
    return 0


if __name__ == "__main__":
    sys.exit(main())
