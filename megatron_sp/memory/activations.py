"""Activation bytes of one training step on one rank, phase by phase (used by ``memory/estimate.py``).

Pure Python (no torch): the scaling tool and the planner import it before any process starts.
Notation as in ``memory/estimate.py``: ``tok = s b`` tokens of this rank (``s`` = N/P), ``h``, ``f``,
``a``/``g`` heads / query groups, ``d`` head dim, ``T`` TP size, ``V`` padded vocabulary,
``/sp`` = divided by ``T`` under Megatron-SP, ``e`` bytes of a matmul operand (4, or 2 under
bf16/fp16 autocast), ``r = 4`` bytes of the residual stream and norm internals (fp32 weights
keep them fp32 under autocast too).

**What a layer keeps for backward** (bytes per token; the tensors autograd saves, counted by
storage, as ``tests/test_memory_model.py`` checks against ``saved_tensors_hooks``)::

    layer input, residual after attention (norm inputs)     2 r h/sp
    RMSNorm: x * rsqrt (for the weight gradient) + rsqrt     2 (r h + 4)/sp   (LayerNorm: mean, rstd 2 (8)/sp)
    qkv and fc1 inputs (gathered under SP)                    2 e h
    q, k (RoPE outputs), v contiguous; attention output       e (2a + 2g) d/T  (learned positions: the fused
                                                              qkv output stays alive under the q, k views)
    Ulysses: the output after the all-to-all back             e a d/T
    log-sum-exp                                               4 a/T            (not with selective recompute)
    MLP: fc1 output, activation output (SwiGLU: + silu(gate)) e 2f/T (SwiGLU 4f/T); tiled MLP: nothing
    dropout masks                                             2 m h/sp (m: 1 byte on CUDA, 4 on CPU)
    rsa with P > 1: score rows                                4 b (a/T) s N / tok

Full recompute keeps only each checkpointed run's input (``r h/sp``).  Under bf16/fp16
autocast the linears also keep the 2-byte copies of their weights (``weight_copies``),
which autocast caches for the whole forward anyway.  Outside the layers:
the final norm (its input and internals), the output-layer input ``e h``, RoPE's cos and sin
``2 d`` fp32, the embedding's dropout mask and, with the unfused loss, the fp32 softmax
``4 V/T`` (fused: the int64 labels and the per-token loss).  The norms run in fp32
(``memory/norms.py``): on CPU RMSNorm is torch's composite (it keeps the fp32 upcast of its
input and ``x * rsqrt``; its backward makes 5 fp32 ``[tok, h]`` temporaries, more than a tiled
MLP's backward); on CUDA under mixed precision autocast runs the fused norms in fp32 (they keep
the fp32 input and ``rstd``; RMSNorm's backward makes 2 fp32 temporaries).

**Phases.**  The step's peak is the largest of

* end of forward: everything kept + the loss's forward transient (unfused: the logits while
  the cross entropy builds its fp32 shifted copy; fused: the same for one chunk ``c``);
* the loss's backward: fused, the ``[tok, h]`` input gradient, the output weight's gradient
  (a chunk's part + the running sum) and one chunk recomputed;
* the last layer's backward: all other layers' kept bytes, the last checkpointed run
  recomputed, the layer's backward transient (MLP: ``f/T`` gradients, or one tile recomputed
  and its weight gradients; attention: dq, dk, dv and the CP buffers; an fp32 RMSNorm: the
  norm's fp32 temporaries), the gradients made so far (without DDP), the residual-stream
  gradient and RoPE's tables;
* an fp32 RMSNorm: the final norm's backward, on top of everything kept;
* the first layer's backward: that layer, and every gradient but the embedding's (small
  models, where the gradients outweigh the activations);
* with offload on CUDA, the backward of an offloaded layer: its kept bytes back on the device
  and the previous layer's prefetched.

Offload (``--cpu-offloading-num-layers N``): the kept bytes of runs starting below ``N`` live
in host memory (``host``); on CPU host and device are one memory and nothing changes.

Which kernel runs attention is :func:`attention_kernel`.  Materialised attention (RSA over P > 1,
``--attention-backend unfused`` over a ring of one) keeps fp32 probabilities instead of the LSE
(:func:`probs_bytes`) and adds score-sized transients to a layer's backward
(:func:`unfused_transient`); so does the reference block kernel, which runs attention when
``--attention-dropout`` > 0 under ``--attention-backend auto`` (the flash kernels here cannot apply
dropout): its largest block's fp32 scores, 6 blocks at its backward peak with dropout.  With
sharded model state the gathered compute weights are alive in every phase and the unsharded gradients in backward
(``phases(..., gathered, unsharded_grads)``); under bf16 the residual stream is then 2-byte.
Pipeline stages take their chunks' bytes from :func:`chunk_kept`.

**CPU pages.**  On CPU the measured peak is the process's resident memory, with the scaling
tool's allocator (``scaling/trial.configure_malloc``: every block of 16 KiB or more its own
mapping).  A tensor then costs its bytes and about one page more: torch's 64-byte-aligned block
plus malloc's header pushes a page-multiple size into the next page, and a small tensor touches
a fresh heap page.  :func:`cpu_pages` adds ``PAGE`` per tensor alive in a phase (the layer
tensors of :func:`layer_tensors`, the head's, the gradients and the optimizer's temporaries):
about 15 pages (60 KiB) per layer, 1.5 MiB for 24 layers, 2% of a 64 MiB budget, which is
what separates exact byte counts from the measured BERT-like cells.  CUDA's caching allocator
rounds to 512 bytes: no term there.
"""
from __future__ import annotations

