#!/usr/bin/env python
"""Model-state bytes per rank by sharding mode, and checkpoint save/load time by format.

For a model (pretrain_gpt.py model flags), at each world size and mode, fresh gloo ranks
build the model and optimizer exactly as ``pretrain_gpt.py`` does (``loop.setup``) and
create the Adam state (the first step would).  Each rank reports:

* ``state``: bytes of its fp32 master weights + Adam m, v, counted from the tensors it holds
  (next to ``memory.model_state``), and the resident-set growth they caused;
* with ``--save-load DIR``: the time of ``save_checkpoint`` (files written, checksums,
  rename, tracker) and of ``load_checkpoint`` in each ``--formats``, and the resident
  high-water mark above the baseline during the save (the gather of ``torch`` vs the
  bounded buffers of ``torch_dist``).

No training step runs, so a 1B-parameter model is measured on a CPU machine in seconds.

    python tools/bench_model_state.py --model-args "--num-layers 18 --hidden-size 2048 \\
        --num-attention-heads 16 --vocab-size 50257" --worlds 1 2 4 8 \\
        --modes replicated fsdp2 dist-opt dist-opt+offload
    python tools/bench_model_state.py --model-args "..." --worlds 1 2 4 --modes fsdp2 \\
        --save-load /tmp/ckbench --formats torch torch_dist
"""
from __future__ import annotations

import argparse
import os
import shutil
import sys
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if REPO not in sys.path:
    sys.path.insert(0, REPO)

from megatron_sp.arguments.parallel import SHARDING_FLAGS  # noqa: E402

MODE_FLAGS = {**SHARDING_FLAGS, **{f"{m}+offload": SHARDING_FLAGS[m] + ["--optimizer-cpu-offload"]
                                   for m in ("fsdp2", "dist-opt")}}
COMMON = ("--mock-data --tokenizer-type NullTokenizer --seq-length 64 --micro-batch-size 1 --train-iters 1 "
          "--lr 1e-4 --hidden-dropout 0 --attention-dropout 0 --eval-interval 0 --log-interval 1000").split()
MiB = 2 ** 20


def _rank(rank, world, argv, save_dir, formats):
    import torch
    from megatron_sp.checkpointing import load_checkpoint, save_checkpoint
    from megatron_sp.checkpointing.state import ensure_optimizer_state
    from megatron_sp.distributed import local
    from megatron_sp.scaling.trial import PeakMeter, configure_malloc, proc_status_bytes
    from megatron_sp.training.loop import build_parser, setup
    configure_malloc()
    rss0 = proc_status_bytes("VmRSS")["VmRSS"]
    args = build_parser().parse_args(argv)
    ctx = setup(args)
    ensure_optimizer_state(ctx.optimizer)
    rss1 = proc_status_bytes("VmRSS")["VmRSS"]
    params = list(ctx.model.parameters())
    weights = sum(local(p).numel() * local(p).element_size() for p in params)
    adam = sum(local(t).numel() * local(t).element_size() for p in params
               for t in ctx.optimizer.optimizer.state[p].values() if torch.is_tensor(t) and t.dim() > 0)
    out = {"weights": weights, "adam": adam, "rss": rss1 - rss0}
    for fmt in formats if save_dir else []:
        where = os.path.join(save_dir, f"{fmt}-w{world}")
        ctx.args.save, ctx.args.ckpt_format, ctx.state.iteration = where, fmt, 1
        meter = PeakMeter(ctx.device)
        meter.start()
        t0 = time.perf_counter()
        save_checkpoint(ctx)
        out[f"{fmt}_save_s"] = time.perf_counter() - t0
        out[f"{fmt}_save_peak"] = meter.peak()
        ctx.args.load = where
        t0 = time.perf_counter()
        load_checkpoint(ctx)
        out[f"{fmt}_load_s"] = time.perf_counter() - t0
        if rank == 0:
            out[f"{fmt}_bytes"] = sum(os.path.getsize(os.path.join(d, f)) for d, _, fs in os.walk(where) for f in fs)
    return out


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--model-args", required=True, help="pretrain_gpt.py model flags")
    p.add_argument("--worlds", type=int, nargs="+", default=[1, 2, 4, 8])
    p.add_argument("--modes", nargs="+", default=list(MODE_FLAGS), choices=list(MODE_FLAGS))
    p.add_argument("--save-load", default=None, metavar="DIR", help="also time save and load under DIR")
    p.add_argument("--formats", nargs="+", default=["torch", "torch_dist"], choices=["torch", "torch_dist"])
    p.add_argument("--bf16", action="store_true")
    args = p.parse_args(argv)
    from megatron_sp import memory as mm
    from megatron_sp.launch import run_distributed
    spec = mm.ModelSpec.from_flags(args.model_args.split(), bf16=args.bf16)
    print(f"model: {mm.local_parameters(spec, 1) / 1e6:.1f} M parameters ({args.model_args})")
    header = "| mode | DP x CP | weights + Adam per rank (MiB) | model (MiB) | RSS growth (MiB) |"
    rows = []
    for mode in args.modes:
        for world in args.worlds:
            argv = COMMON + args.model_args.split() + MODE_FLAGS[mode] + (["--bf16"] if args.bf16 else [])
            argv += ["--global-batch-size", str(world)]
            if args.save_load:
                shutil.rmtree(args.save_load, ignore_errors=True)
            res = run_distributed(_rank, world, argv, args.save_load, args.formats, timeout=3600)
            sharding = mode.split("+")[0]
            state = mm.model_state(spec, mm.ParallelConfig(dp=world, sharding=sharding, offload="offload" in mode))
            mine = max(r["weights"] + r["adam"] for r in res)
            line = (f"| {mode} | {world} | {mine / MiB:,.1f} | {(state['params'] + state['adam']) / MiB:,.1f} | "
                    f"{max(r['rss'] for r in res) / MiB:,.1f} |")
            for fmt in args.formats if args.save_load else []:
                line += (f" {fmt}: {res[0][fmt + '_bytes'] / 2 ** 30:.2f} GiB, save {max(r[fmt + '_save_s'] for r in res):.2f} s"
                         f" (peak +{max(r[fmt + '_save_peak'] for r in res) / MiB:,.0f} MiB on rank "
                         f"{max(range(world), key=lambda i: res[i][fmt + '_save_peak'])}), "
                         f"load {max(r[fmt + '_load_s'] for r in res):.2f} s |")
            rows.append(line)
            print(line, flush=True)
    print("\n" + header + (" checkpoint |" * len(args.formats) if args.save_load else ""))
    print("\n".join(rows))
    return 0


if __name__ == "__main__":
    sys.exit(main())
