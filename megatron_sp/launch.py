"""Run a function in several gloo ranks on CPU, with failures propagated and a timeout.

Used by the tests and by the CPU benchmarks (tools/).

    results = run_distributed(fn, world_size, *args, **kwargs)

``fn(rank, world_size, *args, **kwargs)`` runs in ``world_size`` forked processes with
the default process group initialised (gloo, one intra-op thread each).  Ranks meet
through a FileStore in a fresh temporary directory, so there is no race for a free
port (gloo's own sockets take ports the OS picks).  A
raising rank fails the call with its traceback; the others are killed after a short
grace instead of hanging in a collective.  Return values come back in rank order.
"""
from __future__ import annotations

import datetime
import gc
import io
import multiprocessing as mp
import os
import queue
import signal
import tempfile
import time
import traceback

import torch
import torch.distributed as dist

_CTX = mp.get_context("fork")


def _worker(fn, rank, world_size, store_path, args, kwargs, out):
    try:
        torch.set_num_threads(1)
        # a clean signal state, as a process torchrun starts has: a DataLoader of the parent (an
        # in-process run with --num-workers) leaves its SIGCHLD handler, watching the parent's workers
        signal.signal(signal.SIGCHLD, signal.SIG_DFL)
        os.environ.setdefault("OMP_NUM_THREADS", "1")
        store = dist.FileStore(store_path, world_size)
        dist.init_process_group("gloo", store=store, rank=rank, world_size=world_size,
                                timeout=datetime.timedelta(seconds=60))
        result = fn(rank, world_size, *args, **kwargs)
        dist.barrier()
        dist.destroy_process_group()
        buf = io.BytesIO()
        torch.save(result, buf)  # plain bytes: tensors must not travel as shared memory
        out.put((rank, "ok", buf.getvalue()))
    except BaseException:  # noqa: BLE001 - every failure must reach the parent
        out.put((rank, "error", traceback.format_exc()))


def run_distributed(fn, world_size: int, *args, timeout: float = 180.0, **kwargs):
    gc.collect()  # finalise the parent's garbage here: a forked rank must not run its finalisers (they may
    # wait on locks of threads that do not exist in the child, e.g. a finished run's DataLoader or tokenizers)
    tmp = tempfile.TemporaryDirectory(prefix="msp_dist_")
    store_path = os.path.join(tmp.name, "store")
    out = _CTX.Queue()
    procs = [_CTX.Process(target=_worker, args=(fn, r, world_size, store_path, args, kwargs, out),
                          daemon=True) for r in range(world_size)]
    for p in procs:
        p.start()
    results, errors = {}, {}
    deadline = time.monotonic() + timeout
    try:
        while len(results) + len(errors) < world_size:
            left = deadline - time.monotonic()
            if errors:  # give the others a moment to report, then stop waiting
                left = min(left, 3.0)
            if left <= 0:
                break
            try:
                rank, status, payload = out.get(timeout=left)
            except queue.Empty:
                if errors or not any(p.is_alive() for p in procs):
                    break
                continue
            if status == "ok":
                results[rank] = torch.load(io.BytesIO(payload), weights_only=False)
            else:
                errors[rank] = payload
    finally:
        for p in procs:
            p.join(timeout=0.5)
            if p.is_alive():
                p.kill()
                p.join()
        tmp.cleanup()
    if errors:
        first = next(iter(errors))  # the first to report is usually the cause
        raise RuntimeError(f"rank {first} of {world_size} failed:\n{errors[first]}")
    missing = [r for r in range(world_size) if r not in results]
    if missing:
        codes = {r: procs[r].exitcode for r in missing}
        raise TimeoutError(f"ranks {missing} of {world_size} gave no result within {timeout:.0f}s "
                           f"(exit codes {codes})")
    return [results[r] for r in range(world_size)]

