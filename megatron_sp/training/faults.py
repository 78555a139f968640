"""Fault injection for the hang tests: one rank stops itself (SIGSTOP) at a chosen point.

    MEGATRON_SP_STOP_FAULT="<global rank>:<iteration>:<point>[:kill]"

``point`` is ``attention`` (before the first layer's CP attention, so its peers wait in
the ring P2P) or ``backward`` (when backward reaches the model's output, so its data-
parallel peers wait in the gradient all-reduce).  To its peers a stopped process looks
like a hung kernel or a frozen node: it holds its sockets open and answers nothing.  The
rank prints one line with its pid first, so a test can let it go again (SIGCONT).  With
``:kill`` the rank kills itself instead (SIGKILL, as ``kill -9``): its peers see a closed
connection.  Nothing happens without the variable.
"""
from __future__ import annotations

import os
import signal
import sys

ENV = "MEGATRON_SP_STOP_FAULT"
POINTS = ("attention", "backward")


def _stop(rank: int, iteration: int, point: str, sig=signal.SIGSTOP) -> None:
    sys.stderr.write(f"fault: rank {rank} (pid {os.getpid()}) stops itself with {sig.name} at iteration "
                     f"{iteration}, {point} ({ENV})\n")
    sys.stderr.flush()
    os.kill(os.getpid(), sig)


def install_stop_fault(ctx) -> None:
    """Register the hook ``MEGATRON_SP_STOP_FAULT`` asks for on this rank (no-op without it)."""
    spec = os.environ.get(ENV)
    if not spec:
        return
    rank, iteration, point, *how = spec.split(":")
    sig = signal.SIGKILL if how == ["kill"] else signal.SIGSTOP
    if point not in POINTS or how not in ([], ["kill"]):
        raise ValueError(f"{ENV}={spec}: the point must be one of {', '.join(POINTS)}, optionally followed by :kill")
    if int(rank) != ctx.mesh.rank:
        return
    due = lambda: ctx.state.iteration + 1 == int(iteration)  # noqa: E731  (the iteration being run)
    if point == "attention":
        from ..sequence_parallel.attention import ContextParallelAttention
        first = next(m for m in ctx.model.modules() if isinstance(m, ContextParallelAttention))
        first.register_forward_pre_hook(lambda *_: _stop(ctx.mesh.rank, int(iteration), point, sig) if due() else None)
    else:  # when the gradient of the model's output is computed: the first thing backward does
        def on_output(module, inputs, output):
            if due() and output.requires_grad:
                output.register_hook(lambda grad: _stop(ctx.mesh.rank, int(iteration), point, sig))
        ctx.model.register_forward_hook(on_output)
