#!/usr/bin/env bash
# Build the shipped sample corpus and everything pretrain_gpt.py needs to train on it.
#
#   examples/prepare_sample_data.sh OUTDIR [VOCAB]
#
# 1. OUTDIR/corpus.jsonl       real English prose from this Python's own documentation
#                              (tools/make_sample_corpus.py, no download)
# 2. OUTDIR/tokenizer.model    a SentencePiece BPE tokenizer, VOCAB pieces (default 2048,
#                              small so a tiny CPU model learns quickly)
# 3. OUTDIR/corpus_text_document.{bin,idx}   the Megatron indexed dataset, EOD appended
#
# and prints the flags to train on it.  Runs in a few seconds on 2 cores.
set -euo pipefail

if [[ $# -lt 1 || $# -gt 2 ]]; then
    echo "usage: $0 OUTDIR [VOCAB]" >&2
    exit 2
fi
OUTDIR=$1
VOCAB=${2:-2048}
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
PYTHON=${PYTHON:-python}
WORKERS=${WORKERS:-2}
mkdir -p "$OUTDIR"

"$PYTHON" "$ROOT/tools/make_sample_corpus.py" --output "$OUTDIR/corpus.jsonl"
"$PYTHON" "$ROOT/tools/train_tokenizer.py" --input "$OUTDIR/corpus.jsonl" \
    --model-prefix "$OUTDIR/tokenizer" --vocab-size "$VOCAB" --model-type bpe
"$PYTHON" "$ROOT/tools/preprocess_data.py" --input "$OUTDIR/corpus.jsonl" \
    --output-prefix "$OUTDIR/corpus" --tokenizer-type SentencePieceTokenizer \
    --tokenizer-model "$OUTDIR/tokenizer.model" --append-eod --workers "$WORKERS"
"$PYTHON" "$ROOT/tools/inspect_dataset.py" --data-path "$OUTDIR/corpus_text_document" \
    --tokenizer-type SentencePieceTokenizer --tokenizer-model "$OUTDIR/tokenizer.model"

echo
echo "Train on it with:"
echo "  --data-path $OUTDIR/corpus_text_document --split 969,30,1 \\"
echo "  --tokenizer-type SentencePieceTokenizer --tokenizer-model $OUTDIR/tokenizer.model"
