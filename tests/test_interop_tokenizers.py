"""Megatron-LM's tokenizer types against independent implementations, on tiny tokenizers built offline.

* GPT2BPETokenizer (our byte-level BPE) == Hugging Face's GPT-2 tokenizer (Rust) on the same
  vocab.json / merges.txt;
* Llama2Tokenizer == [BOS] + SentencePiece, EOD = </s>;
* HuggingFaceTokenizer (a save_pretrained directory) == transformers' AutoTokenizer (BOS included);
* TikTokenizer == a plain rank-merging BPE written here, ids shifted by the special tokens;
* NullTokenizer: current Megatron-LM (V ids, EOD V - 1).
"""
import base64
import json
import os

import numpy as np
import pytest

from test_data_common import prose_documents, tool, train_tiny_tokenizer, write_jsonl
from megatron_sp.data.tokenizers import build_tokenizer

tokenizers = pytest.importorskip("tokenizers")

TRICKY = ["don't stop, I'll've 12345 apples", "  multiple   spaces\tand\ttabs  ", "\n\nnew\nlines\n",
          "Unicode: café naïve 中文 🙂 ÿ", "a<|endoftext|>b", "<|endoftext|>", "x", "1.5e-3 (x)=[y]",
          "CamelCaseWords and UPPER lower"]


@pytest.fixture(scope="module")
def gpt2_files(tmp_path_factory):
    """A 400-token GPT-2-style byte-level BPE trained here: vocab.json + merges.txt."""
    d = str(tmp_path_factory.mktemp("gpt2"))
    bpe = tokenizers.ByteLevelBPETokenizer()
    bpe.train_from_iterator(prose_documents(60), vocab_size=400, min_frequency=2,
                            special_tokens=["<|endoftext|>"], show_progress=False)
    bpe.save_model(d)
    return os.path.join(d, "vocab.json"), os.path.join(d, "merges.txt")


def test_gpt2_bpe_ids_match_hugging_face(gpt2_files):
    vocab, merges = gpt2_files
    ours = build_tokenizer("GPT2BPETokenizer", vocab_file=vocab, merge_file=merges)
    ref = tokenizers.ByteLevelBPETokenizer(vocab, merges)  # Hugging Face's GPT-2 BPE (Rust)
    ref.add_special_tokens(["<|endoftext|>"])
    assert ours.eod == ref.token_to_id("<|endoftext|>") == json.load(open(vocab))["<|endoftext|>"]
    assert ours.vocab_size == len(json.load(open(vocab)))
    texts = prose_documents(80) + TRICKY
    for text in texts:
        ids = ours.tokenize(text)
        assert ids == ref.encode(text).ids, text[:80]
        assert ours.detokenize(ids) == text
    # Megatron's default type with --vocab-file: no --tokenizer-type needed
    assert build_tokenizer(None, vocab_file=vocab, merge_file=merges).tokenize("hello") == ours.tokenize("hello")


def test_gpt2_bpe_legacy_tokenizer_encodes_endoftext_as_text(gpt2_files):
    """--legacy-tokenizer: Megatron's older GPT-2 class, which matches no special token in the text."""
    vocab, merges = gpt2_files
    legacy = build_tokenizer("GPT2BPETokenizer", vocab_file=vocab, merge_file=merges, legacy_tokenizer=True)
    plain = tokenizers.ByteLevelBPETokenizer(vocab, merges)  # no special token registered
    for text in TRICKY + prose_documents(10):
        assert legacy.tokenize(text) == plain.encode(text).ids, text[:80]
    assert legacy.eod not in legacy.tokenize("a<|endoftext|>b")
    assert legacy.detokenize(legacy.tokenize("a<|endoftext|>b")) == "a<|endoftext|>b"
    default = build_tokenizer("GPT2BPETokenizer", vocab_file=vocab, merge_file=merges)
    assert default.tokenize("a<|endoftext|>b").count(default.eod) == 1 and legacy.eod == default.eod


def test_gpt2_bpe_errors_name_the_flags(gpt2_files, tmp_path):
    vocab, _ = gpt2_files
    with pytest.raises(ValueError, match="--merge-file"):
        build_tokenizer("GPT2BPETokenizer", vocab_file=vocab)
    bad = tmp_path / "v.json"
    bad.write_text("not json")
    with pytest.raises(ValueError, match="--tokenizer-model .*could not be loaded as a GPT2BPETokenizer"):
        build_tokenizer("GPT2BPETokenizer", vocab_file=str(bad), merge_file=gpt2_files[1])


