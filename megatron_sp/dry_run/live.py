"""Live bytes per device: torch's ``MemTracker``, the phase of each peak, and a direct count.

:class:`LiveTracker` is torch's ``MemTracker`` (it watches every storage an op returns, by
category: parameters, buffers, gradients, activations, temporaries, optimizer state) that
also remembers *where* each device's peak happened: the step, the phase (forward, backward,
optimizer step, or a label the caller sets) and the innermost module running.

:class:`DirectCount` is the check on it: a weak reference to every storage an op returns,
summed over those still alive when asked.  It has no free callbacks and no bookkeeping to
get wrong, so a storage freed behind the tracker's back (or kept alive by it) shows up as a
difference between the two.

:class:`Placement` is the memory each storage counts in.  On a GPU it is the storage's device.
On a CPU run that keeps host bytes apart (``split``: the dry run and the real CPU runs it is
checked against) a storage created inside ``megatron_sp.placement.host_memory`` (activation
offload's copies, the model state and optimizer step of ``--optimizer-cpu-offload``) counts as
host memory (``cpu``) and every other storage as the accelerator's (``cuda:0``, rounded up to
512 bytes as CUDA's caching allocator does); the gradient shards FSDP2 hands to host parameters
(on a GPU, copied to the host after each reduce-scatter) are moved to the host when the tracker
next passes a module boundary in backward (:meth:`LiveTracker.sweep`), so one layer's shard may
count on the accelerator for one layer's backward, as the device copy the reduce-scatter
writes does on a GPU.

Under ``FakeTensorMode`` the fake-op cache must never hold a ``set_`` (:func:`fake_mode`): a
cached ``set_(storage)`` keeps the storage in its cache key, so every storage that the activation
offload re-views with ``set_`` would stay alive for ever (torch 2.13), a leak no real run has.
Every other op is cached (a third less CPU time on a 4-layer dry run).

DTensor works out the shape of an op's output by running the op on fake tensors, in the fake
mode it finds active: under the dry run that is the dry run's own, so the trackers would count
those stand-in outputs as allocations (a whole model's worth of optimizer-state temporaries in
the first step, when its cache is cold).  :func:`uncounted_propagation` keeps the trackers out
of it, in the dry run and the real run alike.
"""
from __future__ import annotations

import contextlib
import contextvars
import math
import weakref

import torch
from torch.distributed._tools.mem_tracker import _PYTORCH_MIN_ALLOCATE, MemTracker, _UpdateType
from torch.utils.weak import WeakIdKeyDictionary

from ..placement import allocating_on_host
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten

TOTAL = "Total"
_UNCOUNTED = contextvars.ContextVar("megatron_sp_dry_run_uncounted", default=False)


@contextlib.contextmanager
def uncounted_propagation():
    """Ops DTensor runs to propagate shapes are not allocations of the step (module doc)."""
    from torch.distributed.tensor._sharding_prop import ShardingPropagator
    real = ShardingPropagator._propagate_tensor_meta_non_cached

    def propagate(self, *args, **kwargs):
        token = _UNCOUNTED.set(True)
        try:
            return real(self, *args, **kwargs)
        finally:
            _UNCOUNTED.reset(token)

    ShardingPropagator._propagate_tensor_meta_non_cached = propagate
    try:
        yield
    finally:
        ShardingPropagator._propagate_tensor_meta_non_cached = real
HOST = torch.device("cpu")
ACCELERATOR = torch.device("cuda", 0)  # where a CPU run's device tensors would be on a GPU (module doc)


class Placement:
    """The memory a storage counts in (module doc); shared by the tracker and the direct count."""

    def __init__(self, split: bool = False):
        self.split = split
        self.moved = WeakIdKeyDictionary()  # storages handed to the host after they were made

    def key(self, device: torch.device) -> torch.device:
        """The memory of a storage created now on ``device``."""
        if not self.split or device.type != "cpu":
            return device
        return HOST if allocating_on_host() else ACCELERATOR

    def of(self, st, created_key: torch.device) -> torch.device:
        return HOST if st in self.moved else created_key


def rounded(nbytes: int, key: torch.device) -> int:
    """Bytes a storage takes in the memory ``key`` (CUDA: whole 512-byte blocks, MemTracker's rule)."""
    return math.ceil(nbytes / _PYTORCH_MIN_ALLOCATE) * _PYTORCH_MIN_ALLOCATE if key.type == "cuda" else nbytes


