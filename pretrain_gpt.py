#!/usr/bin/env python
"""Pretrain a GPT with tensor, sequence (context) and data parallelism.

    torchrun --nproc-per-node N pretrain_gpt.py <Megatron-LM flags>

See README.md for the flags; ``--help`` lists them all.
"""
import sys

from megatron_sp.training.loop import pretrain


def main(argv=None) -> int:
    try:
        pretrain(argv)
    except ValueError as exc:  # bad flags, layout, data or checkpoint: one clear line, on every rank
        print(f"error: {exc}", file=sys.stderr, flush=True)
        return 2
    except FloatingPointError as exc:  # NaN/inf loss (--check-for-nan-in-loss-and-grad)
        print(f"error: {exc}", file=sys.stderr, flush=True)
        return 3
    return 0


if __name__ == "__main__":
    sys.exit(main())
