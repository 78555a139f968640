#!/usr/bin/env bash
# Max micro-batch size table on CPU at a fixed sequence length (the paper's batch-size table):
# CP 4 vs TP 4 without --sequence-parallel, and the other layouts, at world sizes 1, 2, 4.
# Model: tiny preset (fp32), sequence 128, budget 64 MiB per rank above the post-warm-up baseline.
set -euo pipefail
cd "$(dirname "$0")/../.."
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-1}
OUT_DIR=${OUT_DIR:-docs/scaling}
exec python tools/scaling_experiment.py --experiment max-batch --model tiny --seq-length ${SEQ_LENGTH:-128} \
  --worlds ${WORLDS:-1 2 4} --layouts ${LAYOUTS:-tp tp+sp rsa p2p a2a a2a+p2p} \
  --memory-budget-gb ${BUDGET_GB:-0.0625} --out-dir "$OUT_DIR" --name ${NAME:-max_batch_cpu} "$@"
