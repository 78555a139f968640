"""Benchmark CP attention: forward+backward time and per-rank memory per mode and world size.

    python tools/bench_attention.py --seq 8192 --heads 8 --head-dim 64 --dtype fp32 --causal \
        --modes p2p a2a a2a+p2p rsa --world-sizes 1 2 4

Each world size P forks P gloo ranks on this machine (one intra-op thread each,
megatron_sp/launch.py) and times ``out = attn(q, k, v); out.backward(dout)``.
Under torchrun (``WORLD_SIZE`` set) it instead measures that one world size on
the present device (CUDA + NCCL when available, e.g. one GPU per rank, bf16).

Columns, per rank (the maximum over ranks):

* ``wall s``  - wall-clock seconds of forward+backward (median of --repeats);
  ranks share the machine's cores, so this only means something when P <= cores;
* ``cpu s``   - CPU seconds of the process for the same call (compute plus the
  communication threads' work, not time spent blocked), the measure to compare
  when P exceeds the core count;
* ``P*cpu/base`` - P x cpu s over the single-process (P = 1) cpu s;
* ``saved MiB`` - bytes of tensors saved for backward (saved_tensors_hooks);
* ``peak MiB`` - inputs and dout plus the peak of the allocator's running total
  during the call (torch profiler memory events: kernel scratch and
  communication buffers included).  Ratios are relative to (1/P) x the P = 1 value.

For ``rsa`` the P = 1 row runs the RSA algorithm itself (full score rows),
not the block kernel that ``build_cp_attention`` uses at P = 1.
"""
from __future__ import annotations

import argparse
import os
import statistics
import sys
import time

import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from megatron_sp.parallel_state import init_distributed, initialize_model_parallel  # noqa: E402
from megatron_sp.sequence_parallel import build_cp_attention, shard_for_cp  # noqa: E402
from megatron_sp.sequence_parallel.comm import Ring  # noqa: E402
from megatron_sp.sequence_parallel.rsa import RingSelfAttentionFunction  # noqa: E402

DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}


