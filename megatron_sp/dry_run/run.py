"""Run a ``pretrain_gpt.py`` command's training steps and measure live bytes per device.

:func:`measure` is the one path for both kinds of run: real tensors (``fake=False``, in the
process group the caller made: the real run a dry run is checked against) and the dry run
(``fake=True``: inside :func:`~megatron_sp.dry_run.world.fake_world` and ``FakeTensorMode``).
Both build everything through ``training.loop.setup`` and run ``training.step.train_step``,
the code a training run executes, under one :class:`~megatron_sp.dry_run.live.LiveTracker`
entered before setup, so the persistent state (weights, optimizer state, DDP buckets) and
every step's activations and temporaries are counted alike.  Host and accelerator bytes are
counted apart (``live.Placement``; on a CPU-only machine the accelerator's are keyed ``cuda:0``),
and there activation offload copies to a separate host storage as it does on a GPU
(``megatron_sp.placement.separate_host``).
"""
from __future__ import annotations

import contextlib
import time
from dataclasses import dataclass, field

import torch

from ..placement import separate_host
from .cuda_kernels import FUSED_NOTE, NOTE as CUDA_NOTE, cuda_rms_norm
from .live import DirectCount, LiveTracker, Placement, fake_mode, uncounted_propagation
from .stubs import FIXED_NOTES, StubValues


@dataclass
class Measurement:
    peaks: dict                      # device -> {category: bytes at the peak, 'Total': peak}
    peak_where: dict                 # device -> "step 2, backward, module ..."
    after_step: list                 # per step: device -> live bytes (tracker) after it
    direct_after_step: list          # per step: device -> live bytes (direct count) after it
    layer_trace: list = field(default_factory=list)  # (step, phase, layer, {memory: live bytes}) per layer
    kernel: str = ""                 # the attention kernel chosen
    stubs: list = field(default_factory=list)
    seconds: float = 0.0
    args: object = None
    mesh: object = None

    def peak(self, device_type: str) -> int:
        """Peak bytes of one memory: ``"cuda"`` the accelerator's, ``"cpu"`` the host's."""
        return max((v["Total"] for d, v in self.peaks.items() if torch.device(d).type == device_type), default=0)


def _kernel(args, ctx) -> str:
    from ..training.model_parts import compute_dtype
    from ..sequence_parallel import attention_summary
    text, warning = attention_summary(args.cp_comm_type, ctx.mesh.cp_size, ctx.device, compute_dtype(args),
                                      args.attention_dropout, attention_backend=args.attention_backend,
                                      ring_size=ctx.mesh.ring_size)
    return text + (f" (WARNING: {warning})" if warning else "")


class _ReducerKeepingBuckets:
    """DDP's reducer, except that it never rebuilds its buckets (see :func:`_keep_ddp_buckets`)."""

    def __init__(self, reducer):
        self._reducer = reducer

    def _rebuild_buckets(self):
        return False

    def __getattr__(self, name):
        return getattr(self._reducer, name)


def _keep_ddp_buckets(model) -> None:
    """DDP rebuilds its gradient buckets in gradient order at the first forward after the first
    backward, in C++ code that reads tensor data (fake tensors have none).  The rebuilt buckets
    hold the same gradients in the same total bytes, so the dry run keeps the first ones."""
    if isinstance(model, torch.nn.parallel.DistributedDataParallel):
        model.reducer = _ReducerKeepingBuckets(model.reducer)


def measure(argv, steps: int = 2, fake: bool = False, direct: bool = True, cuda_kernels: bool = False,
            split_host: bool = True) -> Measurement:
    """Setup and ``steps`` training steps of ``argv`` under a :class:`LiveTracker` (module doc).
    ``cuda_kernels``: on a CPU-only machine, ops whose CPU kernel allocates otherwise than CUDA's
    allocate as CUDA's (``cuda_kernels.py``; fake tensors only: the stand-ins compute no values).
    ``split_host=False``: a CPU-only machine's one memory, as a CPU run has it (no accelerator key)."""
    from ..arguments import build_parser
    from ..training.batches import global_batches
    from ..training.loop import setup
    from ..training.step import train_step
    start = time.perf_counter()
    args = build_parser().parse_args(list(argv))
    args.train_iters = steps  # data for these steps only (the LR schedule changes no byte)
    # a CPU-only run counts host and accelerator bytes apart; on a GPU the devices say it
    placement = Placement(split=split_host and not torch.cuda.is_available())
    tracker, stubs, counter = LiveTracker(placement), StubValues(), DirectCount(placement)
    after, direct_after = [], []
    with contextlib.ExitStack() as stack:
        if placement.split:
            stack.enter_context(separate_host())
        stack.enter_context(uncounted_propagation())
        if fake:
            stack.enter_context(fake_mode())
            stack.enter_context(stubs)
        standing_in = fake and cuda_kernels and placement.split
        notes_in = [CUDA_NOTE] if standing_in and args.normalization == "RMSNorm" else []
        if standing_in:
            stack.enter_context(cuda_rms_norm())
            if args.attention_backend == "fused":  # CUDA only: the CPU's flash kernel keeps the same O(s)
                args.attention_backend = "flash"
                notes_in.append(FUSED_NOTE)
        if direct:
            stack.enter_context(counter)
        stack.enter_context(tracker)
        ctx = setup(args)
        if fake:
            for part in ctx.model_parts:
                _keep_ddp_buckets(part)
        tracker.track_external(ctx.model, ctx.optimizer.optimizer)
        if args.optimizer_cpu_offload:  # FSDP2 hands their gradient shards to the host
            tracker.host_params = [p for p in ctx.model.parameters() if p.requires_grad]
        source = global_batches(ctx.datasets[0], 0, steps, args, ctx.mesh, ctx.device)
        for i in range(steps):
            tracker.step, tracker.label = i + 1, "data"
            batches = next(source)
            tracker.label = "step"
            train_step(ctx, batches)
            tracker.sweep()
            del batches
            tracker.label = "between steps"
            tracker.reset_mod_stats()
            after.append(tracker.current())
            direct_after.append(counter.live() if direct else {})
        source.close()
    notes = (list(FIXED_NOTES) + notes_in + stubs.lines()) if fake else []
    return Measurement(tracker.peaks(), dict(tracker.peak_where), after, direct_after, tracker.layer_trace,
                       _kernel(args, ctx), notes, time.perf_counter() - start, args, ctx.mesh)
