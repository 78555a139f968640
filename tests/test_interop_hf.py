"""Hugging Face import/export (tools/checkpoint) against tiny random transformers models (no download).

* import -> our model's logits equal the Hugging Face model's (fp32, <= 1e-5), for Llama (GQA, tied
  and untied), Llama 3.1 RoPE scaling, Qwen2 (QKV biases), Mistral and GPT-2;
* import -> export gives back the same tensors and a model transformers loads with the same logits;
* an imported Llama trained one step at TP 2 x CP 2: its first loss is the Hugging Face model's loss
  on the same batch, and the exported result computes what our model computes.
"""
import json
import os
import sys

import pytest
import torch

from dist_utils import rel_err, run_distributed

transformers = pytest.importorskip("transformers")
pytest.importorskip("safetensors")
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(ROOT, "tools", "checkpoint"))
sys.path.insert(0, os.path.join(ROOT, "tools"))

import export_hf  # noqa: E402
import import_hf  # noqa: E402
from generate_text import load_model  # noqa: E402

LLAMA = dict(vocab_size=128, hidden_size=32, intermediate_size=48, num_hidden_layers=2, num_attention_heads=4,
             num_key_value_heads=2, max_position_embeddings=256, rope_theta=5000.0, rms_norm_eps=1e-6,
             tie_word_embeddings=False)
CASES = {
    "llama-gqa": (transformers.LlamaConfig, LLAMA),
    "llama-tied-mha": (transformers.LlamaConfig, dict(LLAMA, num_key_value_heads=4, tie_word_embeddings=True)),
    "llama-biases": (transformers.LlamaConfig, dict(LLAMA, attention_bias=True, mlp_bias=True)),
    "llama31-rope-scaling": (transformers.LlamaConfig, dict(LLAMA, max_position_embeddings=16384, rope_scaling={
        "rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
        "original_max_position_embeddings": 8192}, rope_theta=500000.0)),
    "qwen2": (transformers.Qwen2Config, dict(LLAMA, tie_word_embeddings=True)),
    "mistral": (transformers.MistralConfig, dict(LLAMA, sliding_window=None)),
    # a window shorter than the 128 tokens compared: the logits past it need --window-size 63,0
    "mistral-window": (transformers.MistralConfig, dict(LLAMA, sliding_window=64)),
    "gpt2": (transformers.GPT2Config, dict(vocab_size=100, n_embd=32, n_layer=2, n_head=4, n_positions=128,
                                           activation_function="gelu_new", resid_pdrop=0.0, embd_pdrop=0.0,
                                           attn_pdrop=0.0)),
}


def _hf_model(name, path):
    cls, kwargs = CASES[name]
    torch.manual_seed(0)
    config = cls(**kwargs)
    model = transformers.AutoModelForCausalLM.from_config(config, attn_implementation="eager").float().eval()
    with torch.no_grad():  # random biases and norm weights too (they start at 0 and 1)
        for n, p in model.named_parameters():
            if n.endswith("bias") or "norm" in n or "ln_" in n:
                p.add_(0.1 * torch.randn_like(p))
    model.save_pretrained(path)
    return model


def _ours_logits(ckpt, tokens):
    model, stored = load_model(ckpt)
    with torch.no_grad():
        return model(tokens, torch.arange(tokens.shape[1]).expand_as(tokens)), stored