from ..sequence_parallel.config import reference_backward_bytes, score_block_bytes
from .norms import (composite_rmsnorm as _composite_rmsnorm, held_input, norm_backward,
                    norm_backward_temporaries, norm_input_bytes as _norm_input_bytes, rope_tables,
                    stream_bytes as _stream_bytes)



def _dims(spec, lay, s, b):
    T = lay.tp
    sp = T if (lay.sp and T > 1) else 1
    e = 2 if spec.bf16 else 4
    return (spec.hidden_size, spec.ffn_hidden_size, spec.num_attention_heads, spec.num_query_groups,
            spec.kv_channels, spec.vocab_size, T, sp, e, s * b)


def _mask_bytes(spec) -> int:
    """A dropout mask element: bool on CUDA (native_dropout), the input's dtype on CPU (fp32 stream)."""
    return 1 if spec.device == "cuda" else 4


def _norm(spec, sp) -> float:
    """Bytes per token a norm keeps besides its input: the composite RMSNorm (CPU) x*rsqrt and rsqrt,
    CUDA's fused RMSNorm rstd, LayerNorm mean and rstd."""
    if spec.rmsnorm:
        return (4 * spec.hidden_size + 4) / sp if _composite_rmsnorm(spec) else 4 / sp
    return 8 / sp


def layer_kept(spec, lay, s: float, b: int, selective: bool = False) -> float:
    """Bytes one layer keeps from its forward to its backward without full recompute."""
    h, f, a, g, d, V, T, sp, e, tok = _dims(spec, lay, s, b)
    per = 2 * _norm_input_bytes(spec, lay) * h / sp + 2 * _norm(spec, sp) + 2 * e * h
    if spec.rope:  # q, k rotated (new tensors), v made contiguous, the output
        per += e * (2 * a + 2 * g) * d / T
    else:  # q, k views keep the fused qkv output; v made contiguous; q copied when heads per group > 1
        per += e * ((a + 2 * g) * d + g * d + a * d + (a * d if a > g else 0)) / T
    materialised = _materialised(spec, lay)
    if lay.ulysses_degree > 1 and not materialised:
        per += e * a * d / T  # the output after the all-to-all back (the projection's input)
    if not selective and not materialised:
        per += 4 * a / T  # the log-sum-exp (the materialised path keeps the probabilities instead)
    if not spec.tiled_mlp_chunk_size:
        per += e * (4 if spec.swiglu else 2) * f / T
    if spec.hidden_dropout > 0:
        per += 2 * _mask_bytes(spec) * h / sp
    return tok * per + (0.0 if selective else probs_bytes(spec, lay, s, b))


