"""Live bytes per device: torch's ``MemTracker``, the phase of each peak, and a direct count.

:class:`LiveTracker` is torch's ``MemTracker`` (it watches every storage an op returns, by
category: parameters, buffers, gradients, activations, temporaries, optimizer state) that
also remembers *where* each device's peak happened: the step, the phase (forward, backward,
optimizer step, or a label the caller sets) and the innermost module running.

:class:`DirectCount` is the check on it: a weak reference to every storage an op returns,
summed over those still alive when asked.  It has no free callbacks and no bookkeeping to
get wrong, so a storage freed behind the tracker's back (or kept alive by it) shows up as a
difference between the two.

Under ``FakeTensorMode`` the fake-op cache must never hold a ``set_`` (:func:`fake_mode`): a
cached ``set_(storage)`` keeps the storage in its cache key, so every storage that the activation
offload re-views with ``set_`` would stay alive for ever (torch 2.13), a leak no real run has.
Every other op is cached (a third less CPU time on a 4-layer dry run).
"""
from __future__ import annotations

import contextlib
import weakref

import torch
from torch.distributed._tools.mem_tracker import MemTracker
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten

TOTAL = "Total"


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

    def __init__(self):
        super().__init__()
        self.step, self.label = 0, "setup"
        self.peak_where: dict = {}  # device -> "step 2, backward, decoder.layers.3.mlp"

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

    def __init__(self):
        super().__init__()
        self._refs = {}  # id(storage object) -> (weakref, device, nbytes)

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        for t in tree_flatten(out)[0]:
            if isinstance(t, torch.Tensor):
                self.add(t)
        return out

    def add(self, t: torch.Tensor) -> None:
        for st in _storages(t):
            key = id(st)
            known = self._refs.get(key)
            if known is None or known[0]() is not st:
                self._refs[key] = (weakref.ref(st), t.device, st.nbytes())

    def live(self) -> dict:
        """device -> bytes of the storages still alive (dead references dropped)."""
        out, dead = {}, []
        for key, (ref, device, _) in self._refs.items():
            st = ref()
            if st is None:
                dead.append(key)
            else:
                out[device] = out.get(device, 0) + st.nbytes()
        for key in dead:
            del self._refs[key]
        return out
