"""Helpers shared by the data tests (no tests here): tiny corpora, a tiny tokenizer, the tools.

Also an *independent* reader of Megatron's ``.idx``/``.bin`` layout, written from the
documented format only, so the tests do not check our writer with our own reader.
"""
from __future__ import annotations

import importlib.util
import json
import os
import struct
import sys

import numpy as np

ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), os.pardir))
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)

_TOOLS: dict = {}
EOD = 999


def make_data(path, n_docs=20, seed=0, lo=0):
    """An int32 indexed dataset at ``path``: ``n_docs`` documents of 1..12 tokens.

    Token ``lo + 1000 * (doc + 1) + position`` (so a token names its document), then EOD.
    """
    from megatron_sp.data.indexed_dataset import IndexedDatasetBuilder

    rng = np.random.RandomState(seed)
    prefix = str(path)
    b = IndexedDatasetBuilder(prefix + ".bin", np.int32)
    docs = []
    for d in range(n_docs):
        doc = [lo + d * 1000 + 1000 + i for i in range(rng.randint(1, 13))] + [EOD]
        docs.append(doc)
        b.add_document(doc)
    b.finalize(prefix + ".idx")
    return prefix, docs


def tool(name: str):
    """Import ``tools/<name>.py`` as a module (to call its ``main(argv)`` in-process)."""
    if name not in _TOOLS:
        spec = importlib.util.spec_from_file_location(f"_tool_{name}",
                                                      os.path.join(ROOT, "tools", f"{name}.py"))
        mod = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(mod)
        _TOOLS[name] = mod
    return _TOOLS[name]


def prose_documents(n: int | None = None) -> list[str]:
    """Real prose with code, indentation, blank lines and punctuation (pydoc topics)."""
    from pydoc_data.topics import topics

    docs = [topics[k].strip() for k in sorted(topics)]
    docs += ["Unicode survives: café, naïve, 中文, emoji 🙂 and tabs\tinside.",
             "  leading and trailing spaces are kept  ", "x"]
    return docs if n is None else docs[:n]


def write_jsonl(path: str, docs: list[str], key: str = "text") -> str:
    with open(path, "w", encoding="utf-8") as f:
        for d in docs:
            f.write(json.dumps({key: d, "meta": 1}, ensure_ascii=False) + "\n")
    return path


def train_tiny_tokenizer(tmpdir: str, vocab: int = 600, model_type: str = "bpe") -> str:
    """A SentencePiece model trained on the prose documents in ``tmpdir``."""
    corpus = write_jsonl(os.path.join(tmpdir, "tok_corpus.jsonl"), prose_documents(40))
    prefix = os.path.join(tmpdir, f"tok_{model_type}_{vocab}")
    rc = tool("train_tokenizer").main(["--input", corpus, "--model-prefix", prefix,
                                       "--vocab-size", str(vocab), "--model-type", model_type,
                                       "--num-threads", "1"])
    assert rc == 0
    return prefix + ".model"


def read_megatron_pair(prefix: str):
    """Parse ``PREFIX.idx``/``PREFIX.bin`` from the documented layout; returns documents.

    idx: magic b"MMIDIDX\\0\\0", u64 version=1, u8 dtype code, u64 S sequences,
    u64 D document indices, i32[S] sizes, i64[S] byte pointers, i64[D] document indices.
    """
    codes = {1: "u1", 2: "i1", 3: "<i2", 4: "<i4", 5: "<i8", 6: "<f8", 7: "<f4", 8: "<u2"}
    raw = open(prefix + ".idx", "rb").read()
    assert raw[:9] == b"MMIDIDX\x00\x00"
    assert struct.unpack_from("<Q", raw, 9)[0] == 1
    dtype = np.dtype(codes[raw[17]])
    n_seq, n_doc = struct.unpack_from("<QQ", raw, 18)
    sizes = np.frombuffer(raw, "<i4", n_seq, 34)
    pointers = np.frombuffer(raw, "<i8", n_seq, 34 + 4 * n_seq)
    doc_idx = np.frombuffer(raw, "<i8", n_doc, 34 + 12 * n_seq)
    assert len(raw) == 34 + 12 * n_seq + 8 * n_doc
    data = open(prefix + ".bin", "rb").read()
    assert len(data) == int(sizes.sum()) * dtype.itemsize
    seqs = [np.frombuffer(data, dtype, int(s), int(p)) for s, p in zip(sizes, pointers)]
    docs = [np.concatenate(seqs[a:b]) if b > a else np.zeros(0, dtype)
            for a, b in zip(doc_idx[:-1], doc_idx[1:])]
    return dtype, docs