PAGE = 4096


def cpu_pages(spec, tensors: float) -> float:
    """Resident bytes beyond the tensor bytes of ``tensors`` live tensors: a page each on CPU (module doc)."""
    return PAGE * tensors if spec.device == "cpu" else 0.0


def layer_tensors(spec, lay, selective: bool = False) -> int:
    """How many tensors :func:`layer_kept` counts (one per term of the module doc's table)."""
    materialised = _materialised(spec, lay)
    n = 2 + 4 + 2  # layer input and residual; the two norms' internals; qkv and fc1 inputs
    n += 4 if spec.rope else (4 if spec.num_attention_heads > spec.num_query_groups else 3)
    n += 1 if (lay.ulysses_degree > 1 and not materialised) else 0
    n += 0 if selective else 1  # the log-sum-exp or the probabilities
    n += 0 if spec.tiled_mlp_chunk_size else (3 if spec.swiglu else 2)
    n += 2 if spec.hidden_dropout > 0 else 0
    return n


def outside_tensors(spec, lay, tok: float) -> int:
    """How many tensors :func:`outside_kept` counts."""
    n = 4 + 1  # final norm input and internals, output-layer input; the per-token loss
    n += 1 if fused_loss(spec, tok) else 3  # the labels, or the fp32 softmax, local ids and ownership mask
    n += 2 if lay.tp > 1 else 0  # the embedding's local ids and mask
    n += 2 if spec.rope else 0
    n += 1 if spec.hidden_dropout > 0 else 0
    return n


def weight_copy_tensors(spec, lay) -> int:
    """Autocast's weight copies one layer keeps (:func:`weight_copies`): its linears' (and column biases)."""
    return (4 + (2 if spec.add_bias_linear else 0)) if weight_copies(spec, lay)[0] else 0


UNFUSED_BACKENDS = ("unfused", "local")
MASK_BYTES = 9  # per score element while a dropout mask is made: the bool keep, its fp32 cast, the scaled mask


def attention_kernel(spec, lay) -> str:
    """What runs a layer's attention, as ``backends.resolve_backend`` picks it (``--attention-backend``
    flash / fused with dropout are refused at start-up):

    ``rsa``        --cp-comm-type rsa over P > 1: full score rows kept (the paper's algorithm)
    ``unfused``    --attention-backend unfused / local where attention is a ring of one: RSA's algorithm
                   over one rank, probabilities kept
    ``reference``  the plain-matmul block kernel: unfused inside a ring of R > 1, or ``auto`` with
                   ``--attention-dropout`` > 0 (the flash kernels here cannot apply dropout); each
                   block's fp32 scores are transient, recomputed in backward
    ``flash``      a flash-family kernel (flash, memory-efficient): O(s) memory, the LSE kept
    """
    if lay.score_rows:
        return "rsa"
    if spec.attention_backend in UNFUSED_BACKENDS:
        return "unfused" if lay.ring_degree == 1 else "reference"
    if spec.attention_dropout > 0 and spec.attention_backend == "auto":
        return "reference"
    return "flash"


def _materialised(spec, lay) -> bool:
    """Attention keeps its probabilities (RSA's algorithm): rsa over P > 1, or ``--attention-backend
    unfused`` where attention is a ring of one (CP 1, every TP layout, Ulysses after its all-to-all)."""
    return attention_kernel(spec, lay) in ("rsa", "unfused")


def score_block(spec, lay, s: float, b: int) -> float:
    """fp32 bytes of the largest score block one block-kernel call materialises: the ring step's
    diagonal ``[b, a/(T U), sU, sU]`` (a ring of one: the whole local portion after the all-to-all)."""
    U = lay.ulysses_degree
    return score_block_bytes(b, spec.num_attention_heads / (lay.tp * U), s * U)


