#!/usr/bin/env python
"""The memory model's per-stage device memory for every TP x PP x CP x DP layout of a model on N GPUs.

    python tools/pipeline_layouts.py                      # 70B (Llama-2-70B shape) on 64 GPUs, TP 8, seq 32768
    python tools/pipeline_layouts.py --gpus 128 --seq-length 131072 --sharding dist-opt
    python tools/pipeline_layouts.py --model-args "--num-layers 32 --hidden-size 4096 ..." --tp 4

For each PP size K dividing the GPUs / TP (and the layer count), each CP size P dividing the
rest (DP = GPUs / (TP K P)) and each schedule (1F1B, and interleaved 1F1B with two virtual
stages per rank where the layers allow), it prints the largest and the smallest stage's
device peak (weights, gradients, Adam state, pipeline buffers, the step's activations and
transients: megatron_sp/memory/stages.py), the schedule's bubble and the bytes a
rank sends per micro-batch, from the flags alone (pure Python, no torch).
"""
from __future__ import annotations

import argparse
import os
import sys

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if REPO not in sys.path:
    sys.path.insert(0, REPO)

from megatron_sp import memory as mm  # noqa: E402
from megatron_sp.pipeline_parallel import bubble_fraction, in_flight_chunks  # noqa: E402
from megatron_sp.memory import stage_estimates  # noqa: E402
from megatron_sp.sequence_parallel.config import CP_COMM_TYPES, RING  # noqa: E402

GiB = 2 ** 30
LLAMA2_70B = ("--num-layers 80 --hidden-size 8192 --num-attention-heads 64 --group-query-attention "
              "--num-query-groups 8 --ffn-hidden-size 28672 --swiglu --disable-bias-linear "
              "--untie-embeddings-and-output-weights --vocab-size 32000 --position-embedding-type rope")


def rows(spec, gpus: int, tp: int, seq: int, mbs: int, gbs: int, sharding: str, mode: str) -> list:
    out = []
    rest = gpus // tp
    for pp in [k for k in range(1, rest + 1) if rest % k == 0 and spec.num_layers % k == 0]:
        for cp in [p for p in range(1, rest // pp + 1) if (rest // pp) % p == 0]:
            dp = rest // (pp * cp)
            if gbs % (mbs * dp):
                continue
            m = gbs // (mbs * dp)
            schedules = [("1F1B", 1)] if pp > 1 else [("-", 1)]
            if pp > 1 and spec.num_layers % (2 * pp) == 0:
                schedules.append(("Interleaved1F1B", 2))
            for name, v in schedules:
                if name == "1F1B" and m < pp:
                    continue
                lay = mm.ParallelConfig(tp=tp, cp=cp, dp=dp, mode=mode if cp > 1 else RING, sp=tp > 1, pp=pp,
                                    virtual=v, schedule=name if pp > 1 else "1F1B", micro_batches=m,
                                    sharding=sharding)
                ests = stage_estimates(spec, lay, seq, mbs) if pp > 1 else [mm.estimate(spec, lay, seq, mbs)]
                peaks = [e.device_peak for e in ests]
                state = ests[0].params + ests[0].adam + ests[0].grads
                out.append(dict(pp=pp, cp=cp, dp=dp, schedule=name, virtual=v, micro_batches=m,
                                in_flight=in_flight_chunks(name, pp, v, m, 0) if pp > 1 else 1,
                                max_peak=max(peaks), min_peak=min(peaks), worst=peaks.index(max(peaks)),
                                state=state, acts=ests[peaks.index(max(peaks))].activations,
                                bubble=bubble_fraction(name, pp, v, m) if pp > 1 else 0.0,
                                pp_send=ests[0].comm_detail.get("pp", 0.0)))
    return out


def table(found: list, budget_gib: float) -> str:
    lines = ["| PP | CP | DP | schedule | micro-batches | chunks in flight (stage 0) | model state GiB (stage 0) | "
             "activations GiB (worst stage) | device peak GiB: worst stage (which) / best | bubble | fits "
             f"{budget_gib:g} GiB |", "|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in found:
        sched = r["schedule"] + (f" V={r['virtual']}" if r["virtual"] > 1 else "")
        lines.append(f"| {r['pp']} | {r['cp']} | {r['dp']} | {sched} | {r['micro_batches']} | {r['in_flight']} | "
                     f"{r['state'] / GiB:.1f} | {r['acts'] / GiB:.1f} | {r['max_peak'] / GiB:.1f} ({r['worst']}) / "
                     f"{r['min_peak'] / GiB:.1f} | {r['bubble']:.3f} | "
                     f"{'yes' if r['max_peak'] <= budget_gib * GiB else 'no'} |")
    return "\n".join(lines)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], allow_abbrev=False)
    p.add_argument("--model-args", default=LLAMA2_70B, help="pretrain_gpt.py model flags (default: Llama-2-70B shape)")
    p.add_argument("--gpus", type=int, default=64)
    p.add_argument("--tp", type=int, default=8)
    p.add_argument("--seq-length", type=int, default=32768)
    p.add_argument("--micro-batch-size", type=int, default=1)
    p.add_argument("--global-batch-size", type=int, default=64)
    p.add_argument("--sharding", choices=["replicated", "dist-opt", "fsdp2"], default="dist-opt")
    p.add_argument("--cp-comm-type", default=RING, choices=list(CP_COMM_TYPES))
    p.add_argument("--recompute-granularity", choices=["full", "selective"], default=None)
    p.add_argument("--budget-gib", type=float, default=80.0, help="device memory to compare with (H100: 80)")
    a = p.parse_args(argv)
    spec = mm.ModelSpec.from_flags(a.model_args.split(), bf16=True, recompute=a.recompute_granularity)
    found = rows(spec, a.gpus, a.tp, a.seq_length, a.micro_batch_size, a.global_batch_size, a.sharding,
                 a.cp_comm_type)
    print(f"{a.gpus} GPUs, TP {a.tp} + SP, seq {a.seq_length}, micro-batch {a.micro_batch_size}, global batch "
          f"{a.global_batch_size}, bf16, {a.sharding}, recompute {a.recompute_granularity}\n")
    print(table(found, a.budget_gib))
    return 0


if __name__ == "__main__":
    sys.exit(main())