def test_llama2_tokenizer_puts_bos_first(tmp_path):
    import sentencepiece as spm
    model = train_tiny_tokenizer(str(tmp_path))
    sp = spm.SentencePieceProcessor(model_file=model)
    tok = build_tokenizer("Llama2Tokenizer", model)
    assert tok.vocab_size == sp.get_piece_size() and tok.eod == sp.eos_id() and tok.bos == sp.bos_id() == 1
    for text in prose_documents(5) + TRICKY:
        assert tok.tokenize(text) == [sp.bos_id()] + sp.encode_as_ids(text)
    assert tok.detokenize(tok.tokenize("hello world")) == "hello world"


def _hf_dir(tmp_path, llama_style: bool) -> str:
    """A save_pretrained directory: a small BPE with <s> </s> <unk>; Llama style adds BOS."""
    transformers = pytest.importorskip("transformers")
    from tokenizers import models, pre_tokenizers, decoders, trainers, processors
    tok = tokenizers.Tokenizer(models.BPE(unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    tok.train_from_iterator(prose_documents(40), trainers.BpeTrainer(
        vocab_size=300, special_tokens=["<unk>", "<s>", "</s>"], show_progress=False,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))
    if llama_style:
        tok.post_processor = processors.TemplateProcessing(single="<s> $A", special_tokens=[("<s>", 1)])
    fast = transformers.PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<s>", eos_token="</s>",
                                                unk_token="<unk>")
    fast.add_special_tokens({"additional_special_tokens": ["<|im_end|>"]})
    d = str(tmp_path / ("llama" if llama_style else "plain"))
    fast.save_pretrained(d)
    return d


@pytest.mark.parametrize("llama_style", [True, False])
def test_huggingface_directory_matches_autotokenizer(tmp_path, llama_style):
    transformers = pytest.importorskip("transformers")
    d = _hf_dir(tmp_path, llama_style)
    ref = transformers.AutoTokenizer.from_pretrained(d)
    tok = build_tokenizer("HuggingFaceTokenizer", d)
    assert tok.eod == ref.eos_token_id == ref.convert_tokens_to_ids("</s>")
    assert tok.vocab_size == len(ref)  # the added <|im_end|> counts
    for text in prose_documents(10) + TRICKY + ["end<|im_end|>"]:
        assert tok.tokenize(text) == ref(text)["input_ids"], text[:60]
    if llama_style:
        assert tok.tokenize("hi")[0] == ref.bos_token_id
    # the tokenizer.json file alone works too (no config: EOD found by name)
    assert build_tokenizer("HuggingFaceTokenizer", os.path.join(d, "tokenizer.json")).eod == tok.eod


def _rank_bpe(ranks: dict, piece: bytes) -> list:
    """Independent reference: merge the adjacent pair of lowest rank until none is left."""
    parts = [bytes([b]) for b in piece]
    while len(parts) > 1:
        best = min(range(len(parts) - 1), key=lambda i: ranks.get(parts[i] + parts[i + 1], float("inf")))
        if parts[best] + parts[best + 1] not in ranks:
            break
        parts[best:best + 2] = [parts[best] + parts[best + 1]]
    return [ranks[p] for p in parts]


@pytest.mark.parametrize("pattern", ["v1", "v2"])
def test_tiktokenizer_matches_a_reference_bpe(gpt2_files, tmp_path, pattern):
    pytest.importorskip("tiktoken")
    import regex
    from megatron_sp.data.gpt2_bpe import byte_symbols
    from megatron_sp.data.hf_tokenizer import TIKTOKEN_PATTERNS
    to_byte = {c: b for b, c in byte_symbols().items()}
    ranks = {bytes([b]): b for b in range(256)}
    for line in open(gpt2_files[1], encoding="utf-8").read().splitlines()[1:]:
        left, right = line.split(" ")
        merged = bytes(to_byte[c] for c in left + right)
        ranks.setdefault(merged, len(ranks))
    path = tmp_path / "tiktoken.json"
    inv = sorted(ranks, key=ranks.get)
    path.write_text(json.dumps([{"rank": i, "token_bytes": base64.b64encode(t).decode(), "token_str": ""}
                                for i, t in enumerate(inv)]))
    specials = 16
    tok = build_tokenizer("TikTokenizer", str(path), vocab_size=specials + len(ranks), tiktoken_pattern=pattern,
                          tiktoken_num_special_tokens=specials)
    assert tok.eod == 2 and tok.vocab_size == specials + len(ranks)
    words = regex.compile(TIKTOKEN_PATTERNS[pattern])
    for text in prose_documents(20) + [t for t in TRICKY if "<|" not in t]:
        expected = [specials + r for w in words.findall(text) for r in _rank_bpe(ranks, w.encode("utf-8"))]
        assert tok.tokenize(text) == expected, text[:60]
        assert tok.detokenize(tok.tokenize(text)) == text
    assert tok.tokenize("a</s>") == tok.tokenize("a") + [2]  # special tokens in the text, as Megatron
    legacy = build_tokenizer("TikTokenizer", str(path), vocab_size=specials + len(ranks), tiktoken_pattern=pattern,
                             tiktoken_num_special_tokens=specials, legacy_tokenizer=True)
    for text in ["a</s>", "<s>x<unk>", "</s>"] + TRICKY:  # Megatron's legacy class: special-token text is text
        expected = [specials + r for w in words.findall(text) for r in _rank_bpe(ranks, w.encode("utf-8"))]
        assert legacy.tokenize(text) == expected, text
    assert legacy.eod == tok.eod and legacy.vocab_size == tok.vocab_size
    with pytest.raises(ValueError, match="--vocab-size"):
        build_tokenizer("TikTokenizer", str(path), vocab_size=specials + len(ranks) + 1,
                        tiktoken_num_special_tokens=specials)


def test_null_tokenizer_is_current_megatron():
    tok = build_tokenizer("NullTokenizer", vocab_size=100)
    assert tok.vocab_size == 100 and tok.eod == 99  # current Megatron-LM: V ids, EOD the last
    assert build_tokenizer("NullTokenizer", vocab_size=100, null_tokenizer_eod_id=0).eod == 0
    with pytest.raises(ValueError, match="outside"):
        tok.tokenize("3 100")
    old = build_tokenizer("NullTokenizer", vocab_size=100, legacy_tokenizer=True)  # megatron-core <= 0.17
    assert old.vocab_size == 101 and old.eod == 100 and old.tokenize("3 100") == [3, 100]
    with pytest.raises(ValueError, match="--null-tokenizer-eod-id 5 with --legacy-tokenizer"):
        build_tokenizer("NullTokenizer", vocab_size=100, null_tokenizer_eod_id=5, legacy_tokenizer=True)


def test_a_checkpoint_of_the_earlier_null_tokenizer_resumes_with_the_same_flags(tmp_path, capsys):
    """This codebase's NullTokenizer had V + 1 ids (EOD V) before it took current Megatron's V ids:
    --vocab-size 512 trained a padded vocabulary of 640, and resuming such a checkpoint with the
    same flags stopped ("saved with ... (padded vocab) 640, this run has 512").  Such a checkpoint
    (flags without null_tokenizer_eod_id) now resumes with its own vocabulary and EOD, and the
    resumed loss is the uninterrupted run's."""
    from megatron_sp import checkpointing as ckpt
    from megatron_sp.training.loop import pretrain
    flags = ("--mock-data --tokenizer-type NullTokenizer --vocab-size 512 --num-layers 1 --hidden-size 16 "
             "--num-attention-heads 2 --seq-length 16 --micro-batch-size 2 --global-batch-size 2 --lr 1e-2 "
             "--train-iters 3 --log-interval 100 --eval-interval 0 --hidden-dropout 0 --attention-dropout 0").split()
    full = pretrain(flags + ["--legacy-tokenizer"])  # the earlier tokenizer, uninterrupted
    save = str(tmp_path / "ck")
    first = pretrain(flags + ["--legacy-tokenizer", "--save", save, "--exit-interval", "2"])
    assert first == full[:2]
    path = os.path.join(save, "iter_0000002")
    meta = ckpt.read_metadata(path)  # as the earlier code wrote it: neither flag existed
    assert meta["model_shape"]["padded_vocab_size"] == 640
    del meta["args"]["null_tokenizer_eod_id"], meta["args"]["legacy_tokenizer"]
    with open(os.path.join(path, ckpt.METADATA), "w") as f:
        json.dump(meta, f)
    capsys.readouterr()
    rest = pretrain(flags + ["--load", save])  # the same flags as the earlier run's
    assert rest == full[2:], (rest, full)
    assert "this run keeps it, as --legacy-tokenizer" in capsys.readouterr().out
    with pytest.raises(ValueError, match=r"padded vocab\) 640, this run has 512"):  # a current run: V ids
        pretrain(flags + ["--load", save, "--null-tokenizer-eod-id", "511"])


def test_preprocess_data_with_megatron_tokenizers(gpt2_files, tmp_path):
    from megatron_sp.data.indexed_dataset import IndexedDataset
    vocab, merges = gpt2_files
    docs = prose_documents(8)
    inp = write_jsonl(str(tmp_path / "in.jsonl"), docs)
    out = str(tmp_path / "gpt2")
    assert tool("preprocess_data").main(["--input", inp, "--output-prefix", out, "--vocab-file", vocab,
                                         "--merge-file", merges, "--append-eod", "--workers", "2"]) == 0
    tok = build_tokenizer("GPT2BPETokenizer", vocab_file=vocab, merge_file=merges)
    ds = IndexedDataset(out + "_text_document")
    for i, text in enumerate(docs):
        np.testing.assert_array_equal(ds.get(i), tok.tokenize(text) + [tok.eod])