def probs_bytes(spec, lay, s: float, b: int) -> float:
    """fp32 probabilities one layer keeps: RSA's rows ``[b, a/T, s, sP]``, unfused over a ring of one
    ``[b, a/(T U), sU, sU]``; 0 where attention does not materialise them.  E.g. BERT-Base shapes
    (a = 12), N = 512, b = 1, T = 1: 12 MiB per layer."""
    kernel = attention_kernel(spec, lay)
    if kernel == "rsa":
        return b * (spec.num_attention_heads / lay.tp) * s * (s * lay.cp) * 4
    return score_block(spec, lay, s, b) if kernel == "unfused" else 0.0


def unfused_transient(spec, lay, s: float, b: int) -> float:
    """Score-sized tensors alive at a layer's backward peak besides what it keeps.  RSA's algorithm
    (rsa over P, unfused over a ring of one, P = 1): ``d_probs`` and the softmax-backward product
    (2 x the kept rows), or with dropout ``d_probs`` and one column block's mask being made
    (``MASK_BYTES`` per element of the ``1/P`` of a row), whichever is larger.  The reference
    kernel (:func:`attention_kernel`): :func:`reference_backward_bytes` of its largest block."""
    kernel = attention_kernel(spec, lay)
    if kernel in ("rsa", "unfused"):
        rows, P = probs_bytes(spec, lay, s, b), (lay.cp if kernel == "rsa" else 1)
        return rows * max(2.0, 1.0 + (MASK_BYTES / 4 / P if spec.attention_dropout > 0 else 0.0))
    if kernel == "reference":
        return reference_backward_bytes(score_block(spec, lay, s, b), spec.attention_dropout > 0)
    return 0.0


def weight_copies(spec, lay):
    """Under bf16/fp16 autocast (fp32 weights) every matmul uses a 2-byte copy of its weight (and a
    column-parallel bias), cached until forward ends and saved for backward by the linear that
    used it.  Returns (attention, MLP) bytes of one layer and the output layer's; 0 in fp32."""
    if not spec.bf16 or lay.sharded:  # sharded: the gathered weights are the compute dtype
        return 0.0, 0.0, 0.0
    h, f, a, g, d, V, T = (spec.hidden_size, spec.ffn_hidden_size, spec.num_attention_heads,
                           spec.num_query_groups, spec.kv_channels, spec.vocab_size, lay.tp)
    fc1 = f * (2 if spec.swiglu else 1)
    attn = (h * (a + 2 * g) * d + a * d * h + ((a + 2 * g) * d if spec.add_bias_linear else 0)) / T
    mlp = (h * fc1 + f * h + (fc1 if spec.add_bias_linear else 0)) / T
    return 2.0 * attn, 2.0 * mlp, 2.0 * V / T * h


def runs(spec, n=None):
    """``(start, end, checkpointed)`` runs of ``n`` layers (default all), as ``TransformerBlock.segments``."""
    L = spec.num_layers if n is None else n
    if spec.recompute_granularity != "full":
        return [(i, i + 1, False) for i in range(L)]
    k = max(1, spec.recompute_num_layers)
    if spec.recompute_method == "block":
        return [(i, i + 1, i < k) for i in range(L)]
    return [(i, min(L, i + k), True) for i in range(0, L, k)]


def outside_kept(spec, lay, s: float, b: int) -> float:
    """Final norm, output-layer input, the loss's saved tensors and the RoPE tables."""
    h, f, a, g, d, V, T, sp, e, tok = _dims(spec, lay, s, b)
    per = _norm_input_bytes(spec, lay) * h / sp + _norm(spec, sp) + e * h
    # the per-token loss (fp32) and the labels: int64 (fused), or local ids + ownership mask next to
    # the fp32 softmax (unfused); under TP the embedding keeps its local ids and mask likewise
    per += 4 + (8 if fused_loss(spec, tok) else 4 * V / T + 9) + (9 if T > 1 else 0)
    if spec.rope:
        per += 2 * d * 4  # cos, sin [s, b, 1, d] (shared by the layers)
    if spec.hidden_dropout > 0:
        per += _mask_bytes(spec) * h / sp  # the embedding's dropout
    return tok * per


