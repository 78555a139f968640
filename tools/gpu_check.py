#!/usr/bin/env python3
"""``make gpu-check``: the checks that need a CUDA GPU, within 10 minutes on one H100, one summary file.

    python tools/gpu_check.py [--out runs/gpu-check]

1. ``pytest -m gpu tests/gpu``: every block kernel against the reference (fp32, bf16, fp16, GQA,
   head dims 64 and 128), every CP mode at P = 2, 4, 8 simulated in one process, a bf16 training
   smoke against the CPU run, activation offload, FSDP2 + optimizer offload;
2. ``examples/scaling/mfu_single_gpu.sh`` (MFU at 8K and 32K; the max-sequence search left out
   here: ``MAX_SEQ_SEARCH=0``, 10 iterations);
3. the dry run against the real run for one configuration: ``tools/dry_run.py --world-size 1
   --rank 0 --json PATH -- <flags>`` (its ``device_peak_bytes``, when its ``--help`` lists
   ``--json``) against ``torch.cuda.max_memory_allocated()`` of the same flags trained for real;
   skipped, and said so, when ``tools/dry_run.py`` is not there or has no ``--json``.

Each step has its own time limit; the summary (``<out>/summary.txt``) has one line per step and
the exit status is 0 only if every step that ran passed.  Without a CUDA GPU it prints one line
and exits 1.
"""
from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
LIMITS = {"tests": 270, "mfu": 210, "dry-run": 90}  # seconds, 570 in all
DRY_RUN = os.path.join(ROOT, "tools", "dry_run.py")
DRY_RUN_FLAGS = ("--num-layers 8 --hidden-size 1024 --num-attention-heads 16 --group-query-attention "
                 "--num-query-groups 4 --ffn-hidden-size 2816 --swiglu --normalization RMSNorm "
                 "--position-embedding-type rope --disable-bias-linear --untie-embeddings-and-output-weights "
                 "--vocab-size 32000 --seq-length 4096 --max-position-embeddings 4096 --micro-batch-size 1 "
                 "--global-batch-size 1 --train-iters 2 --lr 1e-4 --hidden-dropout 0 --attention-dropout 0 "
                 "--attention-backend flash --bf16 --mock-data --tokenizer-type NullTokenizer --log-interval 1 "
                 "--eval-interval 0 --seed 1234").split()
MEASURE = """
import sys, torch
from megatron_sp.training.loop import pretrain
pretrain(sys.argv[1:])
print("max_memory_allocated", torch.cuda.max_memory_allocated())
"""


def _run(cmd, limit, env=None, log=None):
    """(status, seconds, output tail): ok / failed (exit status) / timeout."""
    t = time.time()
    try:
        r = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=limit,
                           env={**os.environ, "PYTHONPATH": ROOT, **(env or {})})
        status, out = ("ok" if r.returncode == 0 else f"failed (exit {r.returncode})"), r.stdout + r.stderr
    except subprocess.TimeoutExpired as exc:
        status, out = f"timeout ({limit} s)", (exc.stdout or b"").decode(errors="replace") if isinstance(
            exc.stdout, bytes) else (exc.stdout or "")
    if log:
        with open(log, "w") as f:
            f.write(out)
    return status, time.time() - t, out


def check_tests(out_dir):
    status, secs, out = _run([sys.executable, "-m", "pytest", "-q", "-m", "gpu", "tests/gpu", "-p", "no:cacheprovider"],
                             LIMITS["tests"], log=os.path.join(out_dir, "tests.log"))
    tail = next((line for line in reversed(out.strip().splitlines()) if " in " in line), "no pytest summary")
    return status, secs, tail.strip("= ")


def check_mfu(out_dir):
    status, secs, out = _run(["bash", "examples/scaling/mfu_single_gpu.sh"], LIMITS["mfu"],
                             env={"OUT_DIR": out_dir, "TRAIN_ITERS": "10", "MAX_SEQ_SEARCH": "0"},
                             log=os.path.join(out_dir, "mfu.log"))
    mfu = re.findall(r"MFU: ([0-9.]+%)", out)
    return status, secs, f"MFU of the iterations: {' '.join(mfu)}" if mfu else "no MFU in the log"


def check_dry_run(out_dir):
    if not os.path.exists(DRY_RUN):
        return "skipped", 0.0, "tools/dry_run.py is not there"
    help_status, _, help_text = _run([sys.executable, DRY_RUN, "--help"], 60)
    if help_status != "ok" or "--json" not in help_text:
        return "skipped", 0.0, ("tools/dry_run.py --help lists no --json "
                                "(agreed: --world-size --rank --json PATH -- flags)")
    path = os.path.join(out_dir, "dry_run.json")
    t = time.time()
    status, _, _ = _run([sys.executable, DRY_RUN, "--world-size", "1", "--rank", "0", "--json", path, "--",
                         *DRY_RUN_FLAGS], LIMITS["dry-run"] // 2, log=os.path.join(out_dir, "dry_run.log"))
    if status != "ok":
        return f"dry run {status}", time.time() - t, "see dry_run.log"
    predicted = json.load(open(path))["device_peak_bytes"]
    status, _, out = _run([sys.executable, "-c", MEASURE, *DRY_RUN_FLAGS], LIMITS["dry-run"] // 2,
                          env={"WORLD_SIZE": "1"}, log=os.path.join(out_dir, "measured_run.log"))
    lines = [line for line in out.splitlines() if line.startswith("max_memory_allocated")]
    if status != "ok" or not lines:
        return f"real run {status}", time.time() - t, "see measured_run.log"
    measured = int(lines[-1].split()[1])
    ratio = predicted / measured
    return ("ok" if abs(ratio - 1) <= 0.1 else "failed (off by more than 10%)"), time.time() - t, \
        f"dry run {predicted / 2**30:.3f} GiB vs measured {measured / 2**30:.3f} GiB (ratio {ratio:.3f})"


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0], allow_abbrev=False)
    p.add_argument("--out", default=os.path.join(ROOT, "runs", "gpu-check"), help="folder of the summary and logs")
    a = p.parse_args(argv)
    import torch
    if not torch.cuda.is_available():
        print(f"gpu-check: no CUDA GPU on this machine (torch {torch.__version__}, torch.cuda.is_available() is "
              "False): nothing run")
        return 1
    os.makedirs(a.out, exist_ok=True)
    summary = os.path.join(a.out, "summary.txt")
    rows = [f"gpu-check on {torch.cuda.get_device_name(0)}, torch {torch.__version__}, CUDA {torch.version.cuda}"]
    failed = False
    for name, check in (("tests", check_tests), ("mfu", check_mfu), ("dry-run", check_dry_run)):
        status, secs, detail = check(a.out)
        failed |= status not in ("ok", "skipped")
        rows.append(f"{name:<8} {status:<28} {secs:6.0f} s  {detail}")
        print(rows[-1], flush=True)
        with open(summary, "w") as f:
            f.write("\n".join(rows) + "\n")
    print(f"summary: {summary}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
