"""The shipped sample corpus and examples/prepare_sample_data.sh, end to end."""
import json
import os
import subprocess
import sys

import numpy as np

from test_data_common import ROOT, read_megatron_pair
from megatron_sp.data.tokenizers import build_tokenizer


def test_prepare_sample_data_end_to_end(tmp_path):
    out = tmp_path / "demo"
    r = subprocess.run(["bash", os.path.join(ROOT, "examples", "prepare_sample_data.sh"),
                        str(out), "1024"], capture_output=True, text=True, timeout=120,
                       env={**os.environ, "PYTHON": sys.executable})
    assert r.returncode == 0, r.stderr
    assert f"--data-path {out}/corpus_text_document" in r.stdout
    assert f"--tokenizer-model {out}/tokenizer.model" in r.stdout
    docs = [json.loads(line)["text"] for line in open(out / "corpus.jsonl", encoding="utf-8")]
    assert len(docs) > 1000 and sum(map(len, docs)) > 1_000_000  # a real amount of prose
    assert sum(" the " in d for d in docs) > 0.5 * len(docs)     # English
    # an independent reader of the .idx/.bin layout gets the corpus back, exactly
    dtype, got = read_megatron_pair(str(out / "corpus_text_document"))
    tok = build_tokenizer("SentencePieceTokenizer", str(out / "tokenizer.model"))
    assert tok.vocab_size == 1024 and dtype == np.uint16 and len(got) == len(docs)
    for ids, text in zip(got, docs):
        assert ids[-1] == tok.eod and tok.detokenize(ids[:-1].tolist()) == text


def test_corpus_is_deterministic(tmp_path):
    a, b = str(tmp_path / "a.jsonl"), str(tmp_path / "b.jsonl")
    for path in (a, b):
        subprocess.run([sys.executable, os.path.join(ROOT, "tools", "make_sample_corpus.py"),
                        "--output", path, "--max-mb", "0.2"], check=True, timeout=120)
    assert open(a, "rb").read() == open(b, "rb").read()
    size = sum(len(json.loads(x)["text"].encode()) for x in open(a, encoding="utf-8"))
    assert 150_000 < size <= 200_000
