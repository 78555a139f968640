"""What a dry run cannot compute, answered by a stub and listed in the report.

Under ``FakeTensorMode`` a tensor has a shape, a dtype and a device but no values, so a
value read back to Python (``.item()``, ``bool(t)``, ``.tolist()``: the loss, the gradient
norm, the overflow flag, the attention kernel probe's ``allclose``) has none.  :class:`StubValues` answers each such read: ``True``
for a boolean (``isfinite(...).all()``: finite), ``0`` for a number (the overflow flag: no
overflow; the gradient norm: no clipping), and counts where it did (the op and the Python
line that asked), so the report says what the run assumed.  Random numbers are not drawn
(a fake ``randn`` or dropout mask has no values) and weights are not initialised with
values: the report lists those too, as fixed notes.
"""
from __future__ import annotations

import collections
import traceback

import torch
from torch.utils._python_dispatch import TorchDispatchMode

FIXED_NOTES = ("random numbers (weight initialisation, dropout masks) are not drawn: fake tensors have no values",
               "data: the real batches of the command are read, then only their shapes and dtypes are used")


def _caller() -> str:
    """The innermost frame that asked for a value: ``torch.optim`` (Adam's step count) or the
    line of this project (file:line function)."""
    for frame in reversed(traceback.extract_stack(limit=40)):
        if "torch/optim/" in frame.filename:
            return "torch.optim (the optimizer's step count)"
        if "torch/distributed/pipelining/" in frame.filename:
            return "torch pipelining (the stages' vote for static shapes)"
        if "megatron_sp" in frame.filename and "dry_run" not in frame.filename:
            return f"{frame.filename.split('megatron_sp/')[-1]}:{frame.lineno} {frame.name}"
    return "outside megatron_sp"


class StubValues(TorchDispatchMode):
    """Answers ``aten._local_scalar_dense`` on fake tensors (see the module doc)."""

    def __init__(self):
        super().__init__()
        self.asked = collections.Counter()  # (caller, answer) -> times

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        if func is torch.ops.aten._local_scalar_dense.default:
            t, where = args[0], _caller()
            answer = True if t.dtype == torch.bool else 0 if not t.is_floating_point() else 0.0
            if where.startswith("torch.optim"):
                answer = 1 if not t.is_floating_point() else 1.0  # bias correction 1 - beta^step needs step >= 1
            elif where.startswith("torch pipelining"):
                answer = 1  # every stage gives its input and output shapes (pipeline_parallel/schedule.py)
            self.asked[(where, repr(answer))] += 1
            return answer
        if func in (torch.ops.aten.allclose.default, torch.ops.aten.equal.default):
            # the attention kernel's probe compares with the reference: a kernel whose op (its meta
            # kernel under fake tensors) accepts the arguments is taken, as on the real device
            self.asked[(_caller(), "True")] += 1
            return True
        return func(*args, **(kwargs or {}))

    def lines(self) -> list:
        return [f"value read back at {where}: stubbed as {answer} ({n}x)"
                for (where, answer), n in sorted(self.asked.items())]
