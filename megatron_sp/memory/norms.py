"""The residual stream and its norms, bytes per token (used by ``memory/activations.py``).

Pure Python (no torch).  Notation as in ``memory/estimate.py``: ``h`` hidden, ``f`` FFN width,
``T`` TP size, ``sp`` = T under Megatron-SP (else 1), ``e`` bytes of a matmul operand.

The stream is fp32 (fp32 weights under autocast) or, when sharded state gathers bf16/fp16
weights (FSDP2's mixed precision), 2-byte.  Torch runs RMSNorm as its composite on CPU
(``rms_norm_composite``: ``x.float()``, pow, mean, rsqrt, two muls, each differentiated by
autograd) and as a fused kernel on CUDA (``_fused_rms_norm``; the composite there only when
the weight's dtype differs from the input's, which no layout here makes).  The composite, per
norm and token:

* keeps the fp32 upcast of its input (``4 h``): the input itself when the stream is fp32; a
  tensor of its own under a 2-byte stream, and then the input is kept by nothing in the layer
  (a checkpoint still holds a recomputed run's input: :func:`held_input`);
* makes 5 fp32 ``[tok, h]`` temporaries at its backward's peak (:data:`COMPOSITE_NORM_BACKWARD`),
  ``20 h`` bytes: 80 KB per token at h = 4096, more than a tiled MLP's backward.

On CUDA under mixed precision, autocast runs layer_norm and rms_norm in fp32 (its fp32 list): a
2-byte input is cast to fp32, the fused kernel keeps that fp32 input and ``rstd``, and RMSNorm's
backward makes 2 fp32 ``[tok, h]`` temporaries (:data:`FUSED_NORM_BACKWARD`); the model casts the
output back to the input's dtype (``model/transformer.py``).  :func:`fp32_norm` says which case.

E.g. the Llama-3-8B shapes under FSDP2 bf16 on CPU, 524,288 tokens: 8 GiB per fp32 ``[tok, h]``
tensor, 40 GiB of temporaries in the pre-MLP norm's backward.
"""
from __future__ import annotations

# fp32 [tok, h] tensors alive at the composite RMSNorm's backward peak, besides its fp32 upcast: the
# incoming gradient cast to fp32, grad * rsqrt (waiting for the other branch), mean's backward
# (expand / h), pow's backward pow(x, 1), its * 2 and * grad (tests/test_memory_dry_run.py measures it)
COMPOSITE_NORM_BACKWARD = 5
# CUDA's fused kernel under autocast: the incoming gradient cast to fp32 and the fp32 input gradient
FUSED_NORM_BACKWARD = 2


def stream_bytes(spec, lay) -> int:
    """An element of the residual stream: fp32 (fp32 weights under autocast), or the compute dtype
    when sharded state gathers bf16/fp16 weights (FSDP2's mixed precision makes the stream 2-byte)."""
    return 2 if (spec.bf16 and lay.sharded) else 4


def composite_rmsnorm(spec) -> bool:
    """RMSNorm runs as torch's composite: on CPU (module doc)."""
    return spec.rmsnorm and spec.device == "cpu"


def fp32_norm(spec) -> bool:
    """The norm runs in fp32 whatever the stream: the CPU composite RMSNorm, or any norm on CUDA
    under mixed precision (autocast's fp32 policy for layer_norm and rms_norm; the model casts the
    output back to the stream's dtype, model/transformer.py)."""
    return composite_rmsnorm(spec) or (spec.device != "cpu" and spec.bf16)  # bf16: --bf16 or --fp16


def norm_backward_temporaries(spec) -> int:
    """fp32 ``[tok, h]`` tensors at a norm's backward peak besides its kept input: the composite's 5
    (:data:`COMPOSITE_NORM_BACKWARD`), a fused kernel's 2 (the incoming gradient cast to fp32, and the
    input gradient), none counted for the CPU's fused LayerNorm (below the MLP's transient)."""
    if composite_rmsnorm(spec):
        return COMPOSITE_NORM_BACKWARD
    return FUSED_NORM_BACKWARD if fp32_norm(spec) else 0


def norm_input_bytes(spec, lay) -> int:
    """Bytes per element of a norm's input that the norm keeps: an fp32 norm its fp32 input (the
    upcast under a 2-byte stream), CPU's LayerNorm the input."""
    return 4 if fp32_norm(spec) else stream_bytes(spec, lay)


def _sp(lay) -> int:
    return lay.tp if (lay.sp and lay.tp > 1) else 1


def held_input(spec, lay, s: float, b: int) -> float:
    """A checkpointed run's input while the run is recomputed in backward: ``layer_kept`` counts the
    layer input as the first norm's input, which it is unless the composite RMSNorm keeps an fp32
    upcast instead (a 2-byte stream; also CUDA's fp32 norms); then the checkpoint holds the input as
    a tensor of its own."""
    if norm_input_bytes(spec, lay) == stream_bytes(spec, lay):
        return 0.0
    return s * b * stream_bytes(spec, lay) * spec.hidden_size / _sp(lay)


def rope_tables(spec, lay, s: float, b: int) -> float:
    """RoPE's cos and sin ``[s, b, 1, d]`` fp32, shared by the layers and alive through backward."""
    return s * b * 2 * spec.kv_channels * 4 if spec.rope else 0.0


def norm_backward(spec, lay, s: float, b: int) -> float:
    """Bytes the pre-MLP norm's backward adds on top of the layer's kept bytes (as ``layer_working``
    counts them): its fp32 temporaries (:func:`norm_backward_temporaries`), less what is freed by
    then (its x * rsqrt (composite), its output = the fc1 input, the MLP's kept intermediates)."""
    n = norm_backward_temporaries(spec)
    if not n:
        return 0.0
    h, f, T, sp = spec.hidden_size, spec.ffn_hidden_size, lay.tp, _sp(lay)
    e = 2 if spec.bf16 else 4
    temps = n * 4 * h / sp
    freed = (4 * h / sp if composite_rmsnorm(spec) else 0.0) + e * h
    mlp = 0.0 if spec.tiled_mlp_chunk_size else e * (4 if spec.swiglu else 2) * f / T
    return s * b * (temps - freed - mlp)
