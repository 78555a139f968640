#!/usr/bin/env python
"""Per-stage peak memory, step time and pipeline bubble of PP 1, 2, 4 ... on CPU (gloo), next to the
memory model and the schedule's bubble formula.

    python tools/bench_pipeline.py --pp 1 2 4 --micro-batches 8
    python tools/bench_pipeline.py --pp 2 4 --schedule Interleaved1F1B --virtual 2

For each PP size K a fresh set of K ranks (``megatron_sp.launch``, one thread each) builds the
model (``loop.setup``), runs ``--steps`` training steps and measures the last one the way the
scaling tool does (tools/scaling_experiment.py): the resident-set high-water mark above the
baseline taken after the warm-up steps (the step's peak), the baseline itself (weights, Adam
state, the pipeline's receive buffers), and the step time.  The *measured bubble* of a rank is
``1 - busy / step time``, where busy is the time the rank spends inside the library's
``forward_one_chunk`` / ``backward_one_chunk`` (its compute; waiting for a neighbour happens
outside them); the formula is ``(K - 1) / (m + K - 1)`` for 1F1B (Narayanan et al. 2021),
``(K - 1) / (V m + K - 1)`` interleaved.  Stages are not perfectly equal (the first embeds,
the last computes the logits and the loss), so the two differ by that imbalance.

On a machine with fewer cores than ranks the ranks share cores and the times say little;
the tool prints the core count next to the results.
"""
from __future__ import annotations

import argparse
import os
import sys
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if REPO not in sys.path:
    sys.path.insert(0, REPO)

from megatron_sp import memory as mm  # noqa: E402
from megatron_sp.pipeline_parallel import bubble_fraction, schedule_name  # noqa: E402
from megatron_sp.memory import stage_estimates  # noqa: E402

MiB = 2 ** 20
MODEL = ("--num-layers 8 --hidden-size 256 --num-attention-heads 8 --vocab-size 8000 --position-embedding-type rope "
         "--seq-length 1024")
COMMON = ("--mock-data --tokenizer-type NullTokenizer --lr 1e-4 --lr-decay-style constant --hidden-dropout 0 "
          "--attention-dropout 0 --log-interval 1000000 --eval-interval 0 --seed 1234")


def _rank(rank, world, argv, steps):
    import gc

    import torch
    import torch.distributed as dist
    from torch.distributed.pipelining.stage import _PipelineStageBase

    from megatron_sp.scaling.trial import PeakMeter, configure_malloc
    from megatron_sp.training.batches import micro_batches
    from megatron_sp.training.loop import build_parser, setup
    from megatron_sp.training.step import train_step
    configure_malloc()
    busy = [0.0]

    def timed(fn):
        def wrapper(*a, **k):
            t0 = time.perf_counter()
            try:
                return fn(*a, **k)
            finally:
                busy[0] += time.perf_counter() - t0
        return wrapper

    for name in ("forward_one_chunk", "backward_one_chunk", "backward_weight_one_chunk"):
        setattr(_PipelineStageBase, name, timed(getattr(_PipelineStageBase, name)))
    args = build_parser().parse_args(argv)
    ctx = setup(args)
    batches = [micro_batches(ctx.datasets[0], i * args.global_batch_size, args, ctx.mesh, ctx.device)
               for i in range(steps)]
    meter = PeakMeter(ctx.device)
    times = []
    for i in range(steps):
        if i == steps - 1:
            gc.collect()
            dist.barrier()
            base = meter.start()
        dist.barrier()
        busy[0] = 0.0
        t0 = time.perf_counter()
        train_step(ctx, batches[i])
        times.append(time.perf_counter() - t0)
    peak = meter.peak()
    step = torch.tensor([times[-1]], dtype=torch.float64)
    dist.all_reduce(step, op=dist.ReduceOp.MAX)
    return dict(pp_rank=ctx.mesh.pp_rank, peak=peak, baseline=base, step_time=float(step.item()), busy=busy[0],
                layers=sorted(int(k) for k in ctx.model.decoder.layers))


def run(args) -> list:
    from megatron_sp.launch import run_distributed
    model = args.model_args or MODEL
    spec = mm.ModelSpec.from_flags(model.split())
    seq = int(model.split()[model.split().index("--seq-length") + 1])
    rows = []
    for k in args.pp:
        v = args.virtual if k > 1 else 1
        name = schedule_name(args.schedule, v) if k > 1 else "-"
        m = args.micro_batches
        argv = f"{model} {COMMON} --micro-batch-size {args.micro_batch_size} --global-batch-size " \
               f"{args.micro_batch_size * m} --train-iters {args.steps}".split()
        if k > 1:
            argv += ["--pipeline-model-parallel-size", str(k), "--pipeline-schedule", name]
            if v > 1:
                argv += ["--num-virtual-stages-per-pipeline-rank", str(v)]
        out = run_distributed(_rank, k, argv, args.steps, timeout=args.timeout)
        lay = mm.ParallelConfig(pp=k, virtual=v, schedule=name if k > 1 else "1F1B", micro_batches=m)
        ests = ([mm.estimate(spec, lay, seq, args.micro_batch_size)] if k == 1 else
                stage_estimates(spec, lay, seq, args.micro_batch_size))
        formula = bubble_fraction(name, k, v, m) if k > 1 else 0.0
        for r in sorted(out, key=lambda x: x["pp_rank"]):
            est = ests[r["pp_rank"]]
            rows.append(dict(pp=k, schedule=name, virtual=v, stage=r["pp_rank"], layers=r["layers"],
                             peak_mib=r["peak"] / MiB, model_peak_mib=est.step_peak / MiB,
                             baseline_mib=r["baseline"] / MiB, step_s=r["step_time"],
                             bubble=(1 - r["busy"] / r["step_time"]) if k > 1 else 0.0, bubble_formula=formula))
    return rows


def table(rows, cores: int) -> str:
    lines = ["| PP | schedule | stage | layers | step peak MiB (model) | baseline RSS MiB | step s | "
             "bubble measured | bubble formula |", "|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        ids = r["layers"]
        layers = f"{ids[0]}-{ids[-1]}" if ids == list(range(ids[0], ids[-1] + 1)) else ",".join(map(str, ids))
        lines.append(f"| {r['pp']} | {r['schedule']}{' V=' + str(r['virtual']) if r['virtual'] > 1 else ''} | "
                     f"{r['stage']} | {layers} | {r['peak_mib']:.1f} ({r['model_peak_mib']:.1f}) | "
                     f"{r['baseline_mib']:.0f} | {r['step_s']:.3f} | {r['bubble']:.2f} | {r['bubble_formula']:.2f} |")
    lines.append(f"\n({cores} CPU cores, one thread per rank)")
    return "\n".join(lines)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], allow_abbrev=False)
    p.add_argument("--pp", type=int, nargs="+", default=[1, 2, 4])
    p.add_argument("--schedule", default=None,
                   help="--pipeline-schedule (default 1F1B, Interleaved1F1B with --virtual)")
    p.add_argument("--virtual", type=int, default=1, help="virtual stages per rank")
    p.add_argument("--micro-batches", type=int, default=8)
    p.add_argument("--micro-batch-size", type=int, default=1)
    p.add_argument("--model-args", default=None, help=f"model flags incl. --seq-length (default: {MODEL})")
    p.add_argument("--steps", type=int, default=3, help="training steps (the last is measured)")
    p.add_argument("--timeout", type=float, default=900.0)
    args = p.parse_args(argv)
    print(table(run(args), os.cpu_count()))
    return 0


if __name__ == "__main__":
    sys.exit(main())
