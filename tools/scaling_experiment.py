#!/usr/bin/env python
"""Scaling experiments: the largest micro-batch and the longest sequence that fit, and their speed.

For a model config and a list of layouts at world sizes 1, 2, 4, 8, find by search

* ``--experiment max-seq``:   the maximum ``--seq-length`` at a fixed ``--micro-batch-size``,
* ``--experiment max-batch``: the maximum ``--micro-batch-size`` at a fixed ``--seq-length``,

whose training step (forward, backward, optimizer) fits the per-rank memory budget, and
report throughput (tokens/s, TFLOP/s per device) at those points.  Next to every
measurement the memory and communication model (:mod:`megatron_sp.memory_model`) prints
its prediction, so the two can be compared.

    python tools/scaling_experiment.py --experiment max-seq --worlds 1 2 4 \
        --layouts tp tp+sp rsa p2p a2a a2a+p2p --memory-budget-gb 0.125 --out-dir docs/scaling

Layouts (at world size W; DP = W / (TP x CP))::

    tp        TP = W                           tp+sp     TP = W with --sequence-parallel
    rsa, p2p, a2a                              CP = W with that --cp-comm-type
    a2a+p2p   CP = W, Ulysses 2 x ring W/2 (ring only below W = 4)
    tp2+p2p   TP = 2 x CP = W/2 (p2p), likewise tp2+sp+p2p, tp2+a2a ...
    dp        DP = W (max batch only: every rank holds the whole model)

**What is measured.**  Each trial is one fresh set of ``W`` processes (forked from a
forkserver that has imported torch but never computed, so a parent that already used
OpenMP threads cannot deadlock them; a gloo group on a private FileStore; NCCL and
spawn on GPU),
so a crash or an out-of-memory cannot poison the next trial.  A rank builds the model,
optimizer and batches (``loop.setup``) and runs ``--steps`` training steps (default 2).
The first is a warm-up: it allocates the Adam state and loads every kernel's code.  The
*baseline* is taken just before the last step and holds what persists between steps
(weights, Adam state, DDP's gradient buckets when DP x CP > 1, the batches, the
interpreter and libraries).  The number compared with the budget is the **peak of the
last step (forward, backward, optimizer) above that baseline**, the maximum over ranks;
that step is also the one timed:

* CPU: the kernel's resident-set high-water mark.  Before the step the rank writes ``5``
  to ``/proc/self/clear_refs``, which resets ``VmHWM`` to the current RSS; after the
  step ``VmHWM - VmRSS(baseline)`` is the peak of resident memory the step added, kept
  by the kernel at page granularity (no sampling that could miss a short peak).  glibc
  is told (``mallopt``) to serve every block >= 64 KiB with its own ``mmap`` and give it
  back on ``free``, with at most 2 arenas, so RSS follows the live tensor bytes instead
  of malloc's cached free lists; ``tests/test_scaling_experiment.py`` checks that known
  allocations (one 64 MiB tensor, 128 x 256 KiB, 8 x 16 MiB allocated and freed in turn)
  are measured to within 5%.  As a safety net for the shared machine, ``RLIMIT_DATA`` caps
  each rank at ``setup + 2 x budget + 512 MiB``:
  a step far over budget fails with an allocation error (recorded as ``oom``) instead
  of swapping the host.
* GPU: ``torch.cuda.max_memory_allocated() - memory_allocated()`` at the baseline; with
  ``--memory-budget-gb`` the caching allocator is capped to the baseline plus the budget
  (``set_per_process_memory_fraction``), without it the whole card is the budget and a
  trial fits when it does not raise ``OutOfMemoryError``.

**Search.**  Values are multiples of the granularity the layout needs (sequence: 2P for
zigzag modes, P otherwise, times TP under --sequence-parallel; batch: 1).  From a
start (95% of the memory model's prediction, or ``--start``) the value grows by
``--growth`` (1.15 from the model's start, 2 otherwise) until a trial fails, or shrinks
until one fits, then bisects until the bracket is within ``--rel-tol`` (default 3%) or
one granule.  Layouts that run the same program (every layout at world 1) are searched
once.  Throughput comes from the timed step of the largest trial that fit.

Outputs under ``--out-dir``: ``<name>.csv`` (one row per layout x world size),
``<name>.md`` (the paper's form: rows world size, columns layout; cells the max value and
throughput, then the model-vs-measured table), ``<name>_trials.csv`` (every trial) and
PNG plots (max length or batch vs devices; throughput vs length).
"""
from __future__ import annotations

import argparse
import csv
import ctypes
import datetime
import multiprocessing as mp
import os
import queue
import resource
import shutil
import sys
import tempfile
import time
import traceback
from dataclasses import dataclass, field
from typing import Callable, Optional

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if REPO not in sys.path:
    sys.path.insert(0, REPO)

