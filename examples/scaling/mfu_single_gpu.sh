#!/usr/bin/env bash
# Single-GPU MFU of a ~1B GPT training step (GPT 1.3B shape, bf16 autocast) at sequence 8K and 32K,
# and the largest sequence that fits one GPU.  MFU is against the card's *measured* bf16 matmul
# peak (8192^3 matmuls), not the datasheet: target >= 50%.
# Memory: ~35 GiB at 8K, ~80 GiB at 32K without recompute (H100 80GB: set RECOMPUTE=1 at 32K).
# TRAIN_ITERS (default 20) and MAX_SEQ_SEARCH=0 (skip the max-sequence search) shorten it (make gpu-check).
set -euo pipefail
cd "$(dirname "$0")/../.."
OUT_DIR=${OUT_DIR:-docs/scaling}
mkdir -p "$OUT_DIR"
PEAK=$(python - <<'PY'
import torch, time
a = torch.randn(8192, 8192, device="cuda", dtype=torch.bfloat16); b = torch.randn_like(a)
for _ in range(5): a @ b
torch.cuda.synchronize(); t = time.perf_counter(); n = 50
for _ in range(n): a @ b
torch.cuda.synchronize(); print(f"{2 * 8192**3 * n / (time.perf_counter() - t) / 1e12:.1f}")
PY
)
echo "measured bf16 matmul peak: $PEAK TFLOP/s" | tee "$OUT_DIR/mfu_single_gpu.log"
for SEQ in 8192 32768; do
  RC=()
  [[ "${RECOMPUTE:-0}" == 1 || ( "$SEQ" -ge 32768 && "${RECOMPUTE:-auto}" == auto ) ]] && \
    RC=(--recompute-granularity full --recompute-method uniform --recompute-num-layers 1)
  torchrun --standalone --nproc-per-node 1 pretrain_gpt.py \
    --num-layers 24 --hidden-size 2048 --num-attention-heads 16 --position-embedding-type rope \
    --seq-length "$SEQ" --micro-batch-size 1 --global-batch-size 1 --train-iters "${TRAIN_ITERS:-20}" --log-interval 5 \
    --lr 2e-4 --hidden-dropout 0.0 --attention-dropout 0.0 --bf16 --mock-data --tokenizer-type NullTokenizer \
    --vocab-size 50257 --eval-iters 0 --eval-interval 0 --peak-tflops "$PEAK" "${RC[@]}" \
    2>&1 | tee -a "$OUT_DIR/mfu_single_gpu.log"
done
[[ "${MAX_SEQ_SEARCH:-1}" == 0 ]] && exit 0
python tools/scaling_experiment.py --device cuda --experiment max-seq --model gpt-1.3b --bf16 --worlds 1 \
  --layouts p2p --start 16384 --out-dir "$OUT_DIR" --name max_seq_single_gpu
