"""Tokenize JSONL/text documents into Megatron's indexed dataset (``.bin`` + ``.idx``).

    python tools/preprocess_data.py --input corpus.jsonl --output-prefix data/corpus \\
        --tokenizer-type SentencePieceTokenizer --tokenizer-model tokenizer.model \\
        --append-eod --workers 2

writes ``data/corpus_text_document.{bin,idx}`` (one pair per ``--json-keys`` key), the
files that ``pretrain_gpt.py --data-path data/corpus_text_document`` and Megatron-LM read.

* Bad lines (not UTF-8, malformed JSON, missing key, empty document) are skipped and
  listed with ``file:line`` in the summary; ``--strict`` makes the first one fatal.
* Output is written to temporary files and renamed at the very end, so an interrupted
  or failed run never leaves a half-written dataset under the final name.
* ``--workers N`` tokenizes in N processes; documents keep their input order, so the
  output is byte-identical for any N.  ``--partitions P`` writes the input in P
  contiguous parts and merges them (Megatron's flag; the result equals ``P = 1``).
"""
from __future__ import annotations

import argparse
import itertools
import multiprocessing as mp
import os
import sys
import time

sys.path.insert(0, os.path.abspath(os.path.join(os.path.dirname(__file__), os.pardir)))

import numpy as np  # noqa: E402

from megatron_sp.data.document_encoder import encode, init_encoder  # noqa: E402
from megatron_sp.data.document_reader import (SkipLog, expand_inputs, is_json_file,  # noqa: E402
                                              iter_lines)
from megatron_sp.data.indexed_dataset import (IndexedDatasetBuilder, best_dtype,  # noqa: E402
                                              data_file_path, index_file_path)
from megatron_sp.arguments.tokenizer_flags import add_tokenizer_arguments  # noqa: E402
from megatron_sp.data.tokenizers import build_tokenizer_from_args, resolve_tokenizer_type, tokenizer_options  # noqa: E402
from megatron_sp.arguments.types import POSITIVE, POSITIVE_INT, ArgumentParser  # noqa: E402

def build_parser() -> argparse.ArgumentParser:
    p = ArgumentParser(description=__doc__.split("\n")[0])
    g = p.add_argument_group("input data")
    g.add_argument("--input", nargs="+", required=True,
                   help="JSONL (.jsonl/.json/.ndjson, one document per line) or plain text "
                        "(one document per line) files; globs and directories allowed")
    g.add_argument("--json-keys", nargs="+", default=["text"],
                   help="keys to extract from each JSON line; one output per key")
    g.add_argument("--strict", action="store_true", help="a bad input line is fatal")
    g = p.add_argument_group("tokenizer")
    add_tokenizer_arguments(g)
    g.add_argument("--append-eod", action="store_true",
                   help="append the tokenizer's end-of-document id to every document")
    g = p.add_argument_group("output data")
    g.add_argument("--output-prefix", required=True,
                   help="writes PREFIX_{key}_document.bin/.idx for each --json-keys key")
    g = p.add_argument_group("runtime")
    g.add_argument("--workers", type=POSITIVE_INT, default=1, help="tokenizer processes")
    g.add_argument("--partitions", type=POSITIVE_INT, default=1,
                   help="write the input in this many parts, then merge them")
    g.add_argument("--log-interval", type=POSITIVE, default=1.0, help="seconds between progress")
    return p


def get_args(argv=None):
    return build_parser().parse_args(argv)


class Progress:
    """Prints documents/s and MB/s to stderr every ``interval`` seconds."""

    def __init__(self, interval: float):
        self.interval, self.t0 = interval, time.time()
        self.last, self.docs, self.nbytes, self.tokens = self.t0, 0, 0, 0

    def update(self, docs: int, nbytes: int, tokens: int) -> None:
        self.docs += docs
        self.nbytes += nbytes
        self.tokens += tokens
        now = time.time()
        if now - self.last >= self.interval:
            self.last = now
            end = "\r" if sys.stderr.isatty() else "\n"
            print(f"processed {self.docs} documents | {self.rate()}", end=end, file=sys.stderr,
                  flush=True)

    def rate(self) -> str:
        dt = max(time.time() - self.t0, 1e-9)
        return f"{self.docs / dt:.1f} docs/s | {self.nbytes / dt / 1e6:.2f} MB/s"


