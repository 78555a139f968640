"""Print statistics of an indexed dataset and detokenize a document or a training sample.

    python tools/inspect_dataset.py --data-path data/corpus_text_document \\
        --tokenizer-type SentencePieceTokenizer --tokenizer-model tokenizer.model \\
        --document 0 --sample 3 --seq-length 256

Statistics: documents, tokens, dtype, document length percentiles, EOD count, the most
frequent tokens and the unigram entropy of the tokens (nats and bits per token -- a
language model's loss should fall well below the nats figure).  ``--document N`` prints
document N; ``--sample N`` prints sample N of the shuffled training set that
``pretrain_gpt.py`` would build with the same ``--split/--seq-length/--seed``.

Ids outside the tokenizer's vocabulary (data made with another tokenizer) are flagged
with a WARNING line, shown as ``<id N out of vocabulary>`` in detokenized text, and make
the exit code 1.
"""
from __future__ import annotations

import argparse
import os
import sys

sys.path.insert(0, os.path.abspath(os.path.join(os.path.dirname(__file__), os.pardir)))

import numpy as np  # noqa: E402

from megatron_sp.data.indexed_dataset import IndexedDataset  # noqa: E402
from megatron_sp.arguments.tokenizer_flags import add_tokenizer_arguments  # noqa: E402
from megatron_sp.data.tokenizers import build_tokenizer_from_args  # noqa: E402
from megatron_sp.arguments.types import NON_NEGATIVE_INT, POSITIVE_INT, SEED, ArgumentParser  # noqa: E402


def statistics(ds: IndexedDataset, vocab_size: int | None = None, eod: int | None = None,
               top: int = 10) -> dict:
    """Counts, length percentiles, unigram entropy and the most frequent tokens."""
    sizes = ds.sizes.astype(np.int64)
    tokens = np.asarray(ds.bin).astype(np.int64) if ds.num_tokens else np.zeros(0, np.int64)
    negative = int((tokens < 0).sum())
    counts = np.bincount(tokens[tokens >= 0], minlength=vocab_size or 0)
    p = counts[counts > 0] / max(1, tokens.size)
    entropy = float(-(p * np.log(p)).sum())
    order = np.argsort(-counts, kind="stable")[:top]
    pct = np.percentile(sizes, [0, 50, 90, 99, 100]) if sizes.size else np.zeros(5)
    return {"documents": ds.num_documents, "sequences": len(ds), "tokens": int(tokens.size),
            "dtype": ds.dtype.name, "max_id": int(tokens.max()) if tokens.size else -1,
            "min_id": int(tokens.min()) if tokens.size else 0, "negative_ids": negative,
            "out_of_vocab": int((tokens >= vocab_size).sum()) + negative if vocab_size else 0,
            "distinct_ids": int((counts > 0).sum()), "length_percentiles": pct.tolist(),
            "mean_length": float(sizes.mean()) if sizes.size else 0.0,
            "eod_count": int(counts[eod]) if eod is not None and eod < counts.size else None,
            "unigram_entropy_nats": entropy, "unigram_entropy_bits": entropy / np.log(2),
            "top_tokens": [(int(i), int(counts[i])) for i in order if counts[i] > 0]}


def detokenize(tok, ids: list) -> str:
    """``tok.detokenize`` with every id outside the vocabulary shown as ``<id N out of vocabulary>``."""
    out, run = [], []
    for i in ids:
        if 0 <= i < tok.vocab_size:
            run.append(i)
            continue
        if run:
            out.append(tok.detokenize(run))
            run = []
        out.append(f"<id {i} out of vocabulary>")
    if run:
        out.append(tok.detokenize(run))
    return "".join(out)


def build_parser() -> argparse.ArgumentParser:
    p = ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--data-path", required=True, help="PREFIX of PREFIX.bin/.idx")
    add_tokenizer_arguments(p.add_argument_group("tokenizer (optional: detokenize and count EOD)"))
    p.add_argument("--document", type=NON_NEGATIVE_INT, action="append", default=[],
                   help="detokenize document N (repeatable)")
    p.add_argument("--sample", type=NON_NEGATIVE_INT, action="append", default=[],
                   help="detokenize training sample N (repeatable)")
    p.add_argument("--seq-length", type=POSITIVE_INT, default=1024)
    p.add_argument("--split", default="969,30,1")
    p.add_argument("--seed", type=SEED, default=1234)
    p.add_argument("--max-chars", type=NON_NEGATIVE_INT, default=2000, help="truncate printed text")
    return p


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    try:
        ds = IndexedDataset(args.data_path)
        tok = build_tokenizer_from_args(args) if args.tokenizer_type or args.vocab_file else None
    except (ValueError, FileNotFoundError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    st = statistics(ds, tok.vocab_size if tok else None, tok.eod if tok else None)
    pct = ", ".join(f"{int(x)}" for x in st["length_percentiles"])
    print(f"{args.data_path}: {st['documents']} documents, {st['sequences']} sequences, "
          f"{st['tokens']} tokens ({st['dtype']})")
    print(f"  document length min/p50/p90/p99/max: {pct}; mean {st['mean_length']:.1f}")
    print(f"  distinct ids {st['distinct_ids']}, max id {st['max_id']}"
          + (f", vocab size {tok.vocab_size}, EOD id {tok.eod} x {st['eod_count']}" if tok else ""))
    flagged = bool(st["negative_ids"]) or bool(tok and st["out_of_vocab"])
    if tok and st["out_of_vocab"]:
        print(f"  WARNING: ids up to {st['max_id']} exceed the tokenizer's vocab size {tok.vocab_size} "
              f"({st['out_of_vocab']} of {st['tokens']} tokens): this data was made with another tokenizer; "
              "pretrain_gpt.py refuses it")
    elif st["negative_ids"]:
        print(f"  WARNING: {st['negative_ids']} negative ids (smallest {st['min_id']}): the .bin is not token ids")
    print(f"  unigram entropy: {st['unigram_entropy_nats']:.4f} nats/token "
          f"({st['unigram_entropy_bits']:.4f} bits)")
    top = ", ".join(f"{i}{'=' + repr(detokenize(tok, [i])) if tok else ''}:{c}"
                    for i, c in st["top_tokens"])
    print(f"  most frequent: {top}")

    def show(title, ids):
        ids = [int(i) for i in ids]
        text = detokenize(tok, ids) if tok else " ".join(map(str, ids))
        cut = text[:args.max_chars] + (" [...]" if len(text) > args.max_chars else "")
        print(f"--- {title}: {len(ids)} tokens ---\n{cut}")

    for n in args.document:
        if not 0 <= n < len(ds):
            print(f"error: --document {n} out of range [0, {len(ds)})", file=sys.stderr)
            return 2
        show(f"document {n}", ds[n])
    if args.sample:
        from megatron_sp.data.gpt_dataset import build_gpt_datasets
        from megatron_sp.arguments.checks import check_split

        try:
            check_split(args)
            train = build_gpt_datasets([args.data_path], args.split, args.seq_length, args.seed,
                                       (max(args.sample) + 1, 0, 0), tok.eod if tok else None)[0]
        except ValueError as e:
            print(f"error: {e}", file=sys.stderr)
            return 2
        for n in args.sample:
            show(f"training sample {n} (seq length {args.seq_length}, seed {args.seed})",
                 train.get_tokens(n))
    return 1 if flagged else 0


if __name__ == "__main__":
    sys.exit(main())
