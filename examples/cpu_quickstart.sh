#!/usr/bin/env bash
# CPU quickstart: train a tiny GPT for 20 iterations on 2 CPU processes with sequence (context)
# parallelism, then find how long a sequence fits 64 MiB per rank at 1 and 2 ranks.
#
# What it trains: 2 layers, hidden 128, 8 heads, RoPE, on mock data (or $DATA_PATH with $TOKENIZER_*),
#   fp32, gloo.  Layout: CP 2 (ring attention, zigzag), TP 1, DP 1; sequence 1024, micro-batch 2.
# Memory: ~0.5 GB RSS per process.  Time: about a minute on 2 cores.
# Variables: NPROC (2), CP (2), CP_COMM_TYPE (p2p), TP (1), SEQ_LENGTH (1024), CHECKPOINT_DIR (runs/quickstart),
#   DATA_PATH, TOKENIZER_TYPE, TOKENIZER_MODEL, SKIP_SCALING=1 to skip the scaling step.
# Checkpoints go to CHECKPOINT_DIR and a rerun resumes from them (--load); delete it to start over.
set -euo pipefail
cd "$(dirname "$0")/.."
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-1}
NPROC=${NPROC:-2}
TP=${TP:-1}
CP=${CP:-2}
CP_COMM_TYPE=${CP_COMM_TYPE:-p2p}
SEQ_LENGTH=${SEQ_LENGTH:-1024}
CHECKPOINT_DIR=${CHECKPOINT_DIR:-runs/quickstart}
DATA_PATH=${DATA_PATH:-}
if [[ -n "$DATA_PATH" ]]; then
  DATA_ARGS=(--data-path "$DATA_PATH" --tokenizer-type "${TOKENIZER_TYPE:-GPTSentencePieceTokenizer}"
             --tokenizer-model "${TOKENIZER_MODEL:?set TOKENIZER_MODEL}")
else
  DATA_ARGS=(--mock-data --tokenizer-type NullTokenizer --vocab-size 1000)
fi
torchrun --standalone --nproc-per-node "$NPROC" pretrain_gpt.py \
  --num-layers 2 --hidden-size 128 --num-attention-heads 8 --position-embedding-type rope \
  --seq-length "$SEQ_LENGTH" --micro-batch-size 2 --global-batch-size 4 --train-iters 20 \
  --lr 1e-3 --min-lr 1e-4 --lr-decay-style cosine --lr-warmup-iters 2 \
  --hidden-dropout 0.0 --attention-dropout 0.0 --distributed-backend gloo \
  --tensor-model-parallel-size "$TP" --context-parallel-size "$CP" --cp-comm-type "$CP_COMM_TYPE" \
  --log-interval 5 --eval-interval 10 --eval-iters 2 --save "$CHECKPOINT_DIR" --load "$CHECKPOINT_DIR" \
  --save-interval 10 \
  "${DATA_ARGS[@]}"
if [[ "${SKIP_SCALING:-0}" != 1 ]]; then
  python tools/scaling_experiment.py --experiment max-seq --worlds 1 2 --layouts p2p rsa \
    --memory-budget-gb 0.0625 --out-dir "$CHECKPOINT_DIR/scaling" --name quickstart_max_seq
fi
