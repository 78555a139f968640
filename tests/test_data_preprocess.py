"""tools/preprocess_data.py: round trip, determinism across workers/partitions, bad input."""
import glob
import json
import os
import subprocess
import sys

import numpy as np
import pytest

from test_data_common import (ROOT, prose_documents, read_megatron_pair, tool,
                              train_tiny_tokenizer, write_jsonl)
from megatron_sp.data.tokenizers import build_tokenizer


@pytest.fixture(scope="module")
def sp_model(tmp_path_factory):
    return train_tiny_tokenizer(str(tmp_path_factory.mktemp("tok")))


def preprocess(inputs, prefix, model, *extra):
    return tool("preprocess_data").main(
        ["--input", *inputs, "--output-prefix", prefix, "--tokenizer-type",
         "SentencePieceTokenizer", "--tokenizer-model", model, "--append-eod", *extra])


def test_round_trip_with_independent_reader(tmp_path, sp_model):
    docs = prose_documents()
    src = write_jsonl(str(tmp_path / "in.jsonl"), docs)
    assert preprocess([src], str(tmp_path / "out"), sp_model) == 0
    dtype, got = read_megatron_pair(str(tmp_path / "out_text_document"))
    tok = build_tokenizer("SentencePieceTokenizer", sp_model)
    assert dtype == np.uint16 and len(got) == len(docs)
    for ids, text in zip(got, docs):
        assert ids[-1] == tok.eod  # --append-eod
        assert tok.detokenize(ids[:-1].tolist()) == text


def test_workers_and_partitions_give_identical_bytes(tmp_path, sp_model):
    src = write_jsonl(str(tmp_path / "in.jsonl"), prose_documents() * 2)
    outs = []
    for name, extra in [("w1", []), ("w2", ["--workers", "2"]),
                        ("p3", ["--workers", "2", "--partitions", "3"])]:
        assert preprocess([src], str(tmp_path / name), sp_model, *extra) == 0
        outs.append([open(str(tmp_path / f"{name}_text_document{e}"), "rb").read()
                     for e in (".bin", ".idx")])
    assert outs[0] == outs[1] == outs[2]
    assert not glob.glob(str(tmp_path / "*tmp*")), "temporary files left behind"


def _bad_corpus(path):
    lines = [json.dumps({"text": "good one"}).encode(),           # 1
             b'{"text": "broken',                                 # 2 malformed JSON
             json.dumps({"body": "no text key"}).encode(),        # 3 missing key
             b'{"text": "caf\xe9"}',                              # 4 invalid UTF-8
             json.dumps({"text": "   "}).encode(),                # 5 empty document
             json.dumps({"text": 7}).encode(),                    # 6 not a string
             b"",                                                 # 7 empty line
             json.dumps({"text": "good two"}).encode()]           # 8
    path.write_bytes(b"\n".join(lines) + b"\n")
    return str(path)


def test_bad_lines_are_skipped_and_reported(tmp_path, sp_model, capsys):
    src = _bad_corpus(tmp_path / "bad.jsonl")
    assert preprocess([src], str(tmp_path / "out"), sp_model) == 0
    out = capsys.readouterr().out
    assert "done: 2 documents" in out and "6 skipped lines" in out
    for reason, line in [("malformed JSON", 2), ("missing key 'text'", 3), ("invalid UTF-8", 4),
                         ("key 'text' is not a string", 6)]:
        assert any(reason in row and f"bad.jsonl:{line}" in row for row in out.splitlines()), \
            (reason, out)
    assert any("empty document" in r and "bad.jsonl:5" in r and "bad.jsonl:7" in r
               for r in out.splitlines())
    tok = build_tokenizer("SentencePieceTokenizer", sp_model)
    _, got = read_megatron_pair(str(tmp_path / "out_text_document"))
    assert [tok.detokenize(d[:-1].tolist()) for d in got] == ["good one", "good two"]


def test_strict_fails_and_leaves_nothing(tmp_path, sp_model, capsys):
    src = _bad_corpus(tmp_path / "bad.jsonl")
    assert preprocess([src], str(tmp_path / "out"), sp_model, "--strict", "--workers", "2") == 2
    assert "bad.jsonl:2: malformed JSON" in capsys.readouterr().err
    assert sorted(os.listdir(tmp_path)) == ["bad.jsonl"]


def test_failure_keeps_previous_output_intact(tmp_path, sp_model):
    src = write_jsonl(str(tmp_path / "in.jsonl"), ["first version"])
    assert preprocess([src], str(tmp_path / "out"), sp_model) == 0
    before = open(str(tmp_path / "out_text_document.bin"), "rb").read()
    bad = _bad_corpus(tmp_path / "bad.jsonl")
    assert preprocess([bad], str(tmp_path / "out"), sp_model, "--strict") == 2
    assert open(str(tmp_path / "out_text_document.bin"), "rb").read() == before


def test_plain_text_multiple_keys_and_null_tokenizer(tmp_path):
    txt = tmp_path / "ids.txt"
    txt.write_text("1 2 3\n\n4 5\n")
    rc = tool("preprocess_data").main(["--input", str(txt), "--output-prefix",
                                       str(tmp_path / "n"), "--tokenizer-type", "NullTokenizer",
                                       "--vocab-size", "70000", "--append-eod"])
    assert rc == 0
    dtype, got = read_megatron_pair(str(tmp_path / "n_text_document"))
    assert dtype == np.int32  # vocab >= 65500
    assert [d.tolist() for d in got] == [[1, 2, 3, 69999], [4, 5, 69999]]  # NullTokenizer EOD: V - 1
    src = tmp_path / "two.jsonl"
    src.write_text(json.dumps({"q": "1 2", "a": "3"}) + "\n")
    rc = tool("preprocess_data").main(["--input", str(src), "--json-keys", "q", "a",
                                       "--output-prefix", str(tmp_path / "k"),
                                       "--tokenizer-type", "NullTokenizer", "--vocab-size", "9"])
    assert rc == 0
    assert [d.tolist() for d in read_megatron_pair(str(tmp_path / "k_q_document"))[1]] == [[1, 2]]
    assert [d.tolist() for d in read_megatron_pair(str(tmp_path / "k_a_document"))[1]] == [[3]]


def test_cli_errors_name_the_flag(tmp_path):
    cmd = [sys.executable, os.path.join(ROOT, "tools", "preprocess_data.py"), "--input",
           str(tmp_path / "missing.jsonl"), "--output-prefix", str(tmp_path / "o"),
           "--tokenizer-type", "NullTokenizer", "--vocab-size", "10"]
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=60)
    assert r.returncode == 2 and "--input" in r.stderr and "missing.jsonl" in r.stderr
