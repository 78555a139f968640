"""Activation offload: what a layer keeps for backward waits in pinned host memory.

Megatron's ``--cpu-offloading --cpu-offloading-num-layers N``: for the first ``N`` decoder
layers, every tensor the layer saves for backward (except weights) is copied to host memory
during forward and brought back for backward.  Which tensors those are depends on the
recompute mode, with no special case here:

* ``--recompute-granularity full``: a checkpointed layer saves only its input (torch's
  non-reentrant checkpoint saves its inputs through the saved-tensor hooks that are active
  around it), so the checkpointed inputs move to the host;
* selective recompute or none: everything the layer keeps (norm and linear inputs, the MLP
  intermediates, the inputs of the checkpointed attention core) moves.

It is built on ``torch.autograd.graph.saved_tensors_hooks``: ``layer(i)`` is the hook
context of layer ``i`` (one *group*).  On CUDA the device-to-host copy runs on a side stream
(the device tensor is released to the allocator once the copy is done, ``record_stream``),
and in backward the first unpack of a group brings that group back and starts bringing back
the previous group on the side stream, so the copy of layer ``i - 1`` overlaps the backward
of layer ``i``.  On CPU host and device are one memory: a handle keeps the storage itself, so
offload runs the same bookkeeping, changes nothing and costs nothing; when an accountant keeps
host bytes apart (the dry run, ``megatron_sp/placement.py``) the CPU copies as CUDA does, without
streams, so the accelerator's bytes drop by what is packed.

Weights are never moved: parameters, their views and their autocast copies stay where they
are.  What moves is storages: views of one storage (SwiGLU's gate and up, a reshaped output)
and a tensor saved twice (RoPE's cos/sin tables, saved by every layer) are moved once, and a
saved tensor comes back as the same view of its storage's bytes.

Example: 32 layers, full recompute, ``N = 31``: the device keeps the checkpointed input of
the last layer only; the host holds 31 inputs of ``[s, b, h]``.
"""
from __future__ import annotations

import weakref

import torch

from ..placement import host_is_separate, host_memory

# autograd nodes that only re-view or re-type their input: a saved tensor reached from a
# parameter through these alone is a weight (e.g. the transposed bf16 copy a linear saves)
_WEIGHT_VIEWS = {"ToCopyBackward0", "TBackward0", "ViewBackward0", "TransposeBackward0", "PermuteBackward0",
                 "ExpandBackward0", "UnsqueezeBackward0", "SliceBackward0", "SplitBackward0"}


def _is_weight(t: torch.Tensor) -> bool:
    if isinstance(t, torch.nn.Parameter) or isinstance(t._base, torch.nn.Parameter):
        return True
    fn = t.grad_fn
    for _ in range(4):
        if fn is None or type(fn).__name__ not in _WEIGHT_VIEWS or not fn.next_functions:
            return False
        fn = fn.next_functions[0][0]
        if fn is not None and type(fn).__name__ == "AccumulateGrad":
            return True
    return False


