"""Hugging Face ``config.json`` <-> this codebase's model flags.

Families (the GPT here computes each exactly):

=========  ===================================================  ============================================
family     Hugging Face                                          flags
=========  ===================================================  ============================================
llama      LlamaForCausalLM, MistralForCausalLM (full attention)  --position-embedding-type rope --swiglu
                                                                   --normalization RMSNorm --disable-bias-linear
                                                                   (attention_bias + mlp_bias: biases kept)
mistral    MistralForCausalLM with sliding_window W              as llama, plus --window-size W-1,0 (key j
                                                                   visible to query i iff i - j < W); kept
                                                                   even when W >= the training length
qwen2      Qwen2ForCausalLM                                      as llama, plus --add-qkv-bias
gpt2       GPT2LMHeadModel                                       learned positions, LayerNorm, GELU (gelu_new:
                                                                   --openai-gelu), biases
=========  ===================================================  ============================================

RoPE scaling: Llama 3.1's ``llama3`` kind with Megatron's constants (low 1, high 4, original 8192)
is ``--use-rope-scaling --rope-scaling-factor F``; the ``linear`` kind is
``--rotary-seq-len-interpolation-factor F``; other kinds, and Qwen2's per-layer sliding windows,
are refused.  A checkpoint with ``--window-size`` exports as Mistral with its window.
Both ``rope_theta``/``rope_scaling`` (transformers 4) and ``rope_parameters`` (5) are read.
"""
from __future__ import annotations

import os
import sys

sys.path.insert(0, os.path.abspath(os.path.join(os.path.dirname(__file__), os.pardir, os.pardir)))

from megatron_sp.model.config import default_ffn_hidden_size  # noqa: E402

LLAMA3_CONSTANTS = {"low_freq_factor": 1.0, "high_freq_factor": 4.0, "original_max_position_embeddings": 8192}
LLAMA_TYPES = ("llama", "mistral", "qwen2")


class ConversionError(ValueError):
    """A model this codebase cannot compute exactly; the message says why."""


def _rope(cfg: dict) -> tuple:
    """``(theta, scaling dict or None)`` from either transformers layout."""
    params = dict(cfg.get("rope_parameters") or {})
    scaling = cfg.get("rope_scaling") or params
    theta = cfg.get("rope_theta", params.get("rope_theta", 10000.0))
    kind = (scaling or {}).get("rope_type", (scaling or {}).get("type", "default"))
    return float(theta), (None if kind in (None, "default") else dict(scaling, rope_type=kind))


