"""When to stop early: SIGTERM (``--exit-signal-handler``), ``--exit-duration-in-mins``, ``--exit-interval``.

Every rank must stop at the same iteration (and save the same checkpoint), so the
signal flag and the clock are all-reduced (MAX) once per iteration: one rank's
SIGTERM or deadline stops them all.
"""
from __future__ import annotations

import signal
import time

import torch
import torch.distributed as dist


class ExitSignal:
    """``--exit-signal-handler``: SIGTERM only sets a flag; the loop saves and exits at the end of the iteration."""

    def __init__(self, enabled: bool):
        self.received = False
        self._previous = None
        if enabled:
            self._previous = signal.signal(signal.SIGTERM, self._handle)

    def _handle(self, signum, frame):
        self.received = True

    def restore(self):
        if self._previous is not None:
            signal.signal(signal.SIGTERM, self._previous)


def should_exit(ctx, sig: ExitSignal, start_time: float) -> str | None:
    """Why to stop after this iteration (the same answer on every rank), or ``None``."""
    args, it = ctx.args, ctx.state.iteration
    flags = torch.zeros(2, dtype=torch.float32)
    flags[0] = float(sig.received)
    if args.exit_duration_in_mins is not None:
        flags[1] = float((time.time() - start_time) / 60.0 > args.exit_duration_in_mins)
    if (args.exit_signal_handler or args.exit_duration_in_mins is not None) and dist.is_initialized():
        flags = flags.to(ctx.device)
        dist.all_reduce(flags, op=dist.ReduceOp.MAX)  # one rank's signal or clock stops every rank
        flags = flags.cpu()
    if flags[0] > 0:
        return "received SIGTERM (--exit-signal-handler)"
    if flags[1] > 0:
        return f"--exit-duration-in-mins {args.exit_duration_in_mins} reached"
    if args.exit_interval and it % args.exit_interval == 0:
        return f"--exit-interval {args.exit_interval} reached"
    return None