from megatron_sp import memory_model as mm  # noqa: E402  (pure python: imports no torch)

MiB = 2 ** 20

# --- model presets (flags as pretrain_gpt.py takes them) ---------------------------------
PRESETS = {
    # activations dominate: 4 layers, hidden 128, rope (no position table growing with length)
    "tiny": "--num-layers 4 --hidden-size 128 --num-attention-heads 8 --ffn-hidden-size 512 "
            "--vocab-size 1000 --position-embedding-type rope",
    "small": "--num-layers 8 --hidden-size 256 --num-attention-heads 8 --vocab-size 8000 "
             "--position-embedding-type rope",
    "gpt-345m": "--num-layers 24 --hidden-size 1024 --num-attention-heads 16 --vocab-size 50257 "
                "--position-embedding-type rope",
    "gpt-1.3b": "--num-layers 24 --hidden-size 2048 --num-attention-heads 16 --vocab-size 50257 "
                "--position-embedding-type rope",
    "gpt-7b": "--num-layers 32 --hidden-size 4096 --num-attention-heads 32 --ffn-hidden-size 11008 --swiglu "
              "--normalization RMSNorm --disable-bias-linear --untie-embeddings-and-output-weights "
              "--vocab-size 32000 --position-embedding-type rope",
}
COMMON = ("--mock-data --tokenizer-type NullTokenizer --lr 1e-4 --min-lr 1e-5 --lr-decay-style constant "
          "--hidden-dropout 0.0 --attention-dropout 0.0 --log-interval 1000000 --eval-iters 0 --eval-interval 0")


# --- layouts ---------------------------------------------------------------------------
@dataclass(frozen=True)
class Layout:
    name: str
    tp: int
    cp: int
    dp: int
    mode: str = "p2p"
    sp: bool = False
    ulysses: int = 1  # Ulysses degree U (a2a: U = CP; a2a+p2p: hierarchical U)

    @property
    def ring(self) -> int:
        return self.cp // self.ulysses

    def flags(self) -> list:
        f = ["--tensor-model-parallel-size", str(self.tp), "--context-parallel-size", str(self.cp),
             "--cp-comm-type", self.mode]
        if self.sp:
            f.append("--sequence-parallel")
        if self.mode == "a2a+p2p" and self.cp > 1:
            f += ["--hierarchical-context-parallel-sizes", str(self.ulysses), str(self.ring)]
        return f

    def seq_granularity(self) -> int:
        """Sequence lengths must be multiples of this (zigzag 2P, else P; x TP under SP)."""
        # causal zigzag: 2P (the loop checks it even at P = 1, so every P = 1 layout uses 2)
        g = 2 * self.cp if (self.mode in ("p2p", "a2a+p2p") or self.cp == 1) else self.cp
        return g * self.tp if self.sp else g

    def key(self) -> tuple:
        """Layouts with the same key run the same program (e.g. every layout at world 1)."""
        mode = self.mode if self.cp > 1 else "-"
        if mode == "a2a+p2p" and self.ulysses in (1, self.cp):  # a pure ring or pure Ulysses in disguise
            mode = "p2p" if self.ulysses == 1 else "a2a"
        return (self.tp, self.cp, self.dp, mode, self.sp and self.tp > 1, self.ulysses if self.cp > 1 else 1)

    def describe(self) -> str:
        parts = [f"TP{self.tp}" + ("+SP" if self.sp else "")]
        if self.cp > 1:
            parts.append(f"CP{self.cp} {self.mode}" + (f" (U{self.ulysses}xR{self.ring})" if self.mode == "a2a+p2p"
                                                        else ""))
        if self.dp > 1:
            parts.append(f"DP{self.dp}")
        return " x ".join(parts)


