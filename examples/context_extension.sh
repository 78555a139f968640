#!/usr/bin/env bash
# Context extension of a Hugging Face Llama: import it, raise --seq-length and --rotary-base, and train
# it on the longer sequences with context parallelism (the tokens of each sequence split over CP ranks).
#
# What it does: tools/checkpoint/import_hf.py turns HF_DIR (a save_pretrained folder: config.json,
#   *.safetensors, tokenizer.json) into a weights-only checkpoint; pretrain_gpt.py starts from it with
#   --use-checkpoint-args (model flags and tokenizer from the checkpoint) at SEQ_LENGTH tokens with RoPE
#   base ROTARY_BASE, CP = NPROC ranks (ring attention, zigzag), then tools/checkpoint/export_hf.py writes
#   the extended model back as a Hugging Face folder.
# Layout: CP NPROC (p2p), TP 1, micro-batch 1.  Memory per rank shrinks with CP: the activations of
#   SEQ_LENGTH / CP tokens, plus the full weights and Adam state (use more ranks for longer sequences).
# Variables: HF_DIR (required; DEMO=1 makes a tiny random Llama instead, with transformers, no download),
#   WORK_DIR (runs/context_extension), SEQ_LENGTH (16384; DEMO: 1024), ROTARY_BASE (500000), NPROC (8; DEMO: 2),
#   TRAIN_ITERS (1000; DEMO: 4), LR (2e-5), DATA_PATH (tokenized with the model's tokenizer; unset: mock data),
#   EXTRA_ARGS (e.g. "--bf16 --recompute-granularity full --recompute-method uniform" on GPUs).
set -euo pipefail
cd "$(dirname "$0")/.."
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-1}
WORK_DIR=${WORK_DIR:-runs/context_extension}
DEMO=${DEMO:-0}
if [[ "$DEMO" == 1 ]]; then
  HF_DIR=${HF_DIR:-$WORK_DIR/tiny_llama}
  SEQ_LENGTH=${SEQ_LENGTH:-1024}; NPROC=${NPROC:-2}; TRAIN_ITERS=${TRAIN_ITERS:-4}
  [[ -f "$HF_DIR/config.json" ]] || python - "$HF_DIR" <<'PY'
import sys, torch, transformers
torch.manual_seed(0)
cfg = transformers.LlamaConfig(vocab_size=512, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                               num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=256)
transformers.LlamaForCausalLM(cfg).save_pretrained(sys.argv[1])
PY
fi
HF_DIR=${HF_DIR:?set HF_DIR to a Hugging Face Llama folder (or DEMO=1)}
SEQ_LENGTH=${SEQ_LENGTH:-16384}
ROTARY_BASE=${ROTARY_BASE:-500000}
NPROC=${NPROC:-8}
TRAIN_ITERS=${TRAIN_ITERS:-1000}
LR=${LR:-2e-5}
DATA_PATH=${DATA_PATH:-}
EXTRA_ARGS=${EXTRA_ARGS:-}

[[ -f "$WORK_DIR/imported/latest_checkpointed_iteration.txt" ]] || \
  python tools/checkpoint/import_hf.py --hf-dir "$HF_DIR" --save "$WORK_DIR/imported"
if [[ -n "$DATA_PATH" ]]; then DATA_ARGS=(--data-path "$DATA_PATH"); else DATA_ARGS=(--mock-data); fi
# A rerun resumes the extension run itself (--load of its own --save directory once it holds a checkpoint).
LOAD="$WORK_DIR/imported"
[[ -f "$WORK_DIR/extended/latest_checkpointed_iteration.txt" ]] && LOAD="$WORK_DIR/extended"
torchrun --standalone --nproc-per-node "$NPROC" pretrain_gpt.py \
  --load "$LOAD" --use-checkpoint-args --exit-on-missing-checkpoint \
  --seq-length "$SEQ_LENGTH" --max-position-embeddings "$SEQ_LENGTH" --rotary-base "$ROTARY_BASE" \
  --context-parallel-size "$NPROC" --cp-comm-type p2p \
  --micro-batch-size 1 --global-batch-size 8 --train-iters "$TRAIN_ITERS" \
  --lr "$LR" --min-lr "$(python -c "print($LR / 10)")" --lr-decay-style cosine --lr-warmup-iters 1 \
  --hidden-dropout 0 --attention-dropout 0 --weight-decay 0.1 --clip-grad 1.0 \
  --log-interval 1 --eval-interval 0 --save "$WORK_DIR/extended" --save-interval 500 \
  "${DATA_ARGS[@]}" $EXTRA_ARGS
python tools/checkpoint/export_hf.py --load "$WORK_DIR/extended" --save-dir "$WORK_DIR/hf_extended"