class _HostStorage:
    """One storage's bytes in host memory (CUDA; a CPU run whose host is accounted apart) or the
    storage itself (a CPU run: one memory)."""

    def __init__(self, t: torch.Tensor, group: "_Group"):
        self.group, self.device = group, t.device
        data = torch.empty(0, dtype=torch.uint8, device=t.device).set_(t.untyped_storage())  # [nbytes]
        self.nbytes = data.numel()
        self.ready, self.event = None, None
        if t.device.type == "cuda":
            stream = group.offloader.stream(t.device)
            stream.wait_stream(torch.cuda.current_stream(t.device))
            with torch.cuda.stream(stream), host_memory():
                self.host = torch.empty(self.nbytes, dtype=torch.uint8, pin_memory=True)
                self.host.copy_(data, non_blocking=True)
            data.record_stream(stream)  # the device block is reused only after the copy
        elif host_is_separate(t.device):  # CPU, host accounted apart (the dry run): copy, as on CUDA
            with host_memory():
                self.host = torch.empty(self.nbytes, dtype=torch.uint8).copy_(data)
        else:
            self.host = data  # one memory: nothing to move
        self.moved = self.host is not data

    def fetch(self) -> None:
        """Start bringing the bytes back (CUDA: asynchronously on the offload stream)."""
        if self.ready is not None:
            return
        if not self.moved:
            self.ready = self.host
            return
        ready = torch.empty(self.nbytes, dtype=torch.uint8, device=self.device)
        if self.device.type != "cuda":
            self.ready = ready.copy_(self.host)
            return
        stream = self.group.offloader.stream(self.device)
        stream.wait_stream(torch.cuda.current_stream(self.device))
        with torch.cuda.stream(stream):
            ready.copy_(self.host, non_blocking=True)
            self.event = torch.cuda.Event()
            self.event.record(stream)
        ready.record_stream(stream)
        self.ready = ready

    def get(self) -> torch.Tensor:
        self.fetch()
        if self.event is not None:
            torch.cuda.current_stream(self.device).wait_event(self.event)
            self.event = None
        return self.ready


class _Saved:
    """A saved tensor as a view (dtype, offset, size, stride) of an offloaded storage."""

    __slots__ = ("storage", "dtype", "offset", "size", "stride")

    def __init__(self, storage: _HostStorage, t: torch.Tensor):
        self.storage, self.dtype = storage, t.dtype
        self.offset, self.size, self.stride = t.storage_offset(), t.size(), t.stride()

    def get(self) -> torch.Tensor:
        data = self.storage.get()
        return torch.empty(0, dtype=self.dtype, device=data.device).set_(
            data.untyped_storage(), self.offset, self.size, self.stride)


class _Group:
    """The saved tensors of one layer; backward of this group prefetches the previous one."""

    def __init__(self, offloader: "ActivationOffloader", index: int, prev: "_Group | None"):
        self.offloader, self.index, self.prev = offloader, index, prev
        self.storages = []  # weak references: the autograd graph owns the handles

    def pack(self, t: torch.Tensor):
        if _is_weight(t):
            return t
        storage = t.untyped_storage()  # one Python object per live storage: views share it
        seen = self.offloader._seen.get(id(storage))
        handle = seen[1]() if seen is not None and seen[0]() is storage else None
        if handle is None:
            handle = _HostStorage(t, self)
            self.storages.append(weakref.ref(handle))
            self.offloader._seen[id(storage)] = (weakref.ref(storage), weakref.ref(handle))
            self.offloader.packed_bytes += handle.nbytes
        return _Saved(handle, t)

    def fetch_all(self) -> None:
        for ref in self.storages:
            handle = ref()
            if handle is not None:
                handle.fetch()

    @staticmethod
    def unpack(packed):
        if isinstance(packed, torch.Tensor):
            return packed
        group = packed.storage.group
        group.fetch_all()
        if group.prev is not None:
            group.prev.fetch_all()  # backward needs the previous layer next: overlap its copy
        return packed.get()


class ActivationOffloader:
    """Host offload of the saved tensors of chosen layers (see the module doc).

    ``begin()`` at the start of each training forward; ``with offloader.layer(i):`` around
    layer ``i``'s forward.  ``packed_bytes``: storage bytes moved to the host by the current
    forward.
    """

    def __init__(self):
        self._streams = {}
        self.begin()

    def begin(self) -> None:
        self._groups, self._seen, self.packed_bytes = [], {}, 0

    def stream(self, device: torch.device):
        if device not in self._streams:
            self._streams[device] = torch.cuda.Stream(device)
        return self._streams[device]

    def layer(self, index: int):
        group = _Group(self, index, self._groups[-1] if self._groups else None)
        self._groups.append(group)
        return torch.autograd.graph.saved_tensors_hooks(group.pack, group.unpack)
