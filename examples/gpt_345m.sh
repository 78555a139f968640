#!/usr/bin/env bash
# GPT 345M (Megatron's GPT-2 medium shape: 24 layers, hidden 1024, 16 heads, RoPE) on one GPU node.
#
# What it trains: a 345M-parameter GPT, bf16 autocast with fp32 weights/Adam, on $DATA_PATH
#   (Megatron .bin/.idx prefix; mock data when unset) with the tokenizer in $TOKENIZER_MODEL.
# Layout (defaults): 8 GPUs = DP 4 x CP 2 (ring attention, zigzag), TP 1; sequence 8192, micro-batch 4.
#   Change TP / CP / CP_COMM_TYPE / NPROC_PER_NODE; DP = GPUs / (TP x CP).
# Memory per GPU (megatron_sp.memory_model, bf16): weights + grads + Adam 5.3 GiB (16 B/param / TP),
#   activations ~16 GiB at seq 8192 / CP 2 / micro-batch 4 -> about 24 GiB: fits 40 GB and 80 GB cards.
#   CP 1 at seq 4096, micro-batch 8 needs ~43 GiB.
# Multi-node: NNODES=2 NODE_RANK=<0|1> MASTER_ADDR=<node 0> bash examples/gpt_345m.sh (torchrun
#   rendezvous), or examples/slurm_gpt.sh under SLURM.
set -euo pipefail
cd "$(dirname "$0")/.."

DATA_PATH=${DATA_PATH:-}                    # e.g. /data/my-corpus_text_document (no suffix)
TOKENIZER_TYPE=${TOKENIZER_TYPE:-HuggingFaceTokenizer}
TOKENIZER_MODEL=${TOKENIZER_MODEL:-gpt2}     # a HF tokenizer name or path
CHECKPOINT_DIR=${CHECKPOINT_DIR:-checkpoints/gpt_345m}
TENSORBOARD_DIR=${TENSORBOARD_DIR:-}
NPROC_PER_NODE=${NPROC_PER_NODE:-8}
NNODES=${NNODES:-1}
NODE_RANK=${NODE_RANK:-0}
MASTER_ADDR=${MASTER_ADDR:-localhost}
MASTER_PORT=${MASTER_PORT:-29500}
TP=${TP:-1}
CP=${CP:-2}
CP_COMM_TYPE=${CP_COMM_TYPE:-p2p}            # rsa | p2p | a2a | a2a+p2p (then set HCP="U R")
HCP=${HCP:-}
SEQ_LENGTH=${SEQ_LENGTH:-8192}
MICRO_BATCH=${MICRO_BATCH:-4}
GLOBAL_BATCH=${GLOBAL_BATCH:-64}
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
          --rdzv-endpoint "$MASTER_ADDR:$MASTER_PORT" --rdzv-id "${RUN_ID:-gpt_345m}")
else
  LAUNCH=(--standalone --nproc-per-node "$NPROC_PER_NODE")
fi

exec torchrun "${LAUNCH[@]}" pretrain_gpt.py \
  --num-layers 24 --hidden-size 1024 --num-attention-heads 16 --position-embedding-type rope \
  --seq-length "$SEQ_LENGTH" --max-position-embeddings "$SEQ_LENGTH" \
  --micro-batch-size "$MICRO_BATCH" --global-batch-size "$GLOBAL_BATCH" --train-iters "$TRAIN_ITERS" \
  --lr 3e-4 --min-lr 3e-5 --lr-decay-style cosine --lr-warmup-iters 2000 --weight-decay 0.1 --clip-grad 1.0 \
  --hidden-dropout 0.0 --attention-dropout 0.0 --bf16 \
  "${PAR_ARGS[@]}" "${DATA_ARGS[@]}" "${LOG_ARGS[@]}" $EXTRA_ARGS