def fused_loss(spec, tok: float) -> bool:
    return spec.cross_entropy_chunk_size > 0 and (spec.cross_entropy_loss_fusion or tok > spec.cross_entropy_chunk_size)


def loss_transients(spec, lay, s: float, b: int):
    """(forward, backward) bytes of the loss on top of everything kept."""
    h, f, a, g, d, V, T, sp, e, tok = _dims(spec, lay, s, b)
    cast = 4 if e != 4 else 0  # the fp32 copy of bf16 logits
    # the output weight's gradient: fp32 (autocast's bf16 copy differentiates into the fp32 weight), or
    # the compute dtype of the gathered weight under sharded state (FSDP2's mixed precision)
    weight_grad = V / T * h * (e if lay.sharded else 4)
    if not fused_loss(spec, tok):
        return tok * V / T * (e + cast), tok * h * e + weight_grad + tok * V / T * (2 if cast else 0)
    c = min(spec.cross_entropy_chunk_size, tok)
    chunk = c * V / T * (e + 4 + cast)  # logits, the shifted fp32 copy (and the fp32 cast)
    acc = weight_grad if tok > c else 0.0
    backward = tok * h * e + acc + max(chunk, c * V / T * (4 + (2 if cast else 0)) + weight_grad)
    return chunk, backward


def layer_backward_transient(spec, lay, s: float, b: int) -> float:
    """Bytes a layer's backward adds on top of what it keeps: the largest of the MLP's, the attention's
    and (CPU composite RMSNorm) the pre-MLP norm's."""
    return max(*backward_parts(spec, lay, s, b), norm_backward(spec, lay, s, b))


