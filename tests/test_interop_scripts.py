"""The real launch scripts' flag lists run, at CPU sizes, with only sizes, paths and features that
cannot exist here changed (fp8, pipeline stages, NCCL without GPUs, a TensorBoard not installed):

* Megatron-LM gpt3 175B: GPT2BPETokenizer data, TP 2 (was 8), two ranks;
* Megatron-LM Llama-3 8B fp8, mock-data branch: one rank, DataLoader worker, sample-based schedule;
* the same script's real-data branch: a Hugging Face tokenizer directory, parsed and set up;
* Megatron-DeepSpeed Llama-2: GPTSentencePieceTokenizer data, TP 2, its DeepSpeed config file.
"""
import importlib.util
import json
import os

import pytest
import torch

from dist_utils import run_distributed
from interop_common import flatten, groups, replace, script_flags
from test_data_common import prose_documents, tool, train_tiny_tokenizer, write_jsonl
from megatron_sp.training.loop import pretrain

tokenizers = pytest.importorskip("tokenizers")
HAVE_TB = importlib.util.find_spec("tensorboard") is not None
FP8 = dict(fp8_format=None, fp8_amax_history_len=None, fp8_amax_compute_algo=None, fp8_param_gather=None)


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    """600 one-paragraph documents (enough for --split 949,50,1 to give the test split one)."""
    d = tmp_path_factory.mktemp("scripts")
    docs = [p for doc in prose_documents() for p in doc.split("\n\n") if p.strip()][:600]
    return str(d), write_jsonl(str(d / "corpus.jsonl"), docs)


def _preprocess(corpus, name, *tokenizer_flags):
    d, jsonl = corpus
    prefix = os.path.join(d, name)
    assert tool("preprocess_data").main(["--input", jsonl, "--output-prefix", prefix, "--append-eod",
                                         *tokenizer_flags]) == 0
    return prefix + "_text_document"


def _cpu(words, tmp, **changes):
    """The script's flags with CPU sizes and local paths; TensorBoard kept only where installed."""
    if not torch.cuda.is_available():  # `--attention-backend fused` is cuDNN's: refused on CPU in one line
        changes.setdefault("attention_backend", None)  # (tests/test_attention_backend.py); CPU runs the default
    gs = replace(groups(words), **changes)
    if not HAVE_TB:
        gs = [g for g in gs if g[0] != "--tensorboard-dir"]
    return flatten(gs)


def test_gpt3_175b_script_runs(corpus, tmp_path, capfd):
    d = corpus[0]
    bpe = tokenizers.ByteLevelBPETokenizer()
    bpe.train_from_iterator(prose_documents(60), vocab_size=300, special_tokens=["<|endoftext|>"],
                            show_progress=False)
    bpe.save_model(d)
    vocab, merges = os.path.join(d, "vocab.json"), os.path.join(d, "merges.txt")
    data = _preprocess(corpus, "gpt2", "--vocab-file", vocab, "--merge-file", merges)
    words = script_flags("gpt3_175b", {"DATA": data, "VOCAB": vocab, "MERGES": merges,
                                       "CKPT": str(tmp_path / "ck"), "TB": str(tmp_path / "tb")})
    argv = _cpu(words, tmp_path, num_layers=2, hidden_size=64, num_attention_heads=4, seq_length=64,
                max_position_embeddings=64, global_batch_size=4, rampup_batch_size=[2, 2, 4], train_iters=3,
                lr_decay_iters=3, tensor_model_parallel_size=2, pipeline_model_parallel_size=1, log_interval=1,
                eval_iters=1)
    losses = run_distributed(_run, 2, argv)[0]  # two ranks, as torchrun starts them (tests/test_pretrain_cli.py)
    out = capfd.readouterr().out
    assert len(losses) == 3 and "at the end of a ramp-up from 2 by 2 every 4 samples to 4" in out
    assert [ln.split("global batch size:")[1].split("|")[0].strip() for ln in out.splitlines()
            if ln.startswith(" iteration")] == ["2", "2", "4"]  # the ramp, in consumed samples 0, 2, 4
    assert "validation loss at iteration 3 on test set" in out
    assert os.path.isdir(tmp_path / "ck" / "iter_0000003")


