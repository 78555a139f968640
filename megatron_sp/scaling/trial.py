"""One trial of a scaling experiment: a real training step in fresh processes, and its peak memory.

A rank builds the model, optimizer and batches (``loop.setup``), runs a warm-up step
(Adam state, kernels; under DDP, which reallocates its gradient buckets at the second forward,
one more before it on the smallest batch), takes its baseline, and runs the measured step; the number
compared with the budget is the step's peak above the baseline (CPU: the kernel's
resident high-water mark, reset through ``/proc/self/clear_refs``; GPU:
``torch.cuda.max_memory_allocated``).  Trials never raise: an out-of-memory, an error
or a timeout is an outcome.  See tools/scaling_experiment.py for the full story.
"""
from __future__ import annotations

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
from dataclasses import dataclass
from typing import Optional

MiB = 2 ** 20


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
    """Make RSS follow live tensor bytes: blocks >= 16 KiB get their own mmap, returned on free."""
    try:
        libc = ctypes.CDLL("libc.so.6")
    except OSError:
        return
    M_TRIM_THRESHOLD, M_MMAP_THRESHOLD, M_ARENA_MAX = -1, -3, -8
    libc.mallopt(M_MMAP_THRESHOLD, 16 * 1024)
    libc.mallopt(M_TRIM_THRESHOLD, 128 * 1024)
    libc.mallopt(M_ARENA_MAX, 2)


def release_free_memory() -> None:
    """Give malloc's free memory back to the OS (``malloc_trim``): a block the step then takes from
    malloc's free lists (every block under the 16 KiB mmap threshold) touches fresh pages and counts."""
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):
        pass


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
            release_free_memory()
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


def _smallest_batch(ctx, args) -> list:
    """The smallest global batch this layout can run: one sequence of 2 x CP x TP tokens per DP rank.

    Under DDP the first warm-up step runs on it: DDP rebuilds its gradient buckets (in the order
    the gradients arrived) at the second forward, which does not depend on the batch.  The
    last warm-up step still runs on the measured batch, so the measured step finds a steady
    process (the allocator's free lists and the kernels' caches as the step before left them).
    """
    from megatron_sp.training.batches import micro_batches
    if not args.mock_data:  # the scaling tool's data; otherwise warm up on a measured-size batch
        return micro_batches(ctx.datasets[0], 0, args, ctx.mesh, ctx.device)
    import copy

    import torch

    from megatron_sp.data.mock_dataset import sample_dict
    small = copy.copy(args)
    small.seq_length = 2 * args.context_parallel_size * args.tensor_model_parallel_size
    small.micro_batch_size = 1  # as many micro-batches as the step (a pipeline schedule expects them)
    small.global_batch_size = ctx.mesh.dp_size * args.num_micro_batches
    g = torch.Generator().manual_seed(args.seed)  # tiny samples (any ids: a warm-up)
    data = [sample_dict(torch.randint(0, ctx.tokenizer.vocab_size, (small.seq_length + 1,), generator=g))
            for _ in range(small.global_batch_size)]
    return micro_batches(data, 0, small, ctx.mesh, ctx.device)


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
        # DDP reallocates its gradient buckets at the second forward: one more warm-up first, on the
        # smallest batch (not under PP: the stages' buffers are shaped for --seq-length)
        if ctx.ddp_model is not ctx.model and not getattr(ctx.ddp_model, "is_pipeline", False):
            batches.insert(0, _smallest_batch(ctx, args))
            steps += 1
        import gc
        if ctx.device.type == "cpu" and budget_bytes:  # safety net for the shared host (see module doc)
            data = proc_status_bytes("VmData")["VmData"]
            limit = data + 2 * budget_bytes + 512 * MiB
            resource.setrlimit(resource.RLIMIT_DATA, (limit, resource.getrlimit(resource.RLIMIT_DATA)[1]))
        meter = PeakMeter(ctx.device)
        for i in range(steps):
            if i == steps - 1:  # the measured step: baseline after the warm-up steps
                ctx.optimizer.zero_grad()  # the previous step's gradients (DDP's buckets stay) are not in it
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
        usage = resource.getrusage(resource.RUSAGE_SELF)
        result.update(status="ok", peak_bytes=int(peak_t.item()), rank_peak_bytes=int(peak), baseline_bytes=base,
                      cpu_s=usage.ru_utime + usage.ru_stime,
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
    cpu_s: float = 0.0  # CPU time of all ranks (set-up included): the trial's cost on an idle machine

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
    ctx.set_forkserver_preload(["torch", "torch._dynamo", "megatron_sp.training.loop", "megatron_sp.data.tokenizers"])
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
                      tflops_per_device=r0["flops"] / r0["step_time"] / world / 1e12, loss=r0["loss"], wall_s=wall,
                      cpu_s=sum(r.get("cpu_s", 0.0) for r in results))
    if budget_bytes and res.peak_bytes > budget_bytes:
        res.status = "over"
    return res