@pytest.mark.parametrize("name", list(CASES))
def test_import_matches_hf_logits_and_export_round_trips(name, tmp_path):
    hf_dir, ckpt, out = (str(tmp_path / d) for d in ("hf", "ckpt", "out"))
    ref = _hf_model(name, hf_dir)
    assert import_hf.main(["--hf-dir", hf_dir, "--save", ckpt]) == 0
    tokens = torch.randint(0, ref.config.vocab_size, (2, 128), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        expected = ref(tokens).logits
    ours, stored = _ours_logits(ckpt, tokens)
    assert stored.padded_vocab_size % 128 == 0
    assert rel_err(ours[..., :ref.config.vocab_size], expected) <= 1e-5  # padded rows are extra classes only
    if name == "llama31-rope-scaling":  # the scaling matters at this length: without it the logits differ
        model, _ = load_model(ckpt)
        model.rotary.rope_scaling_factor = None  # the same base, unscaled frequencies
        with torch.no_grad():
            assert rel_err(model(tokens, torch.arange(128).expand_as(tokens))[..., :128], expected) > 1e-5 * 4
    if name == "mistral-window":  # the window is in the checkpoint, and it matters past 64 tokens
        assert stored.window_size in ([63, 0], (63, 0))
        model, _ = load_model(ckpt)
        for layer in model.decoder.layers.values():
            layer.self_attention.core.window = None
        with torch.no_grad():
            assert rel_err(model(tokens, torch.arange(128).expand_as(tokens))[..., :128], expected) > 1e-3

    assert export_hf.main(["--load", ckpt, "--save-dir", out]) == 0
    back = transformers.AutoModelForCausalLM.from_pretrained(out, attn_implementation="eager").float().eval()
    assert type(back).__name__ == ("LlamaForCausalLM" if name == "mistral" else type(ref).__name__)  # same math
    ref_sd, back_sd = ref.state_dict(), back.state_dict()
    assert set(back_sd) == set(ref_sd)
    for k in ref_sd:
        assert torch.equal(back_sd[k], ref_sd[k]), k
    with torch.no_grad():
        assert rel_err(back(tokens).logits, expected) <= 1e-6


def test_refusals_name_the_reason(tmp_path, capsys):
    hf_dir = str(tmp_path / "hf")
    _hf_model("llama-gqa", hf_dir)
    cfg = json.load(open(os.path.join(hf_dir, "config.json")))
    for change, needle in (({"hidden_act": "gelu"}, "hidden_act 'gelu'"),
                           ({"rope_scaling": {"rope_type": "yarn", "factor": 4.0}, "rope_parameters": None},
                            "rope_scaling of type 'yarn'"),
                           ({"model_type": "qwen2", "use_sliding_window": True, "sliding_window": 64,
                             "max_window_layers": 1}, "Qwen2 sliding_window 64")):
        json.dump(dict(cfg, **change), open(os.path.join(hf_dir, "config.json"), "w"))
        assert import_hf.main(["--hf-dir", hf_dir, "--save", str(tmp_path / "x")]) == 2
        errors = [ln for ln in capsys.readouterr().err.splitlines() if ln.startswith("error:")]
        assert len(errors) == 1 and needle in errors[0], errors


def _tp2_cp2_step(rank, world, argv):
    from megatron_sp.training.loop import pretrain
    return pretrain(argv)


def test_imported_llama_trains_at_tp2_cp2_from_hf_loss_and_exports(tmp_path):
    """TP 2 x CP 2 from an imported Llama: first loss = HF's loss on the batch; export == our model."""
    hf_dir, ckpt, trained, out = (str(tmp_path / d) for d in ("hf", "ckpt", "trained", "out"))
    ref = _hf_model("llama-gqa", hf_dir)
    assert import_hf.main(["--hf-dir", hf_dir, "--save", ckpt, "--seq-length", "32"]) == 0
    argv = ["--load", ckpt, "--use-checkpoint-args", "--mock-data", "--micro-batch-size", "2", "--global-batch-size",
            "4", "--lr", "1e-3", "--train-iters", "1", "--eval-interval", "0", "--tensor-model-parallel-size", "2",
            "--sequence-parallel", "--context-parallel-size", "2", "--save", trained]
    losses = run_distributed(_tp2_cp2_step, 4, argv)[0]
    # the same batch through the Hugging Face model
    from megatron_sp.arguments import build_parser, validate_args
    from megatron_sp.training.batches import build_datasets, build_tokenizer
    args = validate_args(build_parser().parse_args(argv), 4)
    train = build_datasets(args, build_tokenizer(args))[0]
    tokens = torch.stack([train[i]["tokens"] for i in range(4)])
    labels = torch.stack([train[i]["labels"] for i in range(4)])
    with torch.no_grad():
        logits = ref(tokens).logits
    hf_loss = torch.nn.functional.cross_entropy(logits.reshape(-1, logits.shape[-1]), labels.reshape(-1)).item()
    assert abs(losses[0] - hf_loss) <= 1e-5 * hf_loss, (losses[0], hf_loss)

    assert export_hf.main(["--load", trained, "--save-dir", out]) == 0
    back = transformers.AutoModelForCausalLM.from_pretrained(out, attn_implementation="eager").float().eval()
    ours, _ = _ours_logits(trained, tokens)
    with torch.no_grad():
        assert rel_err(back(tokens).logits, ours) <= 1e-5
        assert rel_err(back(tokens).logits, logits) > 1e-4  # it did train


@pytest.mark.parametrize("flags,arch", [
    ("--position-embedding-type rope --swiglu --normalization RMSNorm --disable-bias-linear --apply-layernorm-1p "
     "--group-query-attention --num-query-groups 2 --use-rope-scaling --rope-scaling-factor 4", "LlamaForCausalLM"),
    ("--position-embedding-type rope --swiglu --normalization RMSNorm --disable-bias-linear --add-qkv-bias "
     "--untie-embeddings-and-output-weights", "Qwen2ForCausalLM"),
    ("--apply-layernorm-1p --openai-gelu", "GPT2LMHeadModel"),
    ("--disable-bias-linear", "GPT2LMHeadModel"),
])
def test_export_of_trained_checkpoints(flags, arch, tmp_path, capfd):
    """Checkpoints trained here (LayerNorm-1p folded, padded vocabulary 128 trimmed to 100) export exactly;
    transformers loads them without a warning (Llama 3.1 scaling: max_position_embeddings above the original)."""
    from megatron_sp.training.loop import pretrain
    ckpt, out = str(tmp_path / "ck"), str(tmp_path / "out")
    pretrain(["--mock-data", "--vocab-size", "100", "--num-layers", "2", "--hidden-size", "32",
              "--num-attention-heads", "4", "--seq-length", "32", "--micro-batch-size", "2", "--lr", "1e-2",
              "--train-iters", "2", "--eval-interval", "0", "--hidden-dropout", "0", "--attention-dropout", "0",
              "--save", ckpt] + flags.split())
    assert export_hf.main(["--load", ckpt, "--save-dir", out]) == 0
    capfd.readouterr()
    hf = transformers.AutoModelForCausalLM.from_pretrained(out, attn_implementation="eager").float().eval()
    assert "max_position_embeddings" not in capfd.readouterr().err
    assert type(hf).__name__ == arch and hf.config.vocab_size == 100
    scaling = json.load(open(os.path.join(out, "config.json"))).get("rope_scaling") or {}
    if "original_max_position_embeddings" in scaling:
        assert hf.config.max_position_embeddings > scaling["original_max_position_embeddings"]
    tokens = torch.randint(0, 100, (2, 32), generator=torch.Generator().manual_seed(2))
    ours, _ = _ours_logits(ckpt, tokens)
    with torch.no_grad():
        assert rel_err(hf(tokens).logits, ours[..., :100]) <= 1e-5


def test_a_truncated_safetensors_file_is_named_in_one_line(tmp_path, capsys):
    hf_dir = str(tmp_path / "hf")
    _hf_model("llama-gqa", hf_dir)
    weights = os.path.join(hf_dir, "model.safetensors")
    data = open(weights, "rb").read()
    open(weights, "wb").write(data[:len(data) // 2])  # an interrupted download
    capsys.readouterr()
    assert import_hf.main(["--hf-dir", hf_dir, "--save", str(tmp_path / "x")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: ") and weights in err[0] and "truncated" in err[0], err


def test_mistral_window_beyond_the_positions_is_recorded_and_exported(tmp_path):
    hf_dir, ckpt, out = (str(tmp_path / d) for d in ("hf", "ckpt", "out"))
    _hf_model("mistral", hf_dir)
    cfg = json.load(open(os.path.join(hf_dir, "config.json")))
    json.dump(dict(cfg, sliding_window=4096), open(os.path.join(hf_dir, "config.json"), "w"))  # > 256 positions
    assert import_hf.main(["--hf-dir", hf_dir, "--save", ckpt]) == 0
    _, stored = load_model(ckpt)
    assert list(stored.window_size) == [4095, 0]
    assert export_hf.main(["--load", ckpt, "--save-dir", out]) == 0
    back = json.load(open(os.path.join(out, "config.json")))
    assert back["architectures"] == ["MistralForCausalLM"] and back["sliding_window"] == 4096
