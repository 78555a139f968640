#!/usr/bin/env bash
# GPT 7B-class (LLaMA-like: 32 layers, hidden 4096, 32 heads, SwiGLU 11008, RMSNorm, RoPE, untied) on one or more GPU nodes.
#
# What it trains: a 6.7B-parameter GPT, bf16 autocast with fp32 weights/Adam, on $DATA_PATH
#   (Megatron .bin/.idx prefix; mock data when unset) with the tokenizer in $TOKENIZER_MODEL.
# Layout (defaults): 8 GPUs = CP 2 (ring, zigzag) x TP 4 (+ Megatron-SP); sequence 32768, micro-batch 1. For 128K+: NNODES=4, CP=8.
#   Change TP / CP / CP_COMM_TYPE / NPROC_PER_NODE; DP = GPUs / (TP x CP).
# Memory per GPU (megatron_sp.memory_model, bf16): weights + grads + Adam 25 GiB at TP 4 (fp32 master weights: 16 B/param / TP),
#   activations ~23 GiB at seq 32768 / CP 2 / TP 4 -> about 48 GiB: needs 80 GB cards. TP 8 x CP 8 (64 GPUs) at seq 262144: ~44 GiB.
#   With fewer GPUs add EXTRA_ARGS="--recompute-granularity full --recompute-method uniform".
# Multi-node: NNODES=2 NODE_RANK=<0|1> MASTER_ADDR=<node 0> bash examples/gpt_7b.sh (torchrun
#   rendezvous), or examples/slurm_gpt.sh under SLURM.
set -euo pipefail
cd "$(dirname "$0")/.."

DATA_PATH=${DATA_PATH:-}                    # e.g. /data/my-corpus_text_document (no suffix)
TOKENIZER_TYPE=${TOKENIZER_TYPE:-SentencePieceTokenizer}
TOKENIZER_MODEL=${TOKENIZER_MODEL:-tokenizer.model}  # a SentencePiece model
CHECKPOINT_DIR=${CHECKPOINT_DIR:-checkpoints/gpt_7b}
TENSORBOARD_DIR=${TENSORBOARD_DIR:-}
NPROC_PER_NODE=${NPROC_PER_NODE:-8}
NNODES=${NNODES:-1}
NODE_RANK=${NODE_RANK:-0}
MASTER_ADDR=${MASTER_ADDR:-localhost}
MASTER_PORT=${MASTER_PORT:-29500}
TP=${TP:-4}
CP=${CP:-2}
CP_COMM_TYPE=${CP_COMM_TYPE:-p2p}            # rsa | p2p | a2a | a2a+p2p (then set HCP="U R")
HCP=${HCP:-}
SEQ_LENGTH=${SEQ_LENGTH:-32768}
MICRO_BATCH=${MICRO_BATCH:-1}
GLOBAL_BATCH=${GLOBAL_BATCH:-32}
TRAIN_ITERS=${TRAIN_ITERS:-100000}
EXTRA_ARGS=${EXTRA_ARGS:-}

if [[ -n "$DATA_PATH" ]]; then
  DATA_ARGS=(--data-path "$DATA_PATH" --split 969,30,1 --tokenizer-type "$TOKENIZER_TYPE" --tokenizer-model "$TOKENIZER_MODEL")
else
  DATA_ARGS=(--mock-data --tokenizer-type NullTokenizer --vocab-size 32000)
fi
PAR_ARGS=(--tensor-model-parallel-size "$TP" --context-parallel-size "$CP" --cp-comm-type "$CP_COMM_TYPE")
[[ "$TP" -gt 1 ]] && PAR_ARGS+=(--sequence-parallel)
[[ -n "$HCP" ]] && PAR_ARGS+=(--hierarchical-context-parallel-sizes $HCP)
LOG_ARGS=(--log-interval 10 --eval-interval 1000 --eval-iters 10 --save "$CHECKPOINT_DIR" --load "$CHECKPOINT_DIR"
          --save-interval 1000 --exit-signal-handler)
[[ -n "$TENSORBOARD_DIR" ]] && LOG_ARGS+=(--tensorboard-dir "$TENSORBOARD_DIR")
if [[ "$NNODES" -gt 1 ]]; then
  LAUNCH=(--nnodes "$NNODES" --nproc-per-node "$NPROC_PER_NODE" --rdzv-backend c10d
          --rdzv-endpoint "$MASTER_ADDR:$MASTER_PORT" --rdzv-id "${RUN_ID:-gpt_7b}")
else
  LAUNCH=(--standalone --nproc-per-node "$NPROC_PER_NODE")
fi

exec torchrun "${LAUNCH[@]}" pretrain_gpt.py \
  --num-layers 32 --hidden-size 4096 --num-attention-heads 32 --ffn-hidden-size 11008 --swiglu \
  --normalization RMSNorm --disable-bias-linear --untie-embeddings-and-output-weights --position-embedding-type rope \
  --seq-length "$SEQ_LENGTH" --max-position-embeddings "$SEQ_LENGTH" \
  --micro-batch-size "$MICRO_BATCH" --global-batch-size "$GLOBAL_BATCH" --train-iters "$TRAIN_ITERS" \
  --lr 1.5e-4 --min-lr 1.5e-5 --lr-decay-style cosine --lr-warmup-iters 2000 --weight-decay 0.1 --clip-grad 1.0 \
  --hidden-dropout 0.0 --attention-dropout 0.0 --bf16 \
  "${PAR_ARGS[@]}" "${DATA_ARGS[@]}" "${LOG_ARGS[@]}" $EXTRA_ARGS