def backward_parts(spec, lay, s: float, b: int) -> tuple:
    """(MLP, attention) bytes a layer's backward adds on top of what it keeps."""
    h, f, a, g, d, V, T, sp, e, tok = _dims(spec, lay, s, b)
    width = 4 if spec.swiglu else 2  # kept MLP intermediates per f/T
    if spec.tiled_mlp_chunk_size:
        c = min(spec.tiled_mlp_chunk_size, tok)
        # the MLP weights' gradients: the running sum and one tile's (fp32); under sharded state they are
        # the gathered weights' (compute dtype) and the sum is the layer's unsharded gradient (model_state)
        weights = (3 if spec.swiglu else 2) * f * h / T * (e if lay.sharded else 4)
        tiles = (1 if tok > c else 0) if lay.sharded else (2 if tok > c else 1)
        mlp = tok * h * e + c * e * f / T * (width + width // 2) + weights * tiles
    else:
        mlp = tok * e * f / T * width / 2
    attn = tok * e * (a + 2 * g) * d / T
    U, R = lay.ulysses_degree, lay.ring_degree
    if U > 1:
        attn += tok * e * 2 * (a + 2 * max(g, U * T)) * d / T  # all-to-all send + receive buffers
    if R > 1 and not lay.rsa:  # the ring's backward (sequence_parallel/ring.py ring_backward)
        kv = max(g, U * T) * d / T  # K or V of one token, local heads
        attn += tok * (e * 2 * 2 * kv  # two K/V blocks in flight
                       + 4 * a * d / T  # dq summed over the steps in fp32
                       + 2 * e * a * d / T  # a block's dout and out made contiguous for the kernel
                       + 2 * 4 * kv)  # dk, dv summed in fp32 (the sums travel with the blocks)
    if spec.masked and R == 1 and not _materialised(spec, lay):
        # documents / window over a ring of one: the live sub-blocks' dQ, dK, dV sum in fp32 accumulators
        # (unmasked, the one kernel call's gradients are the result); the masks themselves are O(documents)
        attn += tok * 4 * (a + 2 * max(g, U * T)) * d / T
    return mlp, attn + unfused_transient(spec, lay, s, b)  # rsa: d_probs and the softmax-backward product


def _run_terms(spec, lay, s: float, b: int, first: int = 0, n=None):
    """Per run of layers ``first .. first + n - 1`` (a pipeline chunk; default all): the run list,
    the activation bytes each run keeps, the weight copies it keeps, whether it is offloaded."""
    h, f, a, g, d, V, T, sp, e, tok = _dims(spec, lay, s, b)
    full_layer = layer_kept(spec, lay, s, b, spec.recompute_granularity == "selective")
    attn_w, mlp_w, _ = weight_copies(spec, lay)
    saved_w = attn_w + (0.0 if spec.tiled_mlp_chunk_size else mlp_w)  # copies a layer's linears save (tiles: none)
    offload = spec.cpu_offloading_num_layers if spec.device != "cpu" else 0  # CPU: one memory, nothing moves
    run_list = runs(spec, n)
    run_kept = [tok * _stream_bytes(spec, lay) * h / sp if checkpointed else full_layer * (end - start)
                for start, end, checkpointed in run_list]
    run_copies = [0.0 if checkpointed else saved_w * (end - start) for start, end, checkpointed in run_list]
    moved = [first + start < offload for start, _, _ in run_list]
    return run_list, run_kept, run_copies, moved, full_layer, saved_w


def layer_working(spec, lay, s: float, b: int) -> float:
    """A layer's backward on top of what the model keeps: the layer's tensors while it runs again
    (checkpointed, or the recomputed core's probabilities under selective recompute) and its
    transient."""
    _, _, a, _, _, _, T, _, _, _ = _dims(spec, lay, s, b)
    attn_w, mlp_w, _ = weight_copies(spec, lay)
    t_layer = layer_backward_transient(spec, lay, s, b) + (mlp_w if spec.tiled_mlp_chunk_size else 0.0)
    if spec.recompute_granularity == "selective":  # the recomputed core: one layer's probabilities
        t_layer += probs_bytes(spec, lay, s, b)
    return t_layer


def chunk_kept(spec, lay, s: float, b: int, first: int, n: int) -> tuple:
    """(device bytes, host bytes, working bytes) of the layers ``first .. first + n - 1`` for one
    micro-batch: what they keep until backward, what of it waits in host memory, and the longest
    checkpointed run recomputed in backward (its transient is :func:`layer_working`)."""
    run_list, run_kept, run_copies, moved, full_layer, saved_w = _run_terms(spec, lay, s, b, first, n)
    device = sum(c + (0.0 if m else k) for k, c, m in zip(run_kept, run_copies, moved))
    host = sum(k for k, m in zip(run_kept, moved) if m)
    recomputed = max((end - start for start, end, checkpointed in run_list if checkpointed), default=0)
    return device, host, (full_layer + saved_w) * recomputed + (held_input(spec, lay, s, b) if recomputed else 0.0)


def run_tensors(spec, lay, n=None) -> list:
    """Tensors each run of :func:`runs` keeps (its input if checkpointed; weight copies included)."""
    per_layer = layer_tensors(spec, lay, spec.recompute_granularity == "selective") + weight_copy_tensors(spec, lay)
    return [1 if checkpointed else per_layer * (end - start) for start, end, checkpointed in runs(spec, n)]


def phases(spec, lay, s: float, b: int, early_grads: float, layer_grads: float, gathered: float = 0.0,
           unsharded_grads: float = 0.0, param_tensors: tuple = (0, 0)):
    """Peak bytes of each phase (dict), bytes kept on the device at the end of forward, host bytes.

    ``early_grads``: gradients created before the last layer's backward peaks (0 under DDP);
    ``layer_grads``: one layer's gradient bytes (0 under DDP).  With sharded model state
    (``memory_terms.model_state``): ``gathered`` compute weights are alive in every phase and
    ``unsharded_grads`` in backward; autocast makes no weight copies (the gathered weights are
    already in the compute dtype).  ``param_tensors``: (outside the layers, per layer) parameter
    tensors whose gradients backward makes (no DDP), for the CPU pages.
    """
    h, f, a, g, d, V, T, sp, e, tok = _dims(spec, lay, s, b)
    attn_w, mlp_w, out_w = weight_copies(spec, lay)
    run_list, run_kept, run_copies, moved, full_layer, saved_w = _run_terms(spec, lay, s, b)
    offload = spec.cpu_offloading_num_layers if spec.device != "cpu" else 0
    kept = [c + (0.0 if m else k) for k, c, m in zip(run_kept, run_copies, moved)]  # weights never move
    host = sum(k for k, m in zip(run_kept, moved) if m)
    if host:  # RoPE's tables, saved by every layer, moved once
        host += rope_tables(spec, lay, s, b)
    fused = fused_loss(spec, tok)
    device_kept = sum(kept) + outside_kept(spec, lay, s, b) + (0.0 if fused else out_w)
    cached = spec.num_layers * (attn_w + mlp_w) + out_w - sum(run_copies) - (0.0 if fused else out_w)
    loss_fwd, loss_bwd = loss_transients(spec, lay, s, b)
    t_layer = layer_working(spec, lay, s, b)
    stream = tok * _stream_bytes(spec, lay) * h / sp  # the residual-stream gradient
    last, first = run_list[-1][1] - run_list[-1][0], run_list[0][1] - run_list[0][0]
    held = held_input(spec, lay, s, b)
    # the last run, recomputed if checkpointed (and its input); RoPE's tables, alive through backward
    working = (full_layer + saved_w) * last + (held if run_list[-1][2] else 0.0) + rope_tables(spec, lay, s, b)
    back = gathered + unsharded_grads
    # CPU pages (cpu_pages): the tensors kept, and the gradients made so far without DDP
    n_runs = run_tensors(spec, lay)
    n_layer = layer_tensors(spec, lay) + weight_copy_tensors(spec, lay)  # a layer in backward (selective: recomputed)
    n_out, n_grads = outside_tensors(spec, lay, tok), (sum(param_tensors) if early_grads else 0)
    out = {"forward_end": device_kept + cached + loss_fwd + gathered + cpu_pages(spec, sum(n_runs) + n_out),
           # no layer's backward has begun: unsharded gradients only when accumulated over micro-batches
           "loss_backward": device_kept + loss_bwd + (out_w if fused else 0.0) + gathered
           + (unsharded_grads if lay.micro_batches > 1 else 0.0)
           + cpu_pages(spec, sum(n_runs) + n_out),
           "layer_backward": sum(kept[:-1]) + working + t_layer + early_grads + stream + back
           + cpu_pages(spec, sum(n_runs[:-1]) + n_layer * last + n_grads),
           # the first run's backward: every gradient but the embedding's is made by then
           "first_backward": (full_layer + saved_w) * first + (held if run_list[0][2] else 0.0)
           + rope_tables(spec, lay, s, b) + t_layer + stream
           + early_grads + layer_grads * (spec.num_layers - 1) + back
           + cpu_pages(spec, n_layer * first + (n_grads + param_tensors[1] * (spec.num_layers - 1)
                                                if layer_grads else 0))}
    temporaries = norm_backward_temporaries(spec)
    if temporaries:  # the final norm's backward (norm_backward): its temporaries, less (composite) its
        # x * rsqrt and its output (the output layer's input), freed by then
        freed = (4 * h / sp if _composite_rmsnorm(spec) else 0.0) + e * h
        out["final_norm_backward"] = (device_kept + tok * (temporaries * 4 * h / sp - freed)
                                      + early_grads + back + cpu_pages(spec, sum(n_runs) + n_out))
    if host:  # the last offloaded run's backward: it is back, the one before it on its way
        on_host = [k for k, m in zip(run_kept, moved) if m]
        prefetched = on_host[-2] if len(on_host) > 1 else 0.0
        grads_then = early_grads + layer_grads * (spec.num_layers - offload)
        below = sum(c for c, m in zip(run_copies, moved) if m)  # weight copies of the offloaded runs
        out["offloaded_backward"] = working + prefetched + below + t_layer + grads_then + stream + back
    return out, device_kept, host
