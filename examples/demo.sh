#!/usr/bin/env bash
# The main job on the embedded default (what `make demo` runs), end to end on CPU:
#
#   1. build the shipped corpus (Python's own documentation), train a SentencePiece
#      tokenizer and preprocess it into Megatron's .bin/.idx   (examples/prepare_sample_data.sh)
#   2. pretrain a small GPT (4 layers, hidden 128, RoPE, sequence 256) in $NPROC ranks
#      with sequence (context) parallelism: the 256 tokens of every sequence are split
#      across the ranks (ring attention, zigzag), checkpointing at the end
#   3. sample text from the checkpoint
#
#   examples/demo.sh [OUTDIR]        (default runs/demo; NPROC=2, ITERS=300)
# Takes about 3 minutes on 2 cores. Compare the final lm loss with the corpus's
# unigram entropy that step 1 prints (about 6.25 nats/token).
set -euo pipefail
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
OUT=${1:-runs/demo}
PYTHON=${PYTHON:-python3}
NPROC=${NPROC:-2}
ITERS=${ITERS:-300}
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-1}

PYTHON=$PYTHON bash "$ROOT/examples/prepare_sample_data.sh" "$OUT/data"
rm -rf "$OUT/checkpoints"

"$PYTHON" -m torch.distributed.run --standalone --nproc-per-node "$NPROC" "$ROOT/pretrain_gpt.py" \
    --data-path "$OUT/data/corpus_text_document" --split 969,30,1 \
    --tokenizer-type SentencePieceTokenizer --tokenizer-model "$OUT/data/tokenizer.model" \
    --num-layers 4 --hidden-size 128 --num-attention-heads 4 --seq-length 256 \
    --position-embedding-type rope --normalization RMSNorm --swiglu --ffn-hidden-size 352 \
    --hidden-dropout 0 --attention-dropout 0 \
    --micro-batch-size 8 --global-batch-size 16 --train-iters "$ITERS" \
    --lr 3e-3 --min-lr 3e-4 --lr-decay-style cosine --lr-warmup-iters 10 --weight-decay 0.1 --clip-grad 1.0 \
    --context-parallel-size "$NPROC" --cp-comm-type p2p \
    --log-interval 20 --eval-interval "$ITERS" --eval-iters 4 \
    --save "$OUT/checkpoints" --save-interval "$ITERS"

"$PYTHON" "$ROOT/tools/generate_text.py" --load "$OUT/checkpoints" \
    --prompt "The default value of" --max-new-tokens 48 --top-k 20 --temperature 0.8 --seed 1