def make_layout(name: str, world: int) -> Optional[Layout]:
    """The layout called ``name`` at ``world`` ranks, or None where it does not exist."""
    rest, tp, sp = name, 1, False
    if rest == "dp":
        return Layout(name, 1, 1, world)
    if rest in ("tp", "tp+sp"):
        return Layout(name, world, 1, 1, "p2p", rest == "tp+sp")
    if rest.startswith("tp") and rest[2:3].isdigit():  # mixes: tp2+p2p, tp2+sp+a2a ...
        head, _, rest = rest.partition("+")
        tp = int(head[2:])
        if rest.startswith("sp+"):
            sp, rest = True, rest[3:]
    if rest not in ("rsa", "p2p", "a2a", "a2a+p2p"):
        raise ValueError(f"unknown layout {name!r}: use tp, tp+sp, rsa, p2p, a2a, a2a+p2p, tpN+<cp mode>, "
                         f"tpN+sp+<cp mode>, dp")
    if world % tp or (tp > 1 and world // tp < 2):
        return None
    cp = world // tp
    u = {"a2a": cp, "a2a+p2p": 2 if cp >= 4 else 1}.get(rest, 1)
    return Layout(name, tp, cp, 1, rest, sp and tp > 1, u)


# --- memory measurement inside a rank ----------------------------------------------------
def proc_status_bytes(*keys) -> dict:
    """Selected ``/proc/self/status`` fields in bytes (VmRSS, VmHWM, VmData ...)."""
    out = {}
    with open("/proc/self/status") as f:
        for line in f:
            k, _, v = line.partition(":")
            if k in keys:
                out[k] = int(v.split()[0]) * 1024
    return out


def configure_malloc() -> None:
    """Make RSS follow live tensor bytes: blocks >= 64 KiB get their own mmap, returned on free."""
    try:
        libc = ctypes.CDLL("libc.so.6")
    except OSError:
        return
    M_TRIM_THRESHOLD, M_MMAP_THRESHOLD, M_ARENA_MAX = -1, -3, -8
    libc.mallopt(M_MMAP_THRESHOLD, 64 * 1024)
    libc.mallopt(M_TRIM_THRESHOLD, 128 * 1024)
    libc.mallopt(M_ARENA_MAX, 2)


class PeakMeter:
    """Peak memory above a baseline: RSS high-water mark on CPU, allocator statistics on CUDA."""

    def __init__(self, device):
        self.device = device

    def start(self) -> int:
        import torch
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
            torch.cuda.reset_peak_memory_stats(self.device)
            self.base = torch.cuda.memory_allocated(self.device)
        else:
            with open("/proc/self/clear_refs", "w") as f:
                f.write("5")  # reset VmHWM to the current RSS
            self.base = proc_status_bytes("VmRSS")["VmRSS"]
        return self.base

    def peak(self) -> int:
        import torch
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
            return torch.cuda.max_memory_allocated(self.device) - self.base
        return proc_status_bytes("VmHWM")["VmHWM"] - self.base


def _is_oom(exc: BaseException) -> bool:
    text = f"{type(exc).__name__}: {exc}".lower()
    return isinstance(exc, MemoryError) or "out of memory" in text or "can't allocate memory" in text \
        or "cannot allocate memory" in text or "outofmemory" in text


def _trial_rank(rank, world, store_path, argv, budget_bytes, steps, threads, backend, out):
    """One rank of one trial: build, baseline, ``steps`` training steps, report the peak."""
    result = {"rank": rank, "status": "error"}
    try:
        if backend == "gloo":
            configure_malloc()
        import torch
        import torch.distributed as dist
        torch.set_num_threads(threads)
        os.environ.update(WORLD_SIZE=str(world), RANK=str(rank), LOCAL_RANK=str(rank))
        if backend == "nccl":
            torch.cuda.set_device(rank % torch.cuda.device_count())
        store = dist.FileStore(store_path, world)
        dist.init_process_group(backend, store=store, rank=rank, world_size=world,
                                timeout=datetime.timedelta(seconds=600))
        from megatron_sp.training.arguments import build_parser
        from megatron_sp.training.logging import flops_per_iteration
        from megatron_sp.training.batches import micro_batches
        from megatron_sp.training.loop import setup
        from megatron_sp.training.step import train_step
        args = build_parser().parse_args(argv)
        ctx = setup(args)
        batches = [micro_batches(ctx.datasets[0], i * args.global_batch_size, args, ctx.mesh, ctx.device)
                   for i in range(steps)]
        import gc
        if ctx.device.type == "cpu" and budget_bytes:  # safety net for the shared host (see module doc)
            data = proc_status_bytes("VmData")["VmData"]
            limit = data + 2 * budget_bytes + 512 * MiB
            resource.setrlimit(resource.RLIMIT_DATA, (limit, resource.getrlimit(resource.RLIMIT_DATA)[1]))
        meter = PeakMeter(ctx.device)
        for i in range(steps):
            if i == steps - 1:  # the measured step: baseline after the warm-up steps
                gc.collect()
                dist.barrier()
                base = meter.start()
                if ctx.device.type == "cuda" and budget_bytes:
                    total = torch.cuda.get_device_properties(ctx.device).total_memory
                    torch.cuda.set_per_process_memory_fraction(min(1.0, (base + budget_bytes) / total), ctx.device)
            dist.barrier()
            t0 = time.perf_counter()
            stats = train_step(ctx, batches[i])
            if ctx.device.type == "cuda":
                torch.cuda.synchronize(ctx.device)
            step_time = time.perf_counter() - t0
        peak = meter.peak()
        step_time = torch.tensor([step_time], dtype=torch.float64)
        peak_t = torch.tensor([float(peak)], dtype=torch.float64)
        if ctx.device.type == "cuda":
            step_time, peak_t = step_time.cuda(), peak_t.cuda()
        dist.all_reduce(step_time, op=dist.ReduceOp.MAX)  # the slowest rank sets the pace
        dist.all_reduce(peak_t, op=dist.ReduceOp.MAX)
        result.update(status="ok", peak_bytes=int(peak_t.item()), rank_peak_bytes=int(peak), baseline_bytes=base,
                      step_time=float(step_time.item()), loss=stats["loss"],
                      flops=flops_per_iteration(args, ctx.model.cfg.vocab_size),
                      tokens=args.global_batch_size * args.seq_length,
                      params_local=sum(p.numel() for p in ctx.model.parameters()))
        dist.destroy_process_group()
    except BaseException as exc:  # noqa: BLE001 - every failure is a recorded trial outcome
        result.update(status="oom" if _is_oom(exc) else "error",
                      error=f"{type(exc).__name__}: {str(exc).strip().splitlines()[0][:300] if str(exc) else ''}",
                      traceback=traceback.format_exc()[-2000:])
    out.put(result)
    out.close()
    out.join_thread()  # the result must leave before the hard exit
    sys.stdout.flush()
    os._exit(0)  # skip interpreter teardown (gloo threads of a failed peer may hang it)


class TrialError(RuntimeError):
    """A trial failed for a reason other than memory: the search of that layout stops."""


@dataclass
class TrialResult:
    status: str  # ok (fits) | over (ran, peak > budget) | oom | error | timeout
    value: int = 0
    peak_bytes: int = 0
    baseline_bytes: int = 0
    step_time: float = 0.0
    tokens_per_s: float = 0.0
    tflops_per_device: float = 0.0
    loss: float = float("nan")
    wall_s: float = 0.0
    error: str = ""

    @property
    def fits(self) -> bool:
        return self.status == "ok"


def _mp_context(device: str):
    """spawn on GPU (no CUDA context may be forked); on CPU a forkserver that imported
    torch and the loop once but never ran an op: forking a process whose OpenMP pool is
    alive deadlocks children that use more than one thread."""
    if device == "cuda":
        return mp.get_context("spawn")
    ctx = mp.get_context("forkserver")
    ctx.set_forkserver_preload(["torch", "megatron_sp.training.loop"])
    return ctx


def run_trial(argv: list, world: int, budget_bytes: Optional[int], steps: int = 2, timeout: float = 600.0,
              device: str = "cpu", threads: Optional[int] = None) -> TrialResult:
    """Run one training trial in ``world`` fresh processes; never raises for a failed trial."""
    backend = "nccl" if device == "cuda" else "gloo"
    ctxmp = _mp_context(device)
    threads = threads or max(1, (os.cpu_count() or 1) // world)
    tmp = tempfile.mkdtemp(prefix="msp_scaling_")
    out = ctxmp.Queue()
    t0 = time.monotonic()
    procs = [ctxmp.Process(target=_trial_rank, args=(r, world, os.path.join(tmp, "store"), argv, budget_bytes,
                                                      steps, threads, backend, out), daemon=True)
             for r in range(world)]
    for p in procs:
        p.start()
    results, deadline = [], t0 + timeout
    try:
        while len(results) < world:
            left = deadline - time.monotonic()
            if any(r["status"] != "ok" for r in results):
                left = min(left, 2.0)  # a peer failed: the others are stuck in a collective
            if left <= 0:
                break
            try:
                results.append(out.get(timeout=min(left, 1.0)))
            except queue.Empty:
                if not any(p.is_alive() for p in procs) and out.empty():
                    break
    finally:
        for p in procs:
            p.join(timeout=0.2)
            if p.is_alive():
                p.kill()
                p.join()
        shutil.rmtree(tmp, ignore_errors=True)
    wall = time.monotonic() - t0
    bad = [r for r in results if r["status"] != "ok"]
    if bad:
        first = next((r for r in bad if r["status"] == "oom"), bad[0])
        return TrialResult(first["status"], wall_s=wall, error=first.get("error", ""))
    if len(results) < world:
        codes = [p.exitcode for p in procs]
        status = "timeout" if time.monotonic() >= deadline else ("oom" if -9 in codes else "error")
        return TrialResult(status, wall_s=wall, error=f"{world - len(results)} ranks gave no result (exit {codes})")
    r0 = results[0]
    tokens_per_s = r0["tokens"] / r0["step_time"]
    res = TrialResult("ok", peak_bytes=r0["peak_bytes"], baseline_bytes=max(r["baseline_bytes"] for r in results),
                      step_time=r0["step_time"], tokens_per_s=tokens_per_s,
                      tflops_per_device=r0["flops"] / r0["step_time"] / world / 1e12, loss=r0["loss"], wall_s=wall)
    if budget_bytes and res.peak_bytes > budget_bytes:
        res.status = "over"
    return res


# --- search ----------------------------------------------------------------------------
@dataclass
class SearchResult:
    value: int  # the largest value that fits (0: none)
    result: Optional[object]
    trials: list = field(default_factory=list)  # (value, result) in order
    layout_name: str = ""


def search_max(trial: Callable[[int], object], granularity: int, start: int, limit: int,
               rel_tol: float = 0.02, fits: Callable[[object], bool] = lambda r: r.fits,
               growth: float = 2.0) -> SearchResult:
    """Largest multiple of ``granularity`` in ``[granularity, limit]`` for which ``trial`` fits.

    Exponential steps (x ``growth`` up, / ``growth`` down) from ``start`` bracket the answer,
    then bisection on multiples of ``granularity`` narrows it to within ``rel_tol`` (relative)
    or one granule.  Assumes fitting is monotone (a smaller value fits if a larger one does);
    every trial is recorded.
    """
    g = granularity
    limit = limit // g * g
    if limit < g:
        return SearchResult(0, None, [])
    cache, trials = {}, []

    def run(v):
        if v not in cache:
            cache[v] = trial(v)
            trials.append((v, cache[v]))
        return fits(cache[v])

    v = min(max(g, start // g * g), limit)
    lo, hi = 0, None  # lo fits (0: nothing yet), hi fails (None: nothing yet)
    if run(v):
        lo = v
        while hi is None and lo < limit:
            v = min(limit, max(lo + g, int(lo * growth) // g * g))
            if run(v):
                lo = v
            else:
                hi = v
    else:
        hi = v
        while lo == 0 and hi > g:
            v = max(g, min(hi - g, int(hi / growth) // g * g))
            if run(v):
                lo = v
            else:
                hi = v
    if hi is not None and lo > 0:
        while hi - lo > g and (hi - lo) > rel_tol * lo:
            mid = (lo + hi) // 2 // g * g
            if mid <= lo:
                mid = lo + g
            if mid >= hi:
                break
            if run(mid):
                lo = mid
            else:
                hi = mid
    return SearchResult(lo, cache.get(lo), trials)


# --- experiment driver -------------------------------------------------------------------
def model_flags(args) -> str:
    return f"{PRESETS[args.model] if args.model else ''} {args.model_args or ''}".strip()


def build_argv(args, layout: Layout, seq: int, mbs: int) -> list:
    argv = f"{model_flags(args)} {COMMON}".split() + layout.flags()
    argv += ["--seq-length", str(seq), "--micro-batch-size", str(mbs),
             "--global-batch-size", str(mbs * layout.dp), "--train-iters", str(args.steps), "--seed", "1234"]
    if args.bf16:
        argv.append("--bf16")
    if args.recompute_granularity:
        argv += ["--recompute-granularity", args.recompute_granularity]
        if args.recompute_granularity == "full":
            argv += ["--recompute-method", "uniform", "--recompute-num-layers", "1"]
    return argv


def model_config(args) -> mm.ModelSpec:
    return mm.ModelSpec.from_flags(model_flags(args).split(), bf16=args.bf16,
                                   recompute=args.recompute_granularity)


def model_layout(layout: Layout) -> mm.LayoutSpec:
    return mm.LayoutSpec(tp=layout.tp, cp=layout.cp, dp=layout.dp, mode=layout.mode, sp=layout.sp,
                         ulysses=layout.ulysses)


def _fmt_mb(b):
    return f"{b / MiB:.1f}"


def run_experiment(args) -> list:
    """Every (world, layout) search; returns the summary rows and writes the outputs."""
    budget = int(args.memory_budget_gb * 2 ** 30) if args.memory_budget_gb else None
    device = args.device
    spec = model_config(args)
    rows, all_trials, done = [], [], {}
    os.makedirs(args.out_dir, exist_ok=True)
    started = time.monotonic()
    combos = [(w, name, make_layout(name, w)) for w in args.worlds for name in args.layouts]
    combos = [c for c in combos if c[2] is not None]
    print(f"[scaling] {args.experiment}: model {args.model or ''} {args.model_args or ''}| budget "
          f"{'whole device' if budget is None else _fmt_mb(budget) + ' MiB per rank (peak above baseline)'} | "
          f"{len(combos)} searches | device {device}", flush=True)
    for n, (world, name, layout) in enumerate(combos, 1):
        lay = model_layout(layout)
        if args.experiment == "max-seq":
            g = layout.seq_granularity()
            predicted = mm.max_seq_length(spec, lay, args.micro_batch_size, budget, g) if budget else None
            start = args.start or (int(predicted * 0.95) if predicted else 1024 * layout.cp)
            limit = args.max_value or 1 << 22

            def trial(v, layout=layout):
                return run_trial(build_argv(args, layout, v, args.micro_batch_size), world, budget, args.steps,
                                 args.trial_timeout, device)
        else:
            g = 1
            predicted = mm.max_micro_batch(spec, lay, args.seq_length, budget) if budget else None
            start = args.start or (max(1, int(predicted * 0.9)) if predicted else 1)
            limit = args.max_value or 4096

            def trial(v, layout=layout):
                return run_trial(build_argv(args, layout, args.seq_length, v), world, budget, args.steps,
                                 args.trial_timeout, device)

        def traced(v, layout=layout, world=world, trial=trial):
            seq = v if args.experiment == "max-seq" else args.seq_length
            mbs = args.micro_batch_size if args.experiment == "max-seq" else v
            est = mm.estimate(spec, lay, seq, mbs)
            r = trial(v)
            r.value = v
            all_trials.append(dict(world=world, layout=layout.name, seq_length=seq, micro_batch_size=mbs,
                                   status=r.status, peak_mb=round(r.peak_bytes / MiB, 2),
                                   model_peak_mb=round(est.step_peak / MiB, 2),
                                   step_time_s=round(r.step_time, 4), tokens_per_s=round(r.tokens_per_s, 1),
                                   tflops_per_device=round(r.tflops_per_device, 5), wall_s=round(r.wall_s, 1),
                                   error=r.error))
            print(f"  [{time.monotonic() - started:6.0f}s] W={world} {layout.name:<10} "
                  f"{'seq' if args.experiment == 'max-seq' else 'mbs'}={v:<7d} {r.status:<7} "
                  f"peak {_fmt_mb(r.peak_bytes):>7} MiB (model {_fmt_mb(est.step_peak):>7})"
                  + (f"  {r.tokens_per_s:9.1f} tok/s  {r.step_time:6.2f} s/step" if r.fits else "")
                  + (f"  {r.error[:100]}" if r.error else ""), flush=True)
            if r.status in ("error", "timeout"):
                raise TrialError(f"{r.status}: {r.error}")
            return r

        print(f"[{n}/{len(combos)}] world {world}, {layout.name} = {layout.describe()}: granularity {g}, "
              f"model predicts {predicted if predicted is not None else '-'}", flush=True)
        seeded = args.start is None and predicted
        error = ""
        if layout.key() in done:
            sr = done[layout.key()]
            print(f"  same program as {sr.layout_name} at world {world}: reusing its result", flush=True)
        else:
            try:
                sr = search_max(traced, g, start, limit, args.rel_tol, growth=args.growth if seeded else 2.0)
            except TrialError as exc:
                sr, error = SearchResult(0, None, []), str(exc)[:300]
            sr.layout_name = layout.name
            done[layout.key()] = sr
        r = sr.result
        value = sr.value
        seq = value if args.experiment == "max-seq" else args.seq_length
        mbs = args.micro_batch_size if args.experiment == "max-seq" else value
        est = mm.estimate(spec, lay, seq, mbs) if value else None
        rows.append(dict(
            experiment=args.experiment, world=world, layout=layout.name, tp=layout.tp, cp=layout.cp, dp=layout.dp,
            mode=layout.mode if layout.cp > 1 else "-", sp=int(layout.sp), ulysses=layout.ulysses,
            max_value=value, model_max_value=predicted if predicted is not None else "",
            model_vs_measured=(round(predicted / value, 3) if (predicted and value) else ""),
            seq_length=seq, micro_batch_size=mbs,
            peak_mb=round(r.peak_bytes / MiB, 1) if r else "", model_peak_mb=round(est.step_peak / MiB, 1) if est else "",
            model_params_mb=round(est.params / MiB, 1) if est else "",
            model_activations_mb=round(est.activations / MiB, 1) if est else "",
            model_comm_mb_per_step=round(est.comm_bytes / MiB, 1) if est else "",
            tokens_per_s=round(r.tokens_per_s, 1) if r else "", tflops_per_device=round(r.tflops_per_device, 5) if r else "",
            step_time_s=round(r.step_time, 3) if r else "", trials=len(sr.trials), error=error))
        print(f"  => max {'seq-length' if args.experiment == 'max-seq' else 'micro-batch'} {value} "
              f"(model {predicted}); {rows[-1]['tokens_per_s']} tok/s; model comm "
              f"{rows[-1]['model_comm_mb_per_step']} MiB/step/rank", flush=True)
        write_outputs(args, rows, all_trials)  # partial results survive an interrupted run
    print(f"[scaling] done in {time.monotonic() - started:.0f}s; outputs in {args.out_dir}/{args.name}.*", flush=True)
    return rows


def _csv(path, rows):
    if not rows:
        return
    with open(path, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(rows[0].keys()))
        w.writeheader()
        w.writerows(rows)


def _human(v):
    if not isinstance(v, (int, float)) or v == "":
        return str(v)
    return f"{v / 1024:.1f}K" if v >= 4096 and v % 1024 else (f"{v // 1024}K" if v >= 4096 else str(v))


def markdown_table(args, rows) -> str:
    layouts = [l for l in args.layouts if any(r["layout"] == l for r in rows)]
    worlds = sorted({r["world"] for r in rows})
    cell = {(r["world"], r["layout"]): r for r in rows}
    what = "max sequence length" if args.experiment == "max-seq" else "max micro-batch size"
    fixed = (f"micro-batch {args.micro_batch_size}" if args.experiment == "max-seq"
             else f"sequence length {args.seq_length}")
    budget = f"{args.memory_budget_gb * 1024:.0f} MiB per rank" if args.memory_budget_gb else "whole device"
    lines = [f"**{what}** ({fixed}, budget {budget}, model `{args.model or ''} {args.model_args or ''}`"
             f"{', bf16' if args.bf16 else ', fp32'}); cell: max value / tokens per s / TFLOP/s per device", "",
             "| world | " + " | ".join(layouts) + " |", "|---:|" + "---:|" * len(layouts)]
    for w in worlds:
        cells = []
        for l in layouts:
            r = cell.get((w, l))
            if r is None:
                cells.append("n/a")
            elif r.get("error"):
                cells.append("error")
            elif not r["max_value"]:
                cells.append("none fits")
            else:
                cells.append(f"**{r['max_value']}** / {r['tokens_per_s']:.0f} / {r['tflops_per_device']:.4f}")
        lines.append(f"| {w} | " + " | ".join(cells) + " |")
    base = {l: cell.get((1, l)) for l in layouts}
    if any(b and b["max_value"] for b in base.values()):
        lines += ["", f"Ratio to world 1 ({what}):", "", "| world | " + " | ".join(layouts) + " |",
                  "|---:|" + "---:|" * len(layouts)]
        for w in worlds:
            cells = []
            for l in layouts:
                r, b = cell.get((w, l)), base[l]
                cells.append(f"{r['max_value'] / b['max_value']:.2f}x" if r and b and b["max_value"] and r["max_value"]
                             else "-")
            lines.append(f"| {w} | " + " | ".join(cells) + " |")
    lines += ["", "Memory model vs measurement (max value: model / measured; step peak above baseline, MiB: "
              "model / measured; model communication per step and rank, MiB):", "",
              "| world | layout | max (model / measured) | peak MiB (model / measured) | comm MiB/step | trials |",
              "|---:|---|---:|---:|---:|---:|"]
    for r in rows:
        lines.append(f"| {r['world']} | {r['layout']} | {r['model_max_value']} / {r['max_value']}"
                     f" ({r['model_vs_measured']}) | {r['model_peak_mb']} / {r['peak_mb']} | "
                     f"{r['model_comm_mb_per_step']} | {r['trials']} |")
    return "\n".join(lines) + "\n"


def plot(args, rows, trials) -> list:
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("[scaling] matplotlib is not installed (pip install -e .[dev]); skipping plots", flush=True)
        return []
    paths = []
    what = "max sequence length" if args.experiment == "max-seq" else "max micro-batch size"
    fig, ax = plt.subplots(figsize=(6, 4))
    for l in args.layouts:
        pts = sorted((r["world"], r["max_value"]) for r in rows if r["layout"] == l and r["max_value"])
        if pts:
            ax.plot(*zip(*pts), marker="o", label=l)
    ax.set_xscale("log", base=2)
    ax.set_yscale("log", base=2)
    ax.set_xlabel("devices (world size)")
    ax.set_ylabel(what)
    ax.set_title(f"{what} vs devices")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=8)
    p = os.path.join(args.out_dir, f"{args.name}_vs_devices.png")
    fig.tight_layout()
    fig.savefig(p, dpi=110)
    plt.close(fig)
    paths.append(p)
    if args.experiment == "max-seq":
        fig, ax = plt.subplots(figsize=(6, 4))
        for w in sorted({t["world"] for t in trials}):
            for l in args.layouts:
                pts = sorted((t["seq_length"], t["tokens_per_s"]) for t in trials
                             if t["world"] == w and t["layout"] == l and t["status"] == "ok")
                if len(pts) >= 1 and (w > 1 or l == args.layouts[0]):
                    ax.plot(*zip(*pts), marker=".", label=f"{l} W={w}")
        ax.set_xscale("log", base=2)
        ax.set_xlabel("sequence length")
        ax.set_ylabel("tokens / s (whole job)")
        ax.set_title("throughput vs sequence length (trials that fit)")
        ax.grid(True, which="both", alpha=0.3)
        ax.legend(fontsize=6, ncol=2)
        p = os.path.join(args.out_dir, f"{args.name}_throughput_vs_length.png")
        fig.tight_layout()
        fig.savefig(p, dpi=110)
        plt.close(fig)
        paths.append(p)
    return paths


def write_outputs(args, rows, trials, final: bool = False) -> None:
    _csv(os.path.join(args.out_dir, f"{args.name}.csv"), rows)
    _csv(os.path.join(args.out_dir, f"{args.name}_trials.csv"), trials)
    with open(os.path.join(args.out_dir, f"{args.name}.md"), "w") as f:
        f.write(f"# {args.name}\n\nCommand: `{' '.join(['python', 'tools/scaling_experiment.py'] + args.argv)}`\n\n")
        f.write(markdown_table(args, rows))
    if final:
        plot(args, rows, trials)


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], allow_abbrev=False)
    p.add_argument("--experiment", choices=["max-seq", "max-batch"], default="max-seq")
    p.add_argument("--model", choices=sorted(PRESETS), default="tiny", help="model preset (flags below)")
    p.add_argument("--model-args", default=None, help="extra pretrain_gpt.py model flags, added after the preset")
    p.add_argument("--worlds", type=int, nargs="+", default=[1, 2, 4])
    p.add_argument("--layouts", nargs="+", default=["tp", "tp+sp", "rsa", "p2p", "a2a", "a2a+p2p"])
    p.add_argument("--memory-budget-gb", type=float, default=None,
                   help="per-rank budget for the step's peak above the post-setup baseline (required on CPU)")
    p.add_argument("--micro-batch-size", type=int, default=1, help="fixed micro-batch for max-seq")
    p.add_argument("--seq-length", type=int, default=2048, help="fixed sequence length for max-batch")
    p.add_argument("--bf16", action="store_true")
    p.add_argument("--recompute-granularity", choices=["full", "selective"], default=None)
    p.add_argument("--steps", type=int, default=2, help="training steps per trial (peak over all, last timed)")
    p.add_argument("--start", type=int, default=None, help="first value tried (default: the model's prediction)")
    p.add_argument("--max-value", type=int, default=None, help="upper limit of the search")
    p.add_argument("--rel-tol", type=float, default=0.03, help="stop bisecting at this relative bracket")
    p.add_argument("--growth", type=float, default=1.15,
                   help="step factor of the bracketing phase when it starts from the model (else 2)")
    p.add_argument("--trial-timeout", type=float, default=600.0)
    p.add_argument("--device", choices=["cpu", "cuda"], default=None, help="default: cuda when available")
    p.add_argument("--out-dir", default="docs/scaling")
    p.add_argument("--name", default=None, help="output file stem (default: the experiment)")
    args = p.parse_args(argv)
    args.argv = list(argv if argv is not None else sys.argv[1:])
    if args.device is None:
        args.device = "cuda" if _cuda_available() else "cpu"
    if args.device == "cpu" and not args.memory_budget_gb:
        p.error("--memory-budget-gb is required on CPU (the per-rank budget for the step's peak)")
    args.name = args.name or args.experiment
    return args


def _cuda_available() -> bool:
    os.environ.setdefault("PYTORCH_NVML_BASED_CUDA_CHECK", "1")  # no CUDA context before forking
    import torch
    return torch.cuda.is_available()


def main(argv=None) -> int:
    args = parse_args(argv)
    rows = run_experiment(args)
    write_outputs(args, rows, _read_trials(args), final=True)
    print(open(os.path.join(args.out_dir, f"{args.name}.md")).read())
    return 0


def _read_trials(args) -> list:
    path = os.path.join(args.out_dir, f"{args.name}_trials.csv")
    if not os.path.exists(path):
        return []
    with open(path) as f:
        rows = list(csv.DictReader(f))
    for t in rows:
        t["world"], t["seq_length"] = int(t["world"]), int(t["seq_length"])
        t["tokens_per_s"] = float(t["tokens_per_s"])
    return rows


if __name__ == "__main__":
    sys.exit(main())
