#!/usr/bin/env bash
# Max sequence length table on CPU, world sizes 1, 2, 4, 8, including TP x CP mixes (the paper's
# max-length table; CP 8 trials run 8 processes, so allow ~30-40 min on 2 cores).  Same model and
# budget as max_seq_cpu.sh (tiny preset, fp32, micro-batch 1, 64 MiB per rank above the baseline).
set -euo pipefail
cd "$(dirname "$0")/../.."
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-1}
OUT_DIR=${OUT_DIR:-docs/scaling}
exec python tools/scaling_experiment.py --experiment max-seq --model tiny --micro-batch-size 1 \
  --worlds ${WORLDS:-1 2 4 8} --layouts ${LAYOUTS:-tp tp+sp rsa p2p a2a a2a+p2p tp2+sp+p2p} \
  --memory-budget-gb ${BUDGET_GB:-0.0625} --out-dir "$OUT_DIR" --name ${NAME:-max_seq_cpu_w8} "$@"
