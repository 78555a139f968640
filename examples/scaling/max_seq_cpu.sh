#!/usr/bin/env bash
# Max sequence length table on CPU, world sizes 1, 2, 4 (the acceptance command; ~10 min on an idle
# 2-core machine).  Model: the "tiny" preset of tools/scaling_experiment.py (4 layers, hidden 128,
# 8 heads, FFN 512, vocab 1000, RoPE, fp32), micro-batch 1.  Budget: 64 MiB per rank for the step's
# peak above the post-warm-up baseline (see the tool's docstring for how CPU peak memory is measured).
# Layouts: tp, tp+sp (Megatron TP with/without sequence-split norms), rsa, p2p, a2a, a2a+p2p (CP modes).
# Output: $OUT_DIR/max_seq_cpu.{md,csv}, *_trials.csv, *_vs_devices.png, *_throughput_vs_length.png.
set -euo pipefail
cd "$(dirname "$0")/../.."
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-1}
OUT_DIR=${OUT_DIR:-docs/scaling}
exec python tools/scaling_experiment.py --experiment max-seq --model tiny --micro-batch-size 1 \
  --worlds ${WORLDS:-1 2 4} --layouts ${LAYOUTS:-tp tp+sp rsa p2p a2a a2a+p2p} \
  --memory-budget-gb ${BUDGET_GB:-0.0625} --out-dir "$OUT_DIR" --name ${NAME:-max_seq_cpu} "$@"