def flags_from_hf_config(cfg: dict) -> list:
    """Our model flags for a Hugging Face ``config.json`` (a dict); ConversionError if not exact."""
    kind = cfg.get("model_type")
    h, heads = cfg.get("hidden_size", cfg.get("n_embd")), cfg.get("num_attention_heads", cfg.get("n_head"))
    if kind == "gpt2":
        act = cfg.get("activation_function", "gelu_new")
        if act not in ("gelu", "gelu_new", "gelu_pytorch_tanh"):
            raise ConversionError(f"GPT-2 activation_function {act!r} is not supported (gelu, gelu_new)")
        if cfg.get("scale_attn_by_inverse_layer_idx") or cfg.get("reorder_and_upcast_attn") or \
                cfg.get("scale_attn_weights") is False:
            raise ConversionError("GPT-2 attention scaling other than 1/sqrt(head dim) is not supported")
        flags = ["--num-layers", cfg["n_layer"], "--hidden-size", h, "--num-attention-heads", heads,
                 "--ffn-hidden-size", cfg.get("n_inner") or 4 * h, "--max-position-embeddings", cfg["n_positions"],
                 "--position-embedding-type", "learned_absolute", "--normalization", "LayerNorm",
                 "--norm-epsilon", cfg.get("layer_norm_epsilon", 1e-5),
                 "--init-method-std", cfg.get("initializer_range", 0.02)]
        flags += ["--openai-gelu"] if act != "gelu" else []
        flags += [] if cfg.get("tie_word_embeddings", True) else ["--untie-embeddings-and-output-weights"]
        return [str(f) for f in flags]
    if kind not in LLAMA_TYPES:
        raise ConversionError(f"model_type {kind!r} is not supported: import llama, mistral, qwen2 or gpt2 models")
    if cfg.get("hidden_act", "silu") != "silu":
        raise ConversionError(f"hidden_act {cfg['hidden_act']!r} is not supported (SwiGLU needs silu)")
    window = cfg.get("sliding_window")
    if kind == "qwen2" and window is not None and cfg.get("use_sliding_window") and \
            window < cfg.get("max_position_embeddings", 0):
        raise ConversionError(f"Qwen2 sliding_window {window} on the layers from max_window_layers "
                              f"{cfg.get('max_window_layers')}: windows on some layers only are not supported "
                              "(--window-size applies to every layer)")
    groups = cfg.get("num_key_value_heads") or heads
    head_dim = cfg.get("head_dim") or h // heads
    theta, scaling = _rope(cfg)
    flags = ["--num-layers", cfg["num_hidden_layers"], "--hidden-size", h, "--num-attention-heads", heads,
             "--ffn-hidden-size", cfg["intermediate_size"], "--max-position-embeddings",
             cfg.get("max_position_embeddings", 4096), "--position-embedding-type", "rope", "--rotary-base", theta,
             "--normalization", "RMSNorm", "--norm-epsilon", cfg.get("rms_norm_eps", 1e-6), "--swiglu",
             "--init-method-std", cfg.get("initializer_range", 0.02)]
    if head_dim * heads != h:
        flags += ["--kv-channels", head_dim]
    if groups != heads:
        flags += ["--group-query-attention", "--num-query-groups", groups]
    attention_bias, mlp_bias = bool(cfg.get("attention_bias")), bool(cfg.get("mlp_bias"))
    if kind == "qwen2":
        flags += ["--disable-bias-linear", "--add-qkv-bias"]
    elif attention_bias != mlp_bias:
        raise ConversionError(f"attention_bias {attention_bias} with mlp_bias {mlp_bias} is not supported "
                              "(biases are all on or all off here, or on QKV only as Qwen2)")
    elif not attention_bias:
        flags += ["--disable-bias-linear"]
    if not cfg.get("tie_word_embeddings", False):
        flags += ["--untie-embeddings-and-output-weights"]
    if scaling is not None:
        flags += _scaling_flags(scaling)
    if kind == "mistral" and window is not None:  # HF's W keys (itself included) = Megatron's left window W - 1
        flags += ["--window-size", f"{int(window) - 1},0"]
    return [str(f) for f in flags]


def _scaling_flags(scaling: dict) -> list:
    kind = scaling["rope_type"]
    if kind == "linear":
        return ["--rotary-seq-len-interpolation-factor", scaling["factor"]]
    if kind == "llama3":
        odd = {k: scaling.get(k) for k, v in LLAMA3_CONSTANTS.items() if float(scaling.get(k, v)) != v}
        if odd:
            raise ConversionError(f"rope_scaling llama3 with {odd} is not supported: Megatron's --use-rope-scaling "
                                  f"uses {LLAMA3_CONSTANTS}")
        return ["--use-rope-scaling", "--rope-scaling-factor", scaling["factor"]]
    raise ConversionError(f"rope_scaling of type {kind!r} is not supported (llama3 and linear are)")


def _left_window(args: dict):
    from megatron_sp.sequence_parallel.config import left_window
    return left_window(args.get("window_size"))


