"""Which memory a tensor occupies on a GPU run: the accelerator's, or the host's.

On a GPU run a tensor's device answers that.  On a CPU run the two are one memory, so a
tensor that a GPU run would put in host memory (activation offload's copies, the model state
and optimizer step of ``--optimizer-cpu-offload``) looks like any other.  The code that puts
tensors there says so by allocating them inside :func:`host_memory`; whoever accounts memory
by kind (the dry run, ``megatron_sp/dry_run/live.py``) asks :func:`allocating_on_host` when a
storage is created.  :func:`separate_host` is the accountant's switch: inside it a CPU run
keeps host and accelerator bytes apart, so activation offload copies to a separate host
storage as on a GPU (outside it, a CPU run's offload keeps the storage itself: one memory,
nothing to move).  Both are context variables: nothing is global, and a run that nobody
accounts pays one lookup.

Example (the dry run of ``--optimizer-cpu-offload --cpu-offloading``)::

    with separate_host():                 # the accountant
        ...                               # model state made inside host_memory(): host bytes
        with host_memory():               # an offloaded layer input's copy: host bytes
            copy = torch.empty(n, dtype=torch.uint8)
"""
from __future__ import annotations

import contextlib
import contextvars

_ON_HOST = contextvars.ContextVar("megatron_sp_on_host", default=False)
_SEPARATE = contextvars.ContextVar("megatron_sp_separate_host", default=False)


@contextlib.contextmanager
def host_memory(active: bool = True):
    """Tensors allocated inside are host memory on a GPU run (``active=False``: no change)."""
    if not active:
        yield
        return
    token = _ON_HOST.set(True)
    try:
        yield
    finally:
        _ON_HOST.reset(token)


def allocating_on_host() -> bool:
    """Whether the storage being created now is host memory on a GPU run."""
    return _ON_HOST.get()


@contextlib.contextmanager
def separate_host():
    """Account host and accelerator bytes apart on a CPU run (module doc)."""
    token = _SEPARATE.set(True)
    try:
        yield
    finally:
        _SEPARATE.reset(token)


def host_is_separate(device) -> bool:
    """Whether moving a tensor on ``device`` to the host moves bytes: on an accelerator always,
    on the CPU only when an accountant keeps the two apart (:func:`separate_host`)."""
    return getattr(device, "type", device) != "cpu" or _SEPARATE.get()