@contextlib.contextmanager
def fake_mode():
    """The dry run's FakeTensorMode: real inputs allowed (the batches), ``set_`` never cached (module doc).

    ``Module.to_empty`` swaps a fake parameter for its new one (``torch.utils.swap_tensors``),
    which refuses a tensor with a weak reference, and the fake mode's converter memo holds one
    to every ``nn.Parameter`` made under it; the memo is emptied before each swap (it only
    saves re-converting a tensor).  Restoring a saved RNG state (recompute, the TP RNG tracker) is
    skipped for a state copied under fake tensors: it has no bytes, and no random number is drawn."""
    from torch._subclasses.fake_tensor import FakeTensor, FakeTensorMode

    class DryRunFakeMode(FakeTensorMode):
        def _cached_dispatch_impl(self, func, types, args, kwargs):
            if "set_" in func.__name__:  # never cache an op that takes a storage (module doc)
                return self._dispatch_impl(func, types, args, kwargs)
            return super()._cached_dispatch_impl(func, types, args, kwargs)

    mode = DryRunFakeMode(allow_non_fake_inputs=True)
    if not callable(getattr(FakeTensorMode, "_cached_dispatch_impl", None)):  # another torch: no cache at all
        mode.cache_enabled = False
    real_swap = torch.utils.swap_tensors

    def swap_tensors(t1, t2):
        mode.fake_tensor_converter.meta_converter.tensor_memo.clear()
        return real_swap(t1, t2)

    torch.utils.swap_tensors = swap_tensors
    real_set_rng_state = torch.set_rng_state

    def set_rng_state(state):  # a saved RNG state copied under fake tensors has no bytes to restore
        if not isinstance(state, FakeTensor):
            real_set_rng_state(state)

    torch.set_rng_state = torch.random.set_rng_state = set_rng_state
    try:
        with mode:
            yield mode
    finally:
        torch.utils.swap_tensors = real_swap
        torch.set_rng_state = torch.random.set_rng_state = real_set_rng_state


def _storages(t: torch.Tensor) -> list:
    try:
        from torch.distributed._tools.common_utils import get_untyped_storages
        return list(get_untyped_storages(t))
    except ImportError:  # pragma: no cover - older torch
        return [t.untyped_storage()]


