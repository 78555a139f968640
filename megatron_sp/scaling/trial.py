"""One trial of a scaling experiment: a real training step in its own processes, and its peak memory.

A rank builds the model, optimizer and batches (``loop.setup``), runs a warm-up step
(Adam state, kernels; under DDP, which reallocates its gradient buckets at the second forward,
one more before it on the smallest batch), takes its baseline, and runs the measured step; the number
compared with the budget is the step's peak above the baseline (CPU: the kernel's
resident high-water mark, reset through ``/proc/self/clear_refs``; GPU:
``torch.cuda.max_memory_allocated``).  Trials never raise: an out-of-memory, an error
or a timeout is an outcome.  The trials of one search share their ranks
(:class:`TrialSession`): only the warm-up at the trial's size and the measured step run again.
See tools/scaling_experiment.py for the full story.
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


def _random_batch(ctx, args, seq_length: int, micro_batch: int) -> list:
    """This rank's micro-batches of a global batch of random-token sequences (the scaling tool's
    --mock-data: the ids do not change the memory) of ``seq_length`` at ``micro_batch``."""
    import copy

    import torch

    from megatron_sp.data.mock_dataset import sample_dict
    from megatron_sp.training.batches import micro_batches
    shaped = copy.copy(args)
    shaped.seq_length, shaped.micro_batch_size = seq_length, micro_batch
    shaped.global_batch_size = ctx.mesh.dp_size * micro_batch * args.num_micro_batches
    g = torch.Generator().manual_seed(args.seed)
    data = [sample_dict(torch.randint(0, ctx.tokenizer.vocab_size, (seq_length + 1,), generator=g))
            for _ in range(shaped.global_batch_size)]
    return micro_batches(data, 0, shaped, ctx.mesh, ctx.device)


def _trial_batches(ctx, args, steps: int, first: bool) -> list:
    """The warm-up and measured batches of one trial: ``steps`` at the measured size, and before
    them, in a session's first trial under DDP, one of the smallest shape (one sequence of
    2 x CP x TP tokens per DP rank): DDP rebuilds its gradient buckets (in the order the
    gradients arrived) at the second forward, whatever the batch.  The last warm-up step runs at
    the measured size, so the measured step finds a steady process (the allocator and the
    kernels' caches as a step of that shape left them; the first step at a new shape peaks
    higher)."""
    from megatron_sp.training.batches import micro_batches
    if args.mock_data:
        batches = [_random_batch(ctx, args, args.seq_length, args.micro_batch_size) for _ in range(steps)]
    else:
        batches = [micro_batches(ctx.datasets[0], i * args.global_batch_size, args, ctx.mesh, ctx.device)
                   for i in range(steps)]
    if first and not ctx.parallel.pipelined and ctx.model_parts[0] is not ctx.model:  # DDP-wrapped
        small = 2 * args.context_parallel_size * args.tensor_model_parallel_size
        batches.insert(0, _random_batch(ctx, args, small, 1) if args.mock_data else batches[0])
    return batches


_SHAPE_FLAGS = ("--seq-length", "--micro-batch-size", "--global-batch-size")


def _without_shape(argv: list) -> list:
    out, skip = [], False
    for a in argv:
        if skip:
            skip = False
        elif a in _SHAPE_FLAGS:
            skip = True
        else:
            out.append(a)
    return out


def _same_program(ctx, first_argv: list, argv: list, args) -> bool:
    """Whether ``argv`` differs from the session's first only in the batch shape, so that its
    model, optimizer and process group serve: random-token batches (--mock-data), no pipeline
    (whose buffers are shaped for one batch), the same flags and the same model (learned
    positions follow --seq-length).  The LR schedule's sample counts follow the batch too; the
    learning rate does not change the memory."""
    import dataclasses

    from megatron_sp.arguments.model_config import gpt_config
    if not args.mock_data or ctx.parallel.pipelined:
        return False
    cfg = gpt_config(args, ctx.args.padded_vocab_size)
    if cfg.position_embedding_type != "learned_absolute":  # no table sized by --max-position-embeddings
        cfg = dataclasses.replace(cfg, max_position_embeddings=ctx.model.cfg.max_position_embeddings)
    return _without_shape(argv) == _without_shape(first_argv) and cfg == ctx.model.cfg


def _session_rank(rank, world, store_path, budget_bytes, steps, threads, backend, inbox, out):
    """One rank of a trial session: for each argv from ``inbox`` (None ends it), build (the first
    time, or when the program changes: ``stale``), warm up, baseline, measured step, report the
    peak.  A failed trial ends the session (its peers may be stuck in a collective)."""
    import gc
    ctx, failed = None, False
    try:
        if backend == "gloo":
            configure_malloc()
        import torch
        import torch.distributed as dist
        torch.set_num_threads(threads)
        os.environ.update(WORLD_SIZE=str(world), RANK=str(rank), LOCAL_RANK=str(rank))
        if backend == "nccl":
            torch.cuda.set_device(rank % torch.cuda.device_count())
        dist.init_process_group(backend, store=dist.FileStore(store_path, world), rank=rank, world_size=world,
                                timeout=datetime.timedelta(seconds=600))
        from megatron_sp.arguments import build_parser, validate_args
        from megatron_sp.training.logging import flops_per_iteration
        from megatron_sp.training.loop import setup
        from megatron_sp.training.step import train_step
    except BaseException as exc:  # noqa: BLE001
        out.put({"rank": rank, "status": "error", "error": f"{type(exc).__name__}: {exc}"[:300]})
        failed = True
    while not failed:
        argv = inbox.get()
        if argv is None:
            break
        result = {"rank": rank, "status": "error"}
        try:
            usage0 = resource.getrusage(resource.RUSAGE_SELF)
            args = build_parser().parse_args(argv)
            first = ctx is None
            if first:
                ctx, first_argv = setup(args), argv
            else:
                validate_args(args, world)
                args.padded_vocab_size, args.tokenizer_vocab_size = ctx.args.padded_vocab_size, ctx.args.tokenizer_vocab_size
                if not _same_program(ctx, first_argv, argv, args):
                    result["status"] = "stale"
                    raise StopIteration
                ctx.args = args
            batches = _trial_batches(ctx, args, steps, first)
            if ctx.device.type == "cpu" and budget_bytes:  # safety net for the shared host (see module doc)
                data = proc_status_bytes("VmData")["VmData"]
                limit = data + 2 * budget_bytes + 512 * MiB
                resource.setrlimit(resource.RLIMIT_DATA, (limit, resource.getrlimit(resource.RLIMIT_DATA)[1]))
            meter = PeakMeter(ctx.device)
            for i, batch in enumerate(batches):
                if i == len(batches) - 1:  # the measured step: baseline after the warm-up steps
                    ctx.optimizer.zero_grad()  # the previous step's gradients (DDP's buckets stay) are not in it
                    del batches[:i]
                    gc.collect()
                    dist.barrier()
                    base = meter.start()
                    if ctx.device.type == "cuda" and budget_bytes:
                        total = torch.cuda.get_device_properties(ctx.device).total_memory
                        torch.cuda.set_per_process_memory_fraction(min(1.0, (base + budget_bytes) / total), ctx.device)
                dist.barrier()
                t0 = time.perf_counter()
                stats = train_step(ctx, batch)
                if ctx.device.type == "cuda":
                    torch.cuda.synchronize(ctx.device)
                step_time = time.perf_counter() - t0
            del batch, batches
            peak = meter.peak()
            reduced = torch.tensor([step_time, float(peak)], dtype=torch.float64)
            if ctx.device.type == "cuda":
                reduced = reduced.cuda()
            dist.all_reduce(reduced, op=dist.ReduceOp.MAX)  # the slowest rank sets the pace, the fullest the peak
            usage = resource.getrusage(resource.RUSAGE_SELF)
            cpu = usage.ru_utime + usage.ru_stime - usage0.ru_utime - usage0.ru_stime
            result.update(status="ok", peak_bytes=int(reduced[1].item()), rank_peak_bytes=int(peak),
                          baseline_bytes=base, cpu_s=cpu, step_time=float(reduced[0].item()), loss=stats["loss"],
                          flops=flops_per_iteration(args, ctx.model.cfg.vocab_size),
                          tokens=args.global_batch_size * args.seq_length,
                          params_local=sum(p.numel() for p in ctx.model.parameters()))
        except StopIteration:
            pass
        except BaseException as exc:  # noqa: BLE001 - every failure is a recorded trial outcome
            result.update(status="oom" if _is_oom(exc) else "error",
                          error=f"{type(exc).__name__}: {str(exc).strip().splitlines()[0][:300] if str(exc) else ''}",
                          traceback=traceback.format_exc()[-2000:])
        out.put(result)
        failed = result["status"] != "ok"
    out.close()
    out.join_thread()  # the results must leave before the hard exit
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


class TrialSession:
    """Ranks that stay up between the trials of one search (one layout at one world size).

    A search's trials differ in one value, the sequence length or the micro-batch: the ranks
    keep the process group, the model, the optimizer and DDP's rebuilt buckets, and each trial
    runs only its own warm-up step at its size and the measured step.  A trial whose program
    differs (another model, a pipeline, real data) is answered ``stale`` and runs in fresh ranks;
    a failed trial (error, out-of-memory, timeout) ends the session, the next trial starts one.
    ``run_trial`` is a session of one trial.
    """

    def __init__(self, world: int, budget_bytes: Optional[int], steps: int = 2, timeout: float = 600.0,
                 device: str = "cpu", threads: Optional[int] = None):
        self.world, self.budget, self.steps, self.timeout, self.device = world, budget_bytes, steps, timeout, device
        self.threads = threads or max(1, (os.cpu_count() or 1) // world)
        self.procs = []

    def _start(self):
        backend = "nccl" if self.device == "cuda" else "gloo"
        ctxmp = _mp_context(self.device)
        self.tmp = tempfile.mkdtemp(prefix="msp_scaling_")
        self.out = ctxmp.Queue()
        self.inboxes = [ctxmp.Queue() for _ in range(self.world)]
        self.procs = [ctxmp.Process(target=_session_rank, daemon=True,
                                    args=(r, self.world, os.path.join(self.tmp, "store"), self.budget, self.steps,
                                          self.threads, backend, self.inboxes[r], self.out))
                      for r in range(self.world)]
        for p in self.procs:
            p.start()

    def close(self, kill: bool = False):
        if not self.procs:
            return
        if not kill:
            for q in self.inboxes:
                q.put(None)
        for p in self.procs:
            p.join(timeout=0 if kill else 5.0)
            if p.is_alive():
                p.kill()
                p.join()
        shutil.rmtree(self.tmp, ignore_errors=True)
        self.procs = []

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def _collect(self, deadline: float) -> list:
        results = []
        while len(results) < self.world:
            left = deadline - time.monotonic()
            if any(r["status"] != "ok" for r in results):
                left = min(left, 2.0)  # a peer failed: the others are stuck in a collective
            if left <= 0:
                break
            try:
                results.append(self.out.get(timeout=min(left, 1.0)))
            except queue.Empty:
                if not any(p.is_alive() for p in self.procs) and self.out.empty():
                    break
        return results

    def run(self, argv: list) -> TrialResult:
        """One trial; never raises for a failed trial."""
        t0 = time.monotonic()
        deadline = t0 + self.timeout
        for attempt in range(2):
            if not self.procs:
                self._start()
            for q in self.inboxes:
                q.put(argv)
            results = self._collect(deadline)
            if any(r["status"] == "stale" for r in results) and attempt == 0:
                self.close()  # another program: fresh ranks
                continue
            break
        wall = time.monotonic() - t0
        bad = [r for r in results if r["status"] != "ok"]
        if bad or len(results) < self.world:
            codes = [p.exitcode for p in self.procs]
            self.close(kill=True)
            if bad:
                first = next((r for r in bad if r["status"] == "oom"), bad[0])
                return TrialResult(first["status"], wall_s=wall, error=first.get("error", ""))
            status = "timeout" if time.monotonic() >= deadline else ("oom" if -9 in codes else "error")
            return TrialResult(status, wall_s=wall,
                               error=f"{self.world - len(results)} ranks gave no result (exit {codes})")
        r0 = results[0]
        res = TrialResult("ok", peak_bytes=r0["peak_bytes"], baseline_bytes=max(r["baseline_bytes"] for r in results),
                          step_time=r0["step_time"], tokens_per_s=r0["tokens"] / r0["step_time"],
                          tflops_per_device=r0["flops"] / r0["step_time"] / self.world / 1e12, loss=r0["loss"],
                          wall_s=wall, cpu_s=sum(r.get("cpu_s", 0.0) for r in results))
        if self.budget and res.peak_bytes > self.budget:
            res.status = "over"
        return res


def run_trial(argv: list, world: int, budget_bytes: Optional[int], steps: int = 2, timeout: float = 600.0,
              device: str = "cpu", threads: Optional[int] = None) -> TrialResult:
    """Run one training trial in ``world`` fresh processes; never raises for a failed trial."""
    with TrialSession(world, budget_bytes, steps, timeout, device, threads) as session:
        return session.run(argv)
