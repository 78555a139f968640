"""Tokenize one raw input line into document arrays, in a worker process or in-process.

``tools/preprocess_data.py`` maps ``encode`` over ``(file_index, line, raw_bytes)``
records with a ``multiprocessing.Pool`` whose initializer is ``init_encoder`` (each
worker builds its own tokenizer once).  It lives in the package, not in the tool, so
workers can unpickle it by reference.
"""
from __future__ import annotations

import numpy as np

from .document_reader import parse_line
from .tokenizers import build_tokenizer

_STATE: dict = {}


def init_encoder(tokenizer_type, tokenizer_model, vocab_size, keys, append_eod, json_flags,
                 dtype, tokenizer_options=None) -> None:
    """Set up this process: the tokenizer and how to parse lines of each input file."""
    tok = build_tokenizer(tokenizer_type, tokenizer_model, vocab_size, **(tokenizer_options or {}))
    _STATE.update(tok=tok, keys=keys,
                  append_eod=append_eod, json_flags=json_flags, dtype=dtype)


def encode(record):
    """``(file_index, line, raw)`` -> ``(file_index, line, nbytes, arrays | reason)``.

    ``arrays`` holds one token array per JSON key (EOD appended if asked); a string is
    the reason the line was skipped.
    """
    fi, n, raw = record
    docs, reason = parse_line(raw, _STATE["keys"], _STATE["json_flags"][fi])
    if docs is None:
        return fi, n, len(raw), reason
    tok, out = _STATE["tok"], []
    for text in docs:
        try:
            ids = tok.tokenize(text)
        except Exception as e:  # e.g. NullTokenizer given words
            return fi, n, len(raw), f"tokenizer error ({type(e).__name__}: {e})"
        if not ids:
            return fi, n, len(raw), "empty document"
        if _STATE["append_eod"]:
            ids = list(ids) + [tok.eod]
        out.append(np.asarray(ids, dtype=_STATE["dtype"]))
    return fi, n, len(raw), out