def run(args) -> dict:
    """Preprocess per ``args``; returns the summary counts (also printed)."""
    files = expand_inputs(args.input)
    json_flags = [is_json_file(f) for f in files]
    if not all(json_flags) and len(args.json_keys) > 1:
        raise ValueError(f"--json-keys {' '.join(args.json_keys)}: plain-text inputs have one "
                         "document per line, so give a single key (or JSONL input)")
    args.tokenizer_type = resolve_tokenizer_type(args.tokenizer_type, args.vocab_file)
    tok = build_tokenizer_from_args(args)
    dtype = best_dtype(tok.vocab_size)
    finals = [f"{args.output_prefix}_{k}_document" for k in args.json_keys]
    os.makedirs(os.path.dirname(os.path.abspath(args.output_prefix)), exist_ok=True)
    tmp = [f"{p}.tmp{os.getpid()}" for p in finals]
    part_prefixes = [[f"{t}.part{i}" for t in tmp] for i in range(args.partitions)]
    created: list[str] = []
    init = (args.tokenizer_type, args.tokenizer_model, args.vocab_size, args.json_keys,
            args.append_eod, json_flags, dtype, tokenizer_options(args))
    skips, progress = SkipLog(files), Progress(args.log_interval)
    pool = mp.get_context("fork").Pool(args.workers, init_encoder, init) \
        if args.workers > 1 else None
    if pool is None:
        init_encoder(*init)
    try:
        n_lines = sum(1 for _ in iter_lines(files)) if args.partitions > 1 else 0
        bounds = [n_lines * i // args.partitions for i in range(args.partitions + 1)]
        lines = iter_lines(files)
        for part in range(args.partitions):
            prefixes = part_prefixes[part] if args.partitions > 1 else tmp
            chunk = itertools.islice(lines, bounds[part + 1] - bounds[part]) \
                if args.partitions > 1 else lines
            builders = []
            for pre in prefixes:
                created += [data_file_path(pre), index_file_path(pre)]
                builders.append(IndexedDatasetBuilder(data_file_path(pre), dtype))
            results = pool.imap(encode, chunk, chunksize=64) if pool else map(encode, chunk)
            for fi, n, nbytes, res in results:
                if isinstance(res, str):
                    if args.strict:
                        raise ValueError(f"{files[fi]}:{n}: {res} (--strict is set; drop it "
                                         "to skip and count bad lines instead)")
                    skips.add(fi, n, res)
                    progress.update(0, nbytes, 0)
                    continue
                for b, arr in zip(builders, res):
                    b.add_document(arr)
                progress.update(1, nbytes, len(res[0]))
            for b, pre in zip(builders, prefixes):
                b.finalize(index_file_path(pre))
        if args.partitions > 1:
            for k, pre in enumerate(tmp):
                created += [data_file_path(pre), index_file_path(pre)]
                b = IndexedDatasetBuilder(data_file_path(pre), dtype)
                for part in range(args.partitions):
                    b.add_index(part_prefixes[part][k])
                b.finalize(index_file_path(pre))
        for t, final in zip(tmp, finals):
            os.replace(data_file_path(t), data_file_path(final))
            os.replace(index_file_path(t), index_file_path(final))
    finally:
        if pool is not None:
            pool.terminate()
        for path in created:
            if os.path.exists(path):
                os.remove(path)
    summary = {"documents": progress.docs, "tokens": progress.tokens,
               "skipped": skips.total, "bytes": progress.nbytes,
               "seconds": time.time() - progress.t0, "outputs": finals}
    if sys.stderr.isatty():
        print(file=sys.stderr)
    print(f"done: {progress.docs} documents, {progress.tokens} tokens ({args.json_keys[0]}), "
          f"{skips.total} skipped lines | {progress.rate()} | {summary['seconds']:.2f} s")
    print(f"  tokenizer {args.tokenizer_type}: vocab size {tok.vocab_size}, eod {tok.eod}, "
          f"dtype {np.dtype(dtype).name}, eod appended: {args.append_eod}")
    for line in skips.summary_lines():
        print(line)
    for final in finals:
        print(f"  wrote {data_file_path(final)} and {index_file_path(final)}")
    return summary


def main(argv=None) -> int:
    args = get_args(argv)
    try:
        run(args)
    except (ValueError, OSError) as e:  # OSError: an unreadable input, an unwritable --output-prefix
        print(f"error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