def test_llama3_8b_fp8_script_mock_branch_runs(tmp_path, capsys):
    words = script_flags("llama3_8b_fp8_mock", {"CKPT": str(tmp_path / "ck"), "TB": str(tmp_path / "tb"),
                                                "CACHE": str(tmp_path / "cache")})
    argv = _cpu(words, tmp_path, num_layers=2, hidden_size=64, ffn_hidden_size=128, num_attention_heads=4,
                num_query_groups=2, kv_channels=16, seq_length=64, max_position_embeddings=64, global_batch_size=4,
                train_samples=12, lr_decay_samples=12, lr_warmup_samples=4, vocab_size=256, eval_iters=1,
                eval_interval=2, **FP8)
    losses = pretrain(argv)
    out = capsys.readouterr().out
    assert len(losses) == 3 and all(x == x for x in losses)
    assert "> note: --grad-reduce-in-bf16 has no effect here" in out and "> note: --profile has no effect" in out
    assert "validation loss at iteration 2" in out and "on test set" not in out  # --split '99,1,0'
    assert os.listdir(tmp_path / "cache") and os.path.isdir(tmp_path / "ck" / "iter_0000003")


def test_llama3_8b_fp8_script_real_data_branch_sets_up(corpus, tmp_path):
    transformers = pytest.importorskip("transformers")
    from tokenizers import decoders, models, pre_tokenizers, trainers
    tok = tokenizers.Tokenizer(models.BPE())
    tok.pre_tokenizer, tok.decoder = pre_tokenizers.ByteLevel(add_prefix_space=False), decoders.ByteLevel()
    tok.train_from_iterator(prose_documents(40), trainers.BpeTrainer(
        vocab_size=300, special_tokens=["<|begin_of_text|>", "<|end_of_text|>"], show_progress=False,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))
    hf_dir = str(tmp_path / "tokenizer")
    transformers.PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<|begin_of_text|>",
                                         eos_token="<|end_of_text|>").save_pretrained(hf_dir)
    data = _preprocess(corpus, "hf", "--tokenizer-type", "HuggingFaceTokenizer", "--tokenizer-model", hf_dir)
    words = script_flags("llama3_8b_fp8_real", {"DATA": data, "TOKENIZER": hf_dir, "CKPT": str(tmp_path / "ck"),
                                                "TB": str(tmp_path / "tb"), "CACHE": str(tmp_path / "cache")})
    argv = _cpu(words, tmp_path, num_layers=2, hidden_size=64, ffn_hidden_size=128, num_attention_heads=4,
                num_query_groups=2, kv_channels=16, seq_length=64, max_position_embeddings=64, global_batch_size=4,
                train_samples=12, lr_decay_samples=12, lr_warmup_samples=4, eval_iters=1, **FP8)
    from megatron_sp.arguments import build_parser
    from megatron_sp.training.loop import setup
    ctx = setup(build_parser().parse_args(argv))
    assert ctx.tokenizer.eod == ctx.tokenizer.tok.token_to_id("<|end_of_text|>")
    assert ctx.datasets[2] is None and ctx.datasets[0][0]["tokens"].shape == (64,)
    assert any("--vocab-size 128256 has no effect with --tokenizer-type HuggingFaceTokenizer" in n
               for n in ctx.args.startup_notes)


def _run(rank, world, argv):
    return pretrain(argv)


def test_deepspeed_llama2_script_runs(corpus, tmp_path):
    sp_model = train_tiny_tokenizer(corpus[0])
    data = _preprocess(corpus, "sp", "--tokenizer-type", "GPTSentencePieceTokenizer", "--tokenizer-model", sp_model)
    ds_config = tmp_path / "deepspeed.json"  # what the script writes, from its (here: CPU-sized) variables
    ds_config.write_text(json.dumps({"train_batch_size": 4, "train_micro_batch_size_per_gpu": 2, "steps_per_print": 1,
                                     "zero_optimization": {"stage": 0}, "bf16": {"enabled": True}}))
    words = script_flags("deepspeed_llama2", {"DATA": data, "TOKENIZER": sp_model, "CKPT": str(tmp_path / "ck"),
                                              "DS_CONFIG": str(ds_config)})
    argv = _cpu(words, tmp_path, pipeline_model_parallel_size=1, num_layers=2, hidden_size=64, ffn_hidden_size=128,
                num_attention_heads=4, num_key_value_heads=2, micro_batch_size=2, global_batch_size=4,
                seq_length=64, max_position_embeddings=64, train_iters=2, lr_warmup_iters=1, eval_iters=1,
                distributed_backend="gloo")
    losses = run_distributed(_run, 2, argv)[0]
    assert len(losses) == 2 and all(x == x for x in losses)
    assert os.path.isdir(tmp_path / "ck" / "iter_0000002")
