"""Model presets: ``pretrain_gpt.py`` model flags by name (the scaling tool and the planner).

The GPT presets are the shapes of ``examples/gpt_345m.sh``, ``gpt_1.3b.sh`` and ``gpt_7b.sh``;
the Llama-3 presets are Meta's published shapes (RMSNorm, SwiGLU, GQA with 8 query groups,
RoPE base 500000, untied embeddings, vocabulary 128256).  Example::

    ModelSpec.from_flags(MODEL_PRESETS["llama-3-8b"].split(), bf16=True)
"""
from __future__ import annotations

_LLAMA = ("--group-query-attention --num-query-groups 8 --swiglu --normalization RMSNorm --disable-bias-linear "
          "--untie-embeddings-and-output-weights --position-embedding-type rope --rotary-base 500000 "
          "--vocab-size 128256")

MODEL_PRESETS = {
    # activations dominate: 4 layers, hidden 128, rope (no position table growing with length)
    "tiny": "--num-layers 4 --hidden-size 128 --num-attention-heads 8 --ffn-hidden-size 512 "
            "--vocab-size 1000 --position-embedding-type rope",
    "small": "--num-layers 8 --hidden-size 256 --num-attention-heads 8 --vocab-size 8000 "
             "--position-embedding-type rope",
    # Llama-shaped (RMSNorm, SwiGLU, GQA, RoPE, untied) with a real vocabulary: the loss matters
    "llama-32k": "--num-layers 4 --hidden-size 256 --num-attention-heads 8 --group-query-attention "
                 "--num-query-groups 4 --ffn-hidden-size 704 --swiglu --normalization RMSNorm --disable-bias-linear "
                 "--untie-embeddings-and-output-weights --vocab-size 32000 --position-embedding-type rope",
    "gpt-345m": "--num-layers 24 --hidden-size 1024 --num-attention-heads 16 --vocab-size 50257 "
                "--position-embedding-type rope",
    "gpt-1.3b": "--num-layers 24 --hidden-size 2048 --num-attention-heads 16 --vocab-size 50257 "
                "--position-embedding-type rope",
    "gpt-7b": "--num-layers 32 --hidden-size 4096 --num-attention-heads 32 --ffn-hidden-size 11008 --swiglu "
              "--normalization RMSNorm --disable-bias-linear --untie-embeddings-and-output-weights "
              "--vocab-size 32000 --position-embedding-type rope",
    "llama-3-8b": "--num-layers 32 --hidden-size 4096 --num-attention-heads 32 --ffn-hidden-size 14336 " + _LLAMA,
    "llama-3-70b": "--num-layers 80 --hidden-size 8192 --num-attention-heads 64 --ffn-hidden-size 28672 " + _LLAMA,
}
