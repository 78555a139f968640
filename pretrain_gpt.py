#!/usr/bin/env python
"""Pretrain a GPT with tensor, sequence (context), pipeline and data parallelism.

    torchrun --nproc-per-node N pretrain_gpt.py <Megatron-LM flags>

See README.md for the flags; ``--help`` lists them all.
"""
import os
import sys

from megatron_sp.collective_errors import explain as explain_collective_failure
from megatron_sp.training.loop import pretrain


def _error_line(exc: Exception) -> None:
    # one write() of the whole line, so the ranks' lines never interleave in a shared pipe
    sys.stderr.write(f"error: {exc}\n")
    sys.stderr.flush()


def main(argv=None) -> int:
    try:
        pretrain(argv)
    except ValueError as exc:  # bad flags, layout, data or checkpoint: one clear line, on every rank
        _error_line(exc)
        return 2
    except FloatingPointError as exc:  # NaN/inf loss (--check-for-nan-in-loss-and-grad), diverged fp16
        _error_line(exc)
        return 3
    except RuntimeError as exc:  # a collective that timed out or lost a peer: name it, in one line
        message = explain_collective_failure(exc)
        if message is None:
            raise
        _error_line(message)
        return 4
    return 0


def _exit(code: int) -> None:
    """Exit with ``code``.  After an error, a rank of a torchrun job leaves without tearing down its
    process groups: their background threads, still joined to peers that are exiting too, made the
    interpreter's teardown abort (SIGABRT) after the one-line error."""
    import torch.distributed as dist
    if code and dist.is_available() and dist.is_initialized():
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)
    sys.exit(code)


if __name__ == "__main__":
    _exit(main())
