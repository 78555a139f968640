#!/usr/bin/env bash
# GPT 1.3B (24 layers, hidden 2048, 16 heads, RoPE) on one GPU node.
#
# What it trains: a 1.3B-parameter GPT, bf16 autocast with fp32 weights/Adam, on $DATA_PATH
#   (Megatron .bin/.idx prefix; mock data when unset) with the tokenizer in $TOKENIZER_MODEL.
# Layout (defaults): 8 GPUs = DP 1 x CP 4 (ring attention, zigzag) x TP 2 (+ Megatron-SP); sequence 65536, micro-batch 1.
#   Change TP / CP / CP_COMM_TYPE / NPROC_PER_NODE; DP = GPUs / (TP x CP).
# Memory per GPU (megatron_sp.memory_model, bf16): weights + grads + Adam 9.8 GiB at TP 2 (19.5 GiB at TP 1),
#   activations ~15 GiB at seq 65536 / CP 4 / TP 2 -> about 27 GiB per GPU. One GPU (TP=1 CP=1 NPROC_PER_NODE=1):
#   ~35 GiB at seq 8192, ~80 GiB at seq 32768 (add EXTRA_ARGS="--recompute-granularity full --recompute-method uniform").
# Multi-node: NNODES=2 NODE_RANK=<0|1> MASTER_ADDR=<node 0> bash examples/gpt_1.3b.sh (torchrun
#   rendezvous), or examples/slurm_gpt.sh under SLURM.
set -euo pipefail
cd "$(dirname "$0")/.."

DATA_PATH=${DATA_PATH:-}                    # e.g. /data/my-corpus_text_document (no suffix)
TOKENIZER_TYPE=${TOKENIZER_TYPE:-HuggingFaceTokenizer}
TOKENIZER_MODEL=${TOKENIZER_MODEL:-gpt2}     # a HF tokenizer name or path
CHECKPOINT_DIR=${CHECKPOINT_DIR:-checkpoints/gpt_1.3b}
TENSORBOARD_DIR=${TENSORBOARD_DIR:-}
NPROC_PER_NODE=${NPROC_PER_NODE:-8}
NNODES=${NNODES:-1}
NODE_RANK=${NODE_RANK:-0}
MASTER_ADDR=${MASTER_ADDR:-localhost}
MASTER_PORT=${MASTER_PORT:-29500}
TP=${TP:-2}
CP=${CP:-4}
CP_COMM_TYPE=${CP_COMM_TYPE:-p2p}            # rsa | p2p | a2a | a2a+p2p (then set HCP="U R")
HCP=${HCP:-}
SEQ_LENGTH=${SEQ_LENGTH:-65536}
MICRO_BATCH=${MICRO_BATCH:-1}
GLOBAL_BATCH=${GLOBAL_BATCH:-16}
TRAIN_ITERS=${TRAIN_ITERS:-100000}
EXTRA_ARGS=${EXTRA_ARGS:-}

if [[ -n "$DATA_PATH" ]]; then
  DATA_ARGS=(--data-path "$DATA_PATH" --split 969,30,1 --tokenizer-type "$TOKENIZER_TYPE" --tokenizer-model "$TOKENIZER_MODEL")
else
  DATA_ARGS=(--mock-data --tokenizer-type NullTokenizer --vocab-size 50257)
fi
PAR_ARGS=(--tensor-model-parallel-size "$TP" --context-parallel-size "$CP" --cp-comm-type "$CP_COMM_TYPE")
[[ "$TP" -gt 1 ]] && PAR_ARGS+=(--sequence-parallel)
[[ -n "$HCP" ]] && PAR_ARGS+=(--hierarchical-context-parallel-sizes $HCP)
LOG_ARGS=(--log-interval 10 --eval-interval 1000 --eval-iters 10 --save "$CHECKPOINT_DIR" --load "$CHECKPOINT_DIR"
          --save-interval 1000 --exit-signal-handler)
[[ -n "$TENSORBOARD_DIR" ]] && LOG_ARGS+=(--tensorboard-dir "$TENSORBOARD_DIR")
if [[ "$NNODES" -gt 1 ]]; then
  LAUNCH=(--nnodes "$NNODES" --nproc-per-node "$NPROC_PER_NODE" --rdzv-backend c10d
          --rdzv-endpoint "$MASTER_ADDR:$MASTER_PORT" --rdzv-id "${RUN_ID:-gpt_1.3b}")
else
  LAUNCH=(--standalone --nproc-per-node "$NPROC_PER_NODE")
fi

exec torchrun "${LAUNCH[@]}" pretrain_gpt.py \
  --num-layers 24 --hidden-size 2048 --num-attention-heads 16 --position-embedding-type rope \
  --seq-length "$SEQ_LENGTH" --max-position-embeddings "$SEQ_LENGTH" \
  --micro-batch-size "$MICRO_BATCH" --global-batch-size "$GLOBAL_BATCH" --train-iters "$TRAIN_ITERS" \
  --lr 2e-4 --min-lr 2e-5 --lr-decay-style cosine --lr-warmup-iters 2000 --weight-decay 0.1 --clip-grad 1.0 \
  --hidden-dropout 0.0 --attention-dropout 0.0 --bf16 \
  "${PAR_ARGS[@]}" "${DATA_ARGS[@]}" "${LOG_ARGS[@]}" $EXTRA_ARGS
