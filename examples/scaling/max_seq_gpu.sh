#!/usr/bin/env bash
# Max sequence length on GPUs (one node, world sizes 1, 2, 4, 8), GPT 1.3B in bf16, micro-batch 1.
# Budget: the whole card (a trial fits when its step does not raise CUDA out-of-memory; peaks from
# torch.cuda.max_memory_allocated), or BUDGET_GB per GPU.  NCCL, one spawned process per GPU.
# Memory per GPU: 19.5 GiB of weights/grads/Adam at TP 1 (see examples/gpt_1.3b.sh), the rest is activations.
set -euo pipefail
cd "$(dirname "$0")/../.."
OUT_DIR=${OUT_DIR:-docs/scaling}
BUDGET=()
[[ -n "${BUDGET_GB:-}" ]] && BUDGET=(--memory-budget-gb "$BUDGET_GB")
exec python tools/scaling_experiment.py --device cuda --experiment max-seq --model ${MODEL:-gpt-1.3b} --bf16 \
  --micro-batch-size 1 --worlds ${WORLDS:-1 2 4 8} --layouts ${LAYOUTS:-tp tp+sp rsa p2p a2a a2a+p2p} \
  --start ${START:-8192} "${BUDGET[@]}" --out-dir "$OUT_DIR" --name ${NAME:-max_seq_gpu} "$@"
