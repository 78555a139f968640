#!/usr/bin/env python3
"""Which layout trains the longest sequence on my devices? (megatron_sp/scaling/planner.py)

    python tools/plan_memory.py --model llama-3-8b --devices 8 --device-memory-gb 80 --host-memory-gb 250
    python tools/plan_memory.py --model-args "--num-layers 24 --hidden-size 2048 ..." --devices 4 \\
        --device-memory-gb 24 --host-memory-gb 64 --features loss mlp

Prints the top layouts ranked by the longest sequence whose device footprint (model state,
the step's peak, ``--reserve-gb``) and host footprint (``--optimizer-cpu-offload`` state,
``--cpu-offloading`` activations) fit, by the memory model (megatron_sp/memory/estimate.py), then
the per-term breakdown of the best, which kernel its attention runs (and what attention dropout
costs: the reference kernel's O(s^2) scores) and the torchrun command that runs it, with every
flag the model assumed (no dropout and the flash backend unless the model flags say otherwise).  ``--features``
restricts the long-sequence options (chunked loss, tiled MLP, activation offload; give none
for the code without them).  Bad input is one line on stderr and exit status 2.
"""
from __future__ import annotations

import os
import sys

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

from megatron_sp.arguments.types import NON_NEGATIVE, POSITIVE, POSITIVE_INT, ArgumentParser  # noqa: E402
from megatron_sp.scaling import planner  # noqa: E402
from megatron_sp.scaling.presets import MODEL_PRESETS  # noqa: E402


def parse_args(argv=None):
    p = ArgumentParser(description=__doc__.split("\n")[0], allow_abbrev=False)
    p.add_argument("--model", choices=sorted(MODEL_PRESETS), default=None, help="model preset")
    p.add_argument("--model-args", default="", help="pretrain_gpt.py model flags (added to / overriding the preset)")
    p.add_argument("--devices", type=POSITIVE_INT, required=True, help="number of devices (GPUs)")
    p.add_argument("--device-memory-gb", type=POSITIVE, required=True, help="memory of one device, GB (1e9 bytes)")
    p.add_argument("--host-memory-gb", type=POSITIVE, required=True, help="host memory per device, GB")
    p.add_argument("--node-size", type=POSITIVE_INT, default=8, help="devices per node (TP and Ulysses stay inside)")
    p.add_argument("--reserve-gb", type=NON_NEGATIVE, default=2.0,
                   help="device memory the model does not count: CUDA context, NCCL buffers, fragmentation")
    p.add_argument("--fp32", action="store_true", help="plan for fp32 training (default: --bf16)")
    p.add_argument("--features", nargs="*", default=list(planner.FEATURES), choices=list(planner.FEATURES),
                   help="long-sequence options the planner may use (none: today's code without them)")
    p.add_argument("--cross-entropy-chunk-size", type=POSITIVE_INT, default=2048)
    p.add_argument("--tiled-mlp-chunk-size", type=POSITIVE_INT, default=4096)
    p.add_argument("--top", type=POSITIVE_INT, default=8, help="layouts to print")
    p.add_argument("--data-args", default=None, help="data flags of the printed command (default: mock data)")
    p.add_argument("--train-args", default=None, help="schedule flags of the printed command (default: a short one)")
    p.add_argument("--verify", action="store_true",
                   help="dry-run the chosen command as rank 0 (tools/dry_run.py: fake tensors, no GPU) and print "
                        "its measured peaks beside the model's")
    return p.parse_args(argv)


def _model_flags(args) -> list:
    flags = (MODEL_PRESETS[args.model].split() if args.model else []) + args.model_args.split()
    if not flags:
        raise planner.PlanError("no model: give --model PRESET or --model-args '<pretrain_gpt.py model flags>'")
    return flags


def main(argv=None) -> int:
    try:
        args = parse_args(argv)
        flags = _model_flags(args)
        plans = planner.plan(flags, args.devices, args.device_memory_gb, args.host_memory_gb, args.node_size,
                             not args.fp32, args.reserve_gb, tuple(args.features), args.cross_entropy_chunk_size,
                             args.tiled_mlp_chunk_size)
    except (ValueError, planner.PlanError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    best = planner.runnable(plans, args.top)
    budget = (f"{args.devices} devices x {args.device_memory_gb:g} GB (reserve {args.reserve_gb:g} GB), "
              f"{args.host_memory_gb:g} GB host memory per device, {'fp32' if args.fp32 else 'bf16'}, "
              f"features: {' '.join(args.features) or 'none'}")
    if not best:
        print(f"nothing fits: {budget}; not even the shortest sequence of any layout")
        return 1
    print(f"model: {' '.join(best[0].model_flags)}\nbudget: {budget}\n")
    print(f"{'rank':>4}  {'max seq':>10}  {'device GB':>9}  {'host GB':>8}  layout")
    for i, p in enumerate(best, 1):
        print(f"{i:>4}  {p.seq_length:>10,}  {p.device_bytes / 1e9:>9.1f}  {p.host_bytes / 1e9:>8.1f}  {p.describe()}")
    top = best[0]
    print(f"\nbreakdown of the best at {top.seq_length:,} tokens (GB, the worst rank):")
    for term, gib, where in top.breakdown():
        print(f"  {term:<44} {gib:>9.2f}  {where}")
    print(f"\nattention of the best: {top.attention()}")
    data = args.data_args.split() if args.data_args is not None else None
    train = args.train_args.split() if args.train_args is not None else None
    print(f"\ncommand:\n  {top.command(data, train)}")
    if args.verify:
        return _verify(top, data, train, args)
    return 0


def _verify(plan, data, train, args) -> int:
    """Dry-run the plan's command as rank 0 of its world; print the dry run's report (the
    measured peaks by category, the model's figure beside each) and whether the measured peaks
    fit the budgets (device: with the reserve).  Exit status 1 when they do not."""
    from megatron_sp.dry_run import dry_run
    argv = plan.argv(data, train)
    print(f"\nverify: dry run of the command as rank 0 of {plan.world} (fake tensors, steps 2):", flush=True)
    m, est, text = dry_run(argv, plan.world, 0)
    print("\n".join(text))
    device = m.peak("cuda") / 1e9 + args.reserve_gb
    host = m.peak("cpu") / 1e9
    fits = device <= args.device_memory_gb and host <= args.host_memory_gb
    print(f"\nverdict: {'fits' if fits else 'does NOT fit'}: device {device:.1f} GB (dry-run peak + "
          f"{args.reserve_gb:g} GB reserve) of {args.device_memory_gb:g}, host {host:.1f} GB of {args.host_memory_gb:g}")
    return 0 if fits else 1


if __name__ == "__main__":
    sys.exit(main())
