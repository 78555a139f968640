#!/usr/bin/env bash
# Shared launcher of examples/gpt_*.sh: sourced after the model script has set NAME,
# MODEL_ARGS (array), LR_ARGS (array), MOCK_VOCAB and its layout defaults (TP, CP, SEQ_LENGTH,
# MICRO_BATCH, GLOBAL_BATCH; PP and VPP where it pipelines). Every setting below can be overridden from the environment.
#
#   DATA_PATH        Megatron .bin/.idx prefix (no suffix); unset: mock data
#   TOKENIZER_TYPE / TOKENIZER_MODEL   e.g. SentencePieceTokenizer + tokenizer.model, or
#                    HuggingFaceTokenizer + a tokenizer.json file (pip install tokenizers)
#   CHECKPOINT_DIR   saved to and resumed from (--save/--load); TENSORBOARD_DIR optional
#   NPROC_PER_NODE, NNODES, NODE_RANK, MASTER_ADDR, MASTER_PORT, RUN_ID   torchrun (rendezvous when NNODES > 1)
#   TP, CP, CP_COMM_TYPE (rsa|p2p|a2a|a2a+p2p), HCP="U R" (for a2a+p2p)   the layout; DP = GPUs / (TP x CP x PP)
#   PP (pipeline stages, default 1), VPP (layers per virtual pipeline stage: interleaved 1F1B), PP_SCHEDULE
#   SEQ_LENGTH, MICRO_BATCH, GLOBAL_BATCH, TRAIN_ITERS, EXTRA_ARGS
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

DATA_PATH=${DATA_PATH:-}
TOKENIZER_TYPE=${TOKENIZER_TYPE:-SentencePieceTokenizer}
TOKENIZER_MODEL=${TOKENIZER_MODEL:-tokenizer.model}
CHECKPOINT_DIR=${CHECKPOINT_DIR:-checkpoints/$NAME}
TENSORBOARD_DIR=${TENSORBOARD_DIR:-}
NPROC_PER_NODE=${NPROC_PER_NODE:-8}
NNODES=${NNODES:-1}
NODE_RANK=${NODE_RANK:-0}
MASTER_ADDR=${MASTER_ADDR:-localhost}
MASTER_PORT=${MASTER_PORT:-29500}
CP_COMM_TYPE=${CP_COMM_TYPE:-p2p}
HCP=${HCP:-}
PP=${PP:-1}
VPP=${VPP:-}
PP_SCHEDULE=${PP_SCHEDULE:-}
TRAIN_ITERS=${TRAIN_ITERS:-100000}
EXTRA_ARGS=${EXTRA_ARGS:-}

if [[ -n "$DATA_PATH" ]]; then
  DATA_ARGS=(--data-path "$DATA_PATH" --split 969,30,1 --tokenizer-type "$TOKENIZER_TYPE" --tokenizer-model "$TOKENIZER_MODEL")
else
  DATA_ARGS=(--mock-data --tokenizer-type NullTokenizer --vocab-size "$MOCK_VOCAB")
fi
PAR_ARGS=(--tensor-model-parallel-size "$TP" --context-parallel-size "$CP" --cp-comm-type "$CP_COMM_TYPE")
[[ "$TP" -gt 1 ]] && PAR_ARGS+=(--sequence-parallel)
[[ -n "$HCP" ]] && PAR_ARGS+=(--hierarchical-context-parallel-sizes $HCP)
PAR_ARGS+=(--pipeline-model-parallel-size "$PP")
[[ -n "$VPP" ]] && PAR_ARGS+=(--num-layers-per-virtual-pipeline-stage "$VPP")
[[ -n "$PP_SCHEDULE" ]] && PAR_ARGS+=(--pipeline-schedule "$PP_SCHEDULE")
LOG_ARGS=(--log-interval 10 --eval-interval 1000 --eval-iters 10 --save "$CHECKPOINT_DIR" --load "$CHECKPOINT_DIR"
          --save-interval 1000 --exit-signal-handler)
[[ -n "$TENSORBOARD_DIR" ]] && LOG_ARGS+=(--tensorboard-dir "$TENSORBOARD_DIR")
if [[ "$NNODES" -gt 1 ]]; then
  LAUNCH=(--nnodes "$NNODES" --node-rank "$NODE_RANK" --nproc-per-node "$NPROC_PER_NODE" --rdzv-backend c10d
          --rdzv-endpoint "$MASTER_ADDR:$MASTER_PORT" --rdzv-id "${RUN_ID:-$NAME}")
else
  LAUNCH=(--standalone --nproc-per-node "$NPROC_PER_NODE")
fi

exec torchrun "${LAUNCH[@]}" pretrain_gpt.py "${MODEL_ARGS[@]}" \
  --seq-length "$SEQ_LENGTH" --max-position-embeddings "$SEQ_LENGTH" \
  --micro-batch-size "$MICRO_BATCH" --global-batch-size "$GLOBAL_BATCH" --train-iters "$TRAIN_ITERS" \
  "${LR_ARGS[@]}" --weight-decay 0.1 --clip-grad 1.0 --hidden-dropout 0.0 --attention-dropout 0.0 --bf16 \
  "${PAR_ARGS[@]}" "${DATA_ARGS[@]}" "${LOG_ARGS[@]}" $EXTRA_ARGS