class LiveTracker(MemTracker):
    """``MemTracker`` that records the step, phase and module of each device's peak."""

    def __init__(self, placement: "Placement | None" = None):
        super().__init__()
        self.step, self.label = 0, "setup"
        self.peak_where: dict = {}  # device -> "step 2, backward, decoder.layers.3.mlp"
        self.placement = placement or Placement()
        self.host_params: list = []  # parameters whose gradients live in host memory (module doc)
        self.layer_trace: list = []  # (step, "forward"/"backward", layer fqn, {memory: live bytes}) per layer

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        if _UNCOUNTED.get():
            return func(*args, **(kwargs or {}))
        return super().__torch_dispatch__(func, types, args, kwargs)

    # -- the memory of each storage (module doc) -------------------------------------------
    def _track(self, reftype, t) -> None:
        super()._track(reftype, t)
        self._place(t)

    def _update_and_maybe_create_winfos(self, t, reftype, update_existing: bool = False):
        winfos = super()._update_and_maybe_create_winfos(t, reftype, update_existing)
        self._place(t)
        return winfos

    def _place(self, t: torch.Tensor, key=None) -> None:
        """Count ``t``'s storages in the memory they are in: where they were made (first sight),
        or ``key``."""
        if not self.placement.split:
            return
        for st in _storages(t):
            winfo, _ = self._WINFO.get(st, (None, None))
            if winfo is None or (key is None and getattr(winfo, "placed", False)):
                continue
            want = key if key is not None else self.placement.key(t.device)
            winfo.placed = True
            if winfo.device != want:
                self._update_snap(_UpdateType.DEL, winfo)
                winfo.device = want
                winfo.mem_consumed = winfo._calculate_mem_consumed()
                self._update_snap(_UpdateType.ADD, winfo)

    def sweep(self) -> None:
        """Move the gradients of host parameters to the host (module doc)."""
        if not (self.placement.split and self.host_params):
            return
        for p in self.host_params:
            g = p.grad
            if g is None:
                continue
            g = getattr(g, "_local_tensor", g)  # a DTensor's shard
            for st in _storages(g):
                self.placement.moved[st] = True
            self._place(g, HOST)

    def _pre_bw_hook(self, module, args) -> None:
        self.sweep()
        super()._pre_bw_hook(module, args)

    def _post_bw_hook(self, module, args) -> None:
        super()._post_bw_hook(module, args)
        self.sweep()
        self._trace(module, "backward")

    def _post_fw_hook(self, module, inputs, outputs) -> None:
        super()._post_fw_hook(module, inputs, outputs)
        if not self._mod_tracker.is_bw:  # not a recompute
            self._trace(module, "forward")

    def _trace(self, module, phase: str) -> None:
        """Live bytes per memory after each decoder layer's forward and backward, in ``layer_trace``."""
        if module is None or self.label != "step":
            return
        fqn = self._mod_tracker.get_known_fqn(module) or ""
        tail = fqn.rsplit(".", 2)
        if len(tail) == 3 and tail[1] == "layers" and tail[2].isdigit():
            self.layer_trace.append((self.step, phase, fqn, self.current()))

    def _pre_fw_hook(self, module, inputs) -> None:
        # MemTracker refuses a root module run twice in one tracking (gradient accumulation, a
        # pipeline stage per micro-batch); only its per-module statistics care, and none are used here
        parents = set(self._mod_tracker.parents) - {self._mod_tracker.get_known_fqn(module)}
        if module in self.memory_tracking and not self._mod_tracker.is_bw and parents <= {"Global"}:
            del self.memory_tracking[module]
        super()._pre_fw_hook(module, inputs)

    def phase(self) -> str:
        if self._in_opt:
            return "optimizer step"
        if self.label != "step":
            return self.label
        return "backward" if self._mod_tracker.is_bw else "forward"

    def _update_peak_stats(self, peak_state) -> None:
        # MemTracker's own also keeps each active module's local peak, a loop over every module
        # at every op; only the per-device peak is used here, with where it happened
        for dev, snap in self._curr_mem_snap.items():
            if self._peak_mem.get(dev, 0) < snap[TOTAL]:
                self._peak_mem[dev] = snap[TOTAL]
                self._peak_mem_snap[dev] = dict(snap)
                parents = [p for p in self._mod_tracker.parents if p != "Global"]
                inner = max(parents, key=len) if parents else "-"
                self.peak_where[dev] = f"step {self.step}, {self.phase()}, module {inner}"

    def peaks(self) -> dict:
        """device -> {category: bytes at that device's peak, 'Total': peak}."""
        return {dev: {str(getattr(k, "value", k)): v for k, v in snap.items()}
                for dev, snap in self.get_tracker_snapshot("peak").items()}

    def current(self) -> dict:
        """device -> live bytes now."""
        return {dev: snap.get(TOTAL, 0) for dev, snap in self.get_tracker_snapshot("current").items()}


class DirectCount(TorchDispatchMode):
    """Weak references to the storages every op returns; :meth:`live` sums the living ones."""

    def __init__(self, placement: "Placement | None" = None):
        super().__init__()
        self._refs = {}  # id(storage object) -> (weakref, memory it was made in, nbytes)
        self.placement = placement or Placement()

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        if _UNCOUNTED.get():
            return out
        for t in tree_flatten(out)[0]:
            if isinstance(t, torch.Tensor):
                self.add(t)
        return out

    def add(self, t: torch.Tensor) -> None:
        for st in _storages(t):
            key = id(st)
            known = self._refs.get(key)
            if known is None or known[0]() is not st:
                self._refs[key] = (weakref.ref(st), self.placement.key(t.device), st.nbytes())

    def live(self) -> dict:
        """memory -> bytes of the storages still alive (dead references dropped)."""
        out, dead = {}, []
        for key, (ref, made_in, _) in self._refs.items():
            st = ref()
            if st is None:
                dead.append(key)
            else:
                where = self.placement.of(st, made_in)
                out[where] = out.get(where, 0) + rounded(st.nbytes(), where)
        for key in dead:
            del self._refs[key]
        return out
