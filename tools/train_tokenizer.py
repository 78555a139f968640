"""Train a SentencePiece tokenizer (BPE or unigram) from the JSONL/text inputs of preprocessing.

    python tools/train_tokenizer.py --input corpus.jsonl --model-prefix out/tokenizer \\
        --vocab-size 2048 --model-type bpe

writes ``out/tokenizer.model`` (and ``.vocab``), for ``--tokenizer-type
SentencePieceTokenizer`` or ``GPTSentencePieceTokenizer --tokenizer-model out/tokenizer.model``.

The model is laid out for both Megatron tokenizer types without extra ids: ids 0-3 are
``<unk> <s> </s> <pad>`` and Megatron's ``<CLS> <SEP> <EOD> <MASK>`` are user-defined
pieces, so ``vocab_size`` is the model's size for either type.  By default text is kept
verbatim (no NFKC normalisation, whitespace runs kept, ``\\n`` is a piece and byte
fallback covers any character), so detokenize(tokenize(text)) == text.
"""
from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time

sys.path.insert(0, os.path.abspath(os.path.join(os.path.dirname(__file__), os.pardir)))

from megatron_sp.data.document_reader import SkipLog, expand_inputs, iter_documents  # noqa: E402

MEGATRON_SPECIALS = ["<CLS>", "<SEP>", "<EOD>", "<MASK>"]


def get_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--input", nargs="+", required=True, help="JSONL or text files (globs ok)")
    p.add_argument("--json-keys", nargs="+", default=["text"], help="keys holding the text")
    p.add_argument("--model-prefix", required=True, help="writes PREFIX.model and PREFIX.vocab")
    p.add_argument("--vocab-size", type=int, default=32000)
    p.add_argument("--model-type", choices=["bpe", "unigram"], default="bpe")
    p.add_argument("--byte-fallback", action=argparse.BooleanOptionalAction, default=True,
                   help="unknown characters become UTF-8 byte pieces (256 ids) instead of <unk>")
    p.add_argument("--normalize", action="store_true",
                   help="NFKC-normalise and collapse whitespace (SentencePiece's default; "
                        "round trips then hold only modulo normalisation)")
    p.add_argument("--character-coverage", type=float, default=1.0)
    p.add_argument("--max-sentence-length", type=int, default=16384,
                   help="longer training lines are dropped by SentencePiece")
    p.add_argument("--input-sentence-size", type=int, default=0,
                   help="sample this many lines for training (0 = all)")
    p.add_argument("--num-threads", type=int, default=os.cpu_count() or 1)
    p.add_argument("--seed", type=int, default=1234)
    args = p.parse_args(argv)
    if args.vocab_size < 16:
        p.error(f"--vocab-size {args.vocab_size} is too small (need >= 16)")
    return args


def write_training_text(files, keys, path) -> tuple[int, int, SkipLog]:
    """Documents -> one line each per paragraph line (SentencePiece trains on lines)."""
    skips, docs, lines = SkipLog(files), 0, 0
    with open(path, "w", encoding="utf-8") as f:
        for texts in iter_documents(files, keys, skips):
            docs += 1
            for text in texts:
                for line in text.splitlines():
                    if line.strip():
                        f.write(line + "\n")
                        lines += 1
    return docs, lines, skips


def train(args) -> str:
    import sentencepiece as spm

    files = expand_inputs(args.input)
    os.makedirs(os.path.dirname(os.path.abspath(args.model_prefix)), exist_ok=True)
    t0 = time.time()
    with tempfile.TemporaryDirectory() as tmp:
        text_path = os.path.join(tmp, "train.txt")
        docs, lines, skips = write_training_text(files, args.json_keys, text_path)
        if lines == 0:
            raise ValueError(f"--input {' '.join(args.input)}: no usable text found")
        opts = dict(
            input=text_path, model_prefix=args.model_prefix, vocab_size=args.vocab_size,
            model_type=args.model_type, byte_fallback=args.byte_fallback,
            character_coverage=args.character_coverage,
            max_sentence_length=args.max_sentence_length, num_threads=args.num_threads,
            unk_id=0, bos_id=1, eos_id=2, pad_id=3, pad_piece="<pad>",
            user_defined_symbols=MEGATRON_SPECIALS + ([] if args.normalize else ["\n"]),
            split_digits=True, allow_whitespace_only_pieces=True,
            hard_vocab_limit=False, minloglevel=2)
        if args.input_sentence_size:
            opts.update(input_sentence_size=args.input_sentence_size, shuffle_input_sentence=True)
        if not args.normalize:
            opts.update(normalization_rule_name="identity", remove_extra_whitespaces=False)
        if hasattr(spm, "set_random_generator_seed"):  # sampling is seeded, not random
            spm.set_random_generator_seed(args.seed)
        try:
            spm.SentencePieceTrainer.train(**opts)
        except RuntimeError as e:
            raise ValueError(f"SentencePiece training failed ({e}); with a small corpus try a "
                             "smaller --vocab-size") from e
    sp = spm.SentencePieceProcessor(model_file=args.model_prefix + ".model")
    print(f"trained {args.model_type} tokenizer on {docs} documents ({lines} lines) in "
          f"{time.time() - t0:.1f} s: vocab size {sp.get_piece_size()}, "
          f"byte fallback {args.byte_fallback} -> {args.model_prefix}.model")
    if skips.total:
        print(f"  skipped {skips.total} input lines:")
        for line in skips.summary_lines():
            print(line)
    return args.model_prefix + ".model"


def main(argv=None) -> int:
    try:
        train(get_args(argv))
    except ValueError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
