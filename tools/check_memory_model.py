#!/usr/bin/env python
"""The memory model against measured training steps, case by case (CPU or GPU).

Each case is a set of extra flags (recompute, chunked loss, tiled MLP, offload ...) on one
model, layout and length; each runs one real trial with the scaling tool's measurement
(``megatron_sp/scaling/trial.py``: fresh processes, a warm-up step, then the peak of the
measured step above the baseline) and is printed next to ``memory.estimate``'s
``step_peak`` (on CPU host and device are one memory, so offloaded bytes count too)::

    python tools/check_memory_model.py --model llama-32k --seq-length 4096 \\
        --cases "--cross-entropy-chunk-size 0" "" "--tiled-mlp-chunk-size 512" \\
                "--recompute-granularity full --recompute-method uniform"

Exit status 1 when a case is off by more than ``--tolerance`` (default 10%).
"""
from __future__ import annotations

import argparse
import os
import shlex
import sys

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)
sys.path.insert(0, os.path.join(REPO, "tools"))

from megatron_sp import memory as mm  # noqa: E402
import scaling_experiment as se  # noqa: E402

MiB = 2 ** 20
DEFAULT_CASES = [
    "--cross-entropy-chunk-size 0",
    "",
    "--cross-entropy-chunk-size 512",
    "--tiled-mlp-chunk-size 512",
    "--cpu-offloading --cpu-offloading-num-layers 2",
    "--recompute-granularity selective",
    "--recompute-granularity full --recompute-method uniform --cross-entropy-chunk-size 0",
    "--recompute-granularity full --recompute-method uniform --tiled-mlp-chunk-size 512 "
    "--cross-entropy-chunk-size 512",
]


def check(model_flags: str, case: str, layout, seq: int, mbs: int, device: str, bf16: bool, steps: int = 2):
    """(measured step peak, model step peak) in bytes for one case."""
    argv = f"{model_flags} {se.COMMON}".split() + layout.flags() + shlex.split(case)
    argv += ["--seq-length", str(seq), "--micro-batch-size", str(mbs), "--global-batch-size", str(mbs * layout.dp),
             "--train-iters", str(steps), "--seed", "1234"] + (["--bf16"] if bf16 else [])
    spec = mm.ModelSpec.from_flags(argv, bf16=bf16, device=device)
    est = mm.estimate(spec, layout.parallel, seq, mbs)
    r = se.run_trial(argv, layout.tp * layout.cp * layout.dp, None, steps=steps, timeout=600, device=device)
    if r.status != "ok":
        raise RuntimeError(f"{case!r}: {r.status} {r.error}")
    return r.peak_bytes, est.step_peak


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], allow_abbrev=False)
    p.add_argument("--model", choices=sorted(se.PRESETS), default="llama-32k")
    p.add_argument("--model-args", default="", help="extra model flags after the preset")
    p.add_argument("--layout", default="p2p", help="a scaling-tool layout name (tp, tp+sp, p2p, tp2+sp+p2p ...)")
    p.add_argument("--world", type=int, default=1)
    p.add_argument("--seq-length", type=int, default=4096)
    p.add_argument("--micro-batch-size", type=int, default=1)
    p.add_argument("--bf16", action="store_true")
    p.add_argument("--device", choices=["cpu", "cuda"], default="cpu")
    p.add_argument("--cases", nargs="+", default=DEFAULT_CASES)
    p.add_argument("--tolerance", type=float, default=0.10)
    a = p.parse_args(argv)
    layout = se.make_layout(a.layout, a.world)
    flags = f"{se.PRESETS[a.model]} {a.model_args}"
    print(f"model {a.model} {a.model_args}| {layout.describe()} | seq {a.seq_length} x micro-batch "
          f"{a.micro_batch_size} | {'bf16' if a.bf16 else 'fp32'} | {a.device}\n")
    print("| case | measured MiB | model MiB | model / measured |\n|---|---:|---:|---:|")
    worst = 0.0
    for case in a.cases:
        measured, model = check(flags, case, layout, a.seq_length, a.micro_batch_size, a.device, a.bf16)
        worst = max(worst, abs(model / measured - 1))
        print(f"| `{case or '(defaults)'}` | {measured / MiB:.1f} | {model / MiB:.1f} | {model / measured:.3f} |",
              flush=True)
    print(f"\nworst |model / measured - 1| = {worst:.3f} (tolerance {a.tolerance})")
    return 0 if worst <= a.tolerance else 1


if __name__ == "__main__":
    sys.exit(main())