def family_of(args: dict) -> str:
    """The Hugging Face family a checkpoint's flags compute exactly, or ConversionError saying why none."""
    if args.get("position_embedding_type") == "rope":
        problems = [why for bad, why in (
            (not args.get("swiglu"), "it has no --swiglu"),
            (args.get("normalization") != "RMSNorm", "it uses LayerNorm, not RMSNorm"),
            (args.get("rotary_percent", 1.0) != 1.0, "it rotates part of each head (--rotary-percent)"),
            (args.get("openai_gelu"), "--openai-gelu")) if bad]
        if problems:
            raise ConversionError(f"a RoPE model exports as Llama/Qwen2, but {'; '.join(problems)}")
        family = "qwen2" if args.get("disable_bias_linear") and args.get("add_qkv_bias") else "llama"
        if _left_window(args) is None:
            return family
        if family != "llama" or not args.get("disable_bias_linear"):
            raise ConversionError("a RoPE model with --window-size exports as Mistral, which has no biases")
        return "mistral"
    problems = [why for bad, why in (
        (args.get("swiglu"), "it uses --swiglu"), (args.get("normalization") != "LayerNorm", "it uses RMSNorm"),
        (args.get("num_query_groups") != args.get("num_attention_heads"), "it uses grouped-query attention"),
        (args.get("kv_channels") not in (None, args["hidden_size"] // args["num_attention_heads"]),
         "its --kv-channels differ from hidden / heads")) if bad]
    if problems:
        raise ConversionError(f"a learned-position model exports as GPT-2, but {'; '.join(problems)}")
    return "gpt2"


def hf_config_from_args(args: dict, vocab_size: int, family: str, eod: int | None = None) -> dict:
    """The ``config.json`` of ``family`` for a checkpoint's flags (``vocab_size``: unpadded rows kept)."""
    h, heads = args["hidden_size"], args["num_attention_heads"]
    tied = not args.get("untie_embeddings_and_output_weights")
    ffn = args.get("ffn_hidden_size") or default_ffn_hidden_size(h, bool(args.get("swiglu")))
    if family == "gpt2":
        return {"architectures": ["GPT2LMHeadModel"], "model_type": "gpt2", "vocab_size": vocab_size,
                "n_embd": h, "n_layer": args["num_layers"], "n_head": heads, "n_inner": ffn,
                "n_positions": args["max_position_embeddings"],
                "activation_function": "gelu_new" if args.get("openai_gelu") else "gelu",
                "layer_norm_epsilon": args["norm_epsilon"], "initializer_range": args.get("init_method_std", 0.02),
                "resid_pdrop": 0.0, "embd_pdrop": 0.0, "attn_pdrop": 0.0, "scale_attn_weights": True,
                "tie_word_embeddings": tied, "bos_token_id": eod, "eos_token_id": eod, "torch_dtype": "float32"}
    head_dim = args.get("kv_channels") or h // heads
    arch = {"qwen2": "Qwen2ForCausalLM", "mistral": "MistralForCausalLM"}.get(family, "LlamaForCausalLM")
    cfg = {"architectures": [arch],
           "model_type": family, "vocab_size": vocab_size, "hidden_size": h,
           "intermediate_size": ffn, "num_hidden_layers": args["num_layers"],
           "num_attention_heads": heads, "num_key_value_heads": args["num_query_groups"], "head_dim": head_dim,
           "hidden_act": "silu", "max_position_embeddings": args["max_position_embeddings"],
           "rms_norm_eps": args["norm_epsilon"], "rope_theta": float(args.get("rotary_base", 10000.0)),
           "initializer_range": args.get("init_method_std", 0.02), "tie_word_embeddings": tied,
           "attention_dropout": 0.0, "eos_token_id": eod, "torch_dtype": "float32"}
    if family == "llama":
        biases = not args.get("disable_bias_linear")
        cfg.update(attention_bias=biases, mlp_bias=biases)
    elif family == "mistral":
        cfg.update(sliding_window=_left_window(args) + 1)
    else:
        cfg.update(use_sliding_window=False, sliding_window=None)
    scaling = None
    if args.get("use_rope_scaling"):
        scaling = {"rope_type": "llama3", "factor": float(args["rope_scaling_factor"]), **LLAMA3_CONSTANTS}
        # The scaled context (factor x original length) is the model's reach; transformers wants the
        # config's length above the original one (it does not enter the llama3 frequencies).
        original = LLAMA3_CONSTANTS["original_max_position_embeddings"]
        cfg["max_position_embeddings"] = max(cfg["max_position_embeddings"], int(scaling["factor"] * original),
                                             original + 1)
    elif args.get("rotary_seq_len_interpolation_factor"):
        scaling = {"rope_type": "linear", "factor": float(args["rotary_seq_len_interpolation_factor"])}
    if scaling:
        cfg["rope_scaling"] = scaling
    cfg["rope_parameters"] = dict(scaling or {"rope_type": "default"}, rope_theta=cfg["rope_theta"])
    return cfg
