"""Fault injection for the hang tests: one rank stops itself (SIGSTOP) at a chosen point.

    MEGATRON_SP_STOP_FAULT="<global rank>:<iteration>:<point>"

``point`` is ``attention`` (before the first layer's CP attention, so its peers wait in
the ring P2P) or ``backward`` (when backward reaches the model's output, so its data-
parallel peers wait in the gradient all-reduce).  To its peers a stopped process looks
like a hung kernel or a frozen node: it holds its sockets open and answers nothing.  The
rank prints one line with its pid first, so a test can let it go again (SIGCONT).
Nothing happens without the variable.
"""
from __future__ import annotations

import os
import signal
import sys

ENV = "MEGATRON_SP_STOP_FAULT"
POINTS = ("attention", "backward")


def _stop(rank: int, iteration: int, point: str) -> None:
    sys.stderr.write(f"fault: rank {rank} (pid {os.getpid()}) stops itself with SIGSTOP at iteration "
                     f"{iteration}, {point} ({ENV})\n")
    sys.stderr.flush()
    os.kill(os.getpid(), signal.SIGSTOP)


def install_stop_fault(ctx) -> None:
    """Register the hook ``MEGATRON_SP_STOP_FAULT`` asks for on this rank (no-op without it)."""
    spec = os.environ.get(ENV)
    if not spec:
        return
    rank, iteration, point = spec.split(":")
    if point not in POINTS:
        raise ValueError(f"{ENV}={spec}: the point must be one of {', '.join(POINTS)}")
    if int(rank) != ctx.mesh.rank:
        return
    due = lambda: ctx.state.iteration + 1 == int(iteration)  # noqa: E731  (the iteration being run)
    if point == "attention":
        from ..sequence_parallel.attention import ContextParallelAttention
        first = next(m for m in ctx.model.modules() if isinstance(m, ContextParallelAttention))
        first.register_forward_pre_hook(lambda *_: _stop(ctx.mesh.rank, int(iteration), point) if due() else None)
    else:  # when the gradient of the model's output is computed: the first thing backward does
        def on_output(module, inputs, output):
            if due() and output.requires_grad:
                output.register_hook(lambda grad: _stop(ctx.mesh.rank, int(iteration), point))
        ctx.model.register_forward_hook(on_output)
