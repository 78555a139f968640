#!/usr/bin/env bash
# The RSA paper's (Li et al. 2021) max-batch and max-sequence-length tables in the paper's own setting,
# beside today's, in one command on CPU:
#   * BERT-Base-like (12 layers, 12 heads) and BERT-Large-like (24 layers, 16 heads) at 1/8 width,
#     the causal GPT analogue (megatron_sp/scaling/paper.py says why the memory is the bidirectional one);
#   * TP = W with --attention-backend unfused (scores materialised, probabilities kept: the paper's
#     baseline) against RSA over W, worlds 1 2 4 8; TP above / not dividing the head count refused;
#   * p2p / a2a / a2a+p2p with flash kernels beside them; the memory model beside every cell and its
#     extrapolation to the paper's 64 devices.
# Max batch at sequence 64 (BERT's 512 x 1/8), max length at micro-batch 4, 64 MiB per rank above the
# post-warm-up baseline.  Writes docs/scaling/paper_rsa_vs_tp.md, _<model>.png, raw searches in
# docs/scaling/paper_rsa_vs_tp/.  About 14 minutes on an idle 2-core machine (BENCHMARKS.md).
set -euo pipefail
cd "$(dirname "$0")/../.."
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-1}
OUT_DIR=${OUT_DIR:-docs/scaling}
exec python tools/scaling_experiment.py --experiment paper --paper-models ${MODELS:-bert-base-like bert-large-like} \
  --worlds ${WORLDS:-1 2 4 8} --memory-budget-gb ${BUDGET_GB:-0.0625} --out-dir "$OUT_DIR" \
  --name ${NAME:-paper_rsa_vs_tp} "$@"