def _hierarchy(mode: str, p: int):
    if mode != "a2a+p2p":
        return None
    u = 2 if p % 2 == 0 else 1
    return (u, p // u)


def _make_call(mode, p, mesh, args, device):
    dtype = DTYPES[args.dtype]
    g = torch.Generator().manual_seed(0)
    full = [torch.randn(args.seq, args.batch, h, args.head_dim, generator=g, dtype=dtype)
            for h in (args.heads, args.kv_heads, args.kv_heads, args.heads)]
    q, k, v, dout = (shard_for_cp(x, 0, mode, args.causal, mesh).to(device) for x in full)
    del full
    q, k, v = (x.requires_grad_() for x in (q, k, v))
    if mode == "rsa" and p == 1:
        def attn(q, k, v):
            out = RingSelfAttentionFunction.apply(*(x.permute(1, 2, 0, 3) for x in (q, k, v)),
                                                  Ring([0], 0), args.causal,
                                                  args.head_dim ** -0.5, 0.0, 0)
            return out.permute(2, 0, 1, 3)
    else:
        attn = build_cp_attention(mode, mesh, args.causal)

    def call(saved=None):
        for x in (q, k, v):
            x.grad = None
        if saved is None:
            out = attn(q, k, v)
        else:
            with torch.autograd.graph.saved_tensors_hooks(saved.pack, lambda x: x):
                out = attn(q, k, v)
        out.backward(dout)
    return call, sum(x.numel() * x.element_size() for x in (q, k, v, dout))


class _SavedBytes:
    def __init__(self):
        self.seen, self.total = set(), 0

    def pack(self, t):
        key = t.untyped_storage().data_ptr()
        if key not in self.seen:
            self.seen.add(key)
            self.total += t.untyped_storage().nbytes()
        return t


def _peak_alloc(call) -> int:
    from torch.profiler import ProfilerActivity, profile
    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        call()
    events = [e for e in prof.profiler.kineto_results.events() if e.name() == "[memory]"]
    running, peak = 0, 0
    for e in sorted(events, key=lambda e: e.start_ns()):
        running += e.nbytes()
        peak = max(peak, running)
    return peak


def _sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize()


def measure(rank, world, mode, args):
    """Per-rank numbers of one mode at world size ``world`` (runs inside each rank)."""
    device = torch.device(args.device if args.device != "auto" else
                          ("cuda" if torch.cuda.is_available() else "cpu"))
    if device.type == "cuda":
        device = torch.device("cuda", torch.cuda.current_device())
    mesh = initialize_model_parallel(1, world, _hierarchy(mode, world))
    call, input_bytes = _make_call(mode, world, mesh, args, device)
    call()  # warm-up
    walls, cpus = [], []
    for _ in range(args.repeats):
        if torch.distributed.is_initialized():
            torch.distributed.barrier()
        _sync(device)
        t0, c0 = time.perf_counter(), time.process_time()
        call()
        _sync(device)
        walls.append(time.perf_counter() - t0)
        cpus.append(time.process_time() - c0)
    saved = _SavedBytes()
    call(saved)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats()
        base = torch.cuda.memory_allocated()
        call()
        peak = torch.cuda.max_memory_allocated() - base + input_bytes
    else:
        peak = _peak_alloc(call) + input_bytes
    return dict(wall=statistics.median(walls), cpu=statistics.median(cpus), saved=saved.total,
                peak=peak, device=str(device))


def _row(mode, p, per_rank, base):
    worst = {k: max(r[k] for r in per_rank) for k in ("wall", "cpu", "saved", "peak")}
    mib = 1 << 20
    hier = _hierarchy(mode, p)
    layout = f"{hier[0]}x{hier[1]}" if hier else ("1x%d" % p if mode != "a2a" else "%dx1" % p)
    cells = [mode, str(p), layout, f"{worst['wall']:.3f}", f"{worst['cpu']:.3f}"]
    if base:
        cells += [f"{p * worst['cpu'] / base['cpu']:.3f}",
                  f"{worst['saved'] / mib:.1f}", f"{p * worst['saved'] / base['saved']:.3f}",
                  f"{worst['peak'] / mib:.1f}", f"{p * worst['peak'] / base['peak']:.3f}"]
    return "| " + " | ".join(cells) + " |", worst


HEADER = ("| mode | P | U x R | wall s | cpu s | P*cpu/base | saved MiB | P*saved/base "
          "| peak MiB | P*peak/base |\n|---|---|---|---|---|---|---|---|---|---|")


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seq", type=int, default=8192)
    parser.add_argument("--batch", type=int, default=1)
    parser.add_argument("--heads", type=int, default=8)
    parser.add_argument("--kv-heads", type=int, default=None)
    parser.add_argument("--head-dim", type=int, default=64)
    parser.add_argument("--dtype", choices=sorted(DTYPES), default="fp32")
    parser.add_argument("--causal", action=argparse.BooleanOptionalAction, default=True)
    parser.add_argument("--modes", nargs="+", default=["p2p", "a2a", "a2a+p2p", "rsa"])
    parser.add_argument("--world-sizes", nargs="+", type=int, default=[1, 2, 4])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--device", default="auto")
    args = parser.parse_args(argv)
    args.kv_heads = args.kv_heads or args.heads
    if "WORLD_SIZE" in os.environ:  # torchrun: one world size on the present device
        init_distributed()
        world, rank = torch.distributed.get_world_size(), torch.distributed.get_rank()
        for mode in args.modes:
            res = measure(rank, world, mode, args)
            gathered = [None] * world
            torch.distributed.all_gather_object(gathered, res)
            if rank == 0:
                print(_row(mode, world, gathered, None)[0], res["device"], flush=True)
        return
    from megatron_sp.launch import run_distributed
    print(f"# seq {args.seq}, batch {args.batch}, heads {args.heads} (kv {args.kv_heads}), "
          f"head dim {args.head_dim}, {args.dtype}, causal={args.causal}, "
          f"{os.cpu_count()} cores, torch {torch.__version__}\n{HEADER}", flush=True)
    for mode in args.modes:
        base = None
        for p in args.world_sizes:
            per_rank = run_distributed(measure, p, mode, args, timeout=3600)
            line, worst = _row(mode, p, per_rank, base or per_rank[0])
            base = base or worst
            print(line, flush=True)


if __name__ == "__main__":
    main()
