"""Tokenizers: Megatron's ids and EOD for each --tokenizer-type, round trips, clear errors."""
import builtins

import pytest
import sentencepiece as spm

from test_data_common import prose_documents, train_tiny_tokenizer
from megatron_sp.data.tokenizers import build_tokenizer


@pytest.fixture(scope="module")
def sp_model(tmp_path_factory):
    return train_tiny_tokenizer(str(tmp_path_factory.mktemp("tok")))


def test_null_tokenizer_matches_megatron():
    tok = build_tokenizer("NullTokenizer", vocab_size=100)
    assert tok.vocab_size == 100 and tok.eod == 99  # current Megatron-LM: V ids, EOD the last one
    assert tok.tokenize("3 1 4 1 5") == [3, 1, 4, 1, 5]
    assert tok.detokenize([3, 1, 4]) == "3 1 4"
    with pytest.raises(ValueError, match="outside"):
        tok.tokenize("3 100")


def test_sentencepiece_round_trip_is_exact(sp_model):
    tok = build_tokenizer("SentencePieceTokenizer", sp_model)
    for text in prose_documents():
        ids = tok.tokenize(text)
        assert all(0 <= i < tok.vocab_size for i in ids)
        assert tok.detokenize(ids) == text


def test_sentencepiece_special_tokens_like_megatron(sp_model):
    sp = spm.SentencePieceProcessor(model_file=sp_model)
    tok = build_tokenizer("SentencePieceTokenizer", sp_model)
    # train_tokenizer.py puts Megatron's special pieces in the model: no extra ids
    assert tok.vocab_size == sp.get_piece_size()
    assert tok.eod == sp.piece_to_id("<EOD>") != sp.unk_id()
    ids = tok.tokenize("one<EOD>two")
    assert ids.count(tok.eod) == 1
    assert tok.detokenize(ids) == "one <EOD> two"  # Megatron pads specials with spaces
    gpt = build_tokenizer("GPTSentencePieceTokenizer", sp_model)
    assert gpt.eod == sp.eos_id() == 2 and gpt.vocab_size == sp.get_piece_size()


def test_foreign_sentencepiece_model_gets_extra_special_ids(tmp_path):
    text = tmp_path / "t.txt"
    text.write_text("\n".join(prose_documents(10)))
    spm.SentencePieceTrainer.train(input=str(text), model_prefix=str(tmp_path / "plain"),
                                   vocab_size=300, minloglevel=2)
    tok = build_tokenizer("SentencePieceTokenizer", str(tmp_path / "plain.model"))
    # <CLS> <SEP> <EOD> <MASK> and <PAD> (pad_id=-1) are appended after the 300 pieces
    assert tok.vocab_size == 305 and tok.eod == 302


@pytest.mark.parametrize("kind,kwargs,match", [
    ("BertWordPieceLowerCase", {}, r"--tokenizer-type 'BertWordPieceLowerCase' is not supported"),
    ("GPT2BPETokenizer", {}, "needs --vocab-file"),
    ("SentencePieceTokenizer", {}, "needs --tokenizer-model"),
    ("SentencePieceTokenizer", {"tokenizer_model": "/no/such.model"},
     r"--tokenizer-model '/no/such.model'"),
    ("NullTokenizer", {}, "needs --vocab-size"),
])
def test_bad_arguments_name_the_flag(kind, kwargs, match):
    with pytest.raises(ValueError, match=match):
        build_tokenizer(kind, **kwargs)


def test_garbage_model_file(tmp_path):
    bad = tmp_path / "bad.model"
    bad.write_bytes(b"this is not a sentencepiece model")
    with pytest.raises(ValueError, match="--tokenizer-model .*could not be loaded"):
        build_tokenizer("SentencePieceTokenizer", str(bad))


def test_huggingface_without_package_is_a_clear_error(tmp_path, monkeypatch):
    path = tmp_path / "tokenizer.json"
    path.write_text("{}")
    real_import = builtins.__import__

    def no_tokenizers(name, *a, **k):
        if name == "tokenizers":
            raise ImportError("no tokenizers")
        return real_import(name, *a, **k)

    monkeypatch.setattr(builtins, "__import__", no_tokenizers)
    with pytest.raises(ValueError, match="pip install tokenizers"):
        build_tokenizer("HuggingFaceTokenizer", str(path))


def test_unigram_training(tmp_path):
    model = train_tiny_tokenizer(str(tmp_path), vocab=500, model_type="unigram")
    tok = build_tokenizer("SentencePieceTokenizer", model)
    text = prose_documents(3)[2]
    assert tok.detokenize(tok.tokenize(text)) == text
