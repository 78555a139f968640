"""One line for a collective that timed out or lost a peer, naming the collective and the group.

A hung rank (a stuck kernel, a frozen node, a SIGSTOP) leaves its peers waiting in
whatever collective they reached.  Every group of the mesh carries
``--distributed-timeout-minutes`` (parallel_state.py), so the wait ends; but gloo's
error says only ``Timed out waiting 12000ms for recv operation to complete`` and NCCL's
names its own ids.  :func:`explain` turns such an exception into::

    rank 0: send/recv (ring P2P) over the CP group (global ranks 0, 1) timed out after 12 s
    (--distributed-timeout-minutes 0.2): a rank of that group stopped answering (hung, stopped or
    dead); torchrun stops the job [gloo: Timed out waiting 12000ms for recv operation to complete]

It finds the collective and its group

* in a :class:`CollectiveError` raised where an asynchronous wait fails (the ring P2P
  exchange, the DDP gradient all-reduce), which names them itself, or
* in the ``torch.distributed`` frame of the traceback (every blocking collective, in
  forward or backward: its function name and its ``group`` argument),

and names the group by the ``group_desc`` the mesh gives it (``tp``, ``cp``, ``dp``,
``dp_cp`` ...) and its global ranks.  Anything else is not a collective failure (None:
the caller lets the traceback through).
"""
from __future__ import annotations

import datetime
import os
import re

import torch
import torch.distributed as dist

GROUP_NAMES = {"tp": "TP", "cp": "CP", "dp": "DP", "pp": "PP", "dp_cp": "DP x CP", "tp_cp": "TP x CP",
               "ulysses": "Ulysses", "ring": "ring", "checkpoint": "checkpoint (every rank, gloo)"}
_TIMED_OUT = re.compile(r"timed out|timeout", re.I)
_LOST_PEER = re.compile(r"connection (closed|reset) by peer|broken pipe|connection refused|"
                        r"socket closed|recv.*returned 0", re.I)
_C10D_FILE = os.path.join("torch", "distributed", "distributed_c10d.py")


class CollectiveError(RuntimeError):
    """A collective that timed out or lost a peer; the message is the one-line explanation."""


def _is_default(group) -> bool:
    return group is None or group is dist.GroupMember.WORLD or getattr(group, "group_desc", "") == "default_pg"


def group_label(group) -> str:
    """``the CP group (global ranks 0, 1)``; ``the default group (all 4 ranks)``."""
    if not dist.is_initialized() or _is_default(group):
        return f"the default group (all {dist.get_world_size() if dist.is_initialized() else 1} ranks)"
    desc = getattr(group, "group_desc", "") or "unnamed"
    try:
        ranks = ", ".join(str(r) for r in dist.get_process_group_ranks(group))
    except (RuntimeError, ValueError):
        ranks = "?"
    return f"the {GROUP_NAMES.get(desc, desc)} group (global ranks {ranks})"


def group_timeout_s(group) -> float | None:
    """The timeout a group's backend was created with (best effort: a private torch attribute)."""
    try:
        pg = group if group is not None else dist.distributed_c10d._get_default_group()
        device = torch.device("cuda") if torch.cuda.is_available() and dist.get_backend(pg) == "nccl" else \
            torch.device("cpu")
        timeout = pg._get_backend(device).options._timeout
        return timeout.total_seconds() if isinstance(timeout, datetime.timedelta) else None
    except Exception:  # noqa: BLE001 - only used to make the message more precise
        return None


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
    return re.sub(r"^\[[^\]]*(gloo|c10d|nccl)[^\]]*\] ", lambda m: f"{m.group(1)}: ", text)


def failure_kind(exc: BaseException) -> str | None:
    """``"timed out"``, ``"lost a peer"`` or None (not a collective failure)."""
    if not isinstance(exc, RuntimeError):
        return None
    text = str(exc)
    if _LOST_PEER.search(text):
        return "lost a peer"
    if _TIMED_OUT.search(text):
        return "timed out"
    return None


def describe(exc: BaseException, op: str, group, kind: str | None = None) -> str:
    """The one-line message for ``exc`` raised by ``op`` over ``group``."""
    kind = kind or failure_kind(exc) or "failed"
    rank = dist.get_rank() if dist.is_initialized() else 0
    what = f"rank {rank}: {op} over {group_label(group)}"
    if kind == "timed out":
        seconds = group_timeout_s(group)
        after = (f" after {seconds:g} s (--distributed-timeout-minutes {seconds / 60:g})" if seconds else
                 " (--distributed-timeout-minutes)")
        return (f"{what} timed out{after}: a rank of that group stopped answering (hung, stopped or dead); "
                f"torchrun stops the job [{_first_line(exc)}]")
    return (f"{what} {kind}: another rank of that group exited or was killed (its own error comes first); "
            f"torchrun stops the job [{_first_line(exc)}]")


def raise_named(exc: BaseException, op: str, group) -> None:
    """Raise a :class:`CollectiveError` naming ``op`` and ``group`` when ``exc`` is a collective
    failure; return otherwise.  For ``except`` blocks around asynchronous waits::

        except RuntimeError as exc:
            raise_named(exc, "send/recv (ring P2P)", group)
            raise
    """
    kind = failure_kind(exc)
    if kind:
        raise CollectiveError(describe(exc, op, group, kind)) from exc


def explain(exc: BaseException) -> str | None:
    """The one-line message for a collective failure anywhere in ``exc``'s chain, else None."""
    seen = set()
    e = exc
    while e is not None and id(e) not in seen:
        seen.add(id(e))
        if isinstance(e, CollectiveError):
            return str(e)
        e = e.__cause__ or e.__context__
    kind = failure_kind(exc)
    if kind is None:
        return None
    found = None  # the innermost torch.distributed collective frame of the traceback
    tb = exc.__traceback__
    while tb is not None:
        frame = tb.tb_frame
        if frame.f_code.co_filename.endswith(_C10D_FILE) and "group" in frame.f_locals:
            found = (frame.f_code.co_name, frame.f_locals["group"])
        tb = tb.tb_next
    if found is not None:
        return describe(exc, found[0], found[1], kind)
    marker = re.search(r"(rank \d+: .* over the .*? group .*?torchrun stops the job \[.*?\])", str(exc))
    if marker:  # a CollectiveError raised in a callback, re-thrown by torch as a RuntimeError
        return marker.group(1)
    if isinstance(exc, dist.DistError):  # torch says it is distributed, but not which collective
        rank = dist.get_rank() if dist.is_initialized() else 0
        return f"rank {rank}: a collective {kind} (which one is not known here); torchrun stops the job " \
               f"[{_first_line(exc)}]"
    return None
