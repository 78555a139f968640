"""Per-rank memory and per-step communication of a GPT training step, by layout.

    spec = ModelSpec.from_flags("--num-layers 4 --hidden-size 128 ...".split())
    est = estimate(spec, LayoutSpec(tp=1, cp=4, mode="p2p"), seq_length=8192, micro_batch=1)
    est.step_peak        # bytes the step adds above the post-setup baseline (what the scaling tool measures)
    est.breakdown()      # params / grads / adam / activations / transients / comm

The model counts the tensors this code base keeps, not a generic transformer:
the per-layer terms below are the tensors autograd saves in ``model/transformer.py``
(Korthikanti et al. 2022 give the same accounting for Megatron: ``sbh(34 + 5as/h)`` bytes
per layer in fp16; ours differs because of RoPE, fused QKV, flash attention and fp32).
Notation: ``s`` tokens of this CP rank (N/P), ``b`` micro-batch, ``h`` hidden, ``f`` FFN
width, ``a``/``g`` query heads / query groups, ``d`` head dim, ``T`` TP size, ``V`` padded
vocabulary, ``e`` bytes per activation element (4 fp32, 2 under bf16/fp16 autocast).
Tensors in the Megatron-SP region (norms, residual) are divided by ``T`` under
``--sequence-parallel``; everything after the column-parallel linears is divided by ``T``.

Saved per layer (elements per token and sample)::

    norm inputs (2) + linear inputs (qkv, fc1)       4h        (/T with SP; the gathered input of a
                                                               column linear is saved whole: h)
    fused qkv output (kept alive by the RoPE views)  (a+2g)d/T
    RoPE: rotated copies of q, k + their outputs     2(a+g)d/T
    v made contiguous                                g d/T
    attention output (= the projection input)        a d/T     (+ lse a/T, fp32; Ulysses: + a d/T,
                                                               the output is kept on both sides of
                                                               its all-to-all)
    fc1 output (GELU input), fc2 input               2f/T      (SwiGLU: 2f + 2f ... see code)
    dropout masks (bool), if --hidden-dropout > 0   2h bytes  (/T with SP)

Attention scores exist for ``rsa`` with P > 1: full rows ``[b, a/T, s, N]`` in fp32
saved per layer, plus two more copies at the backward peak of a layer (``d_probs`` and the
softmax-backward product).  With the flash kernels (``--attention-backend auto`` / ``flash``)
no other mode materialises scores.  ``--attention-backend unfused`` (or ``local``) does, see
:func:`_unfused_kept` and :func:`_unfused_transient`: where attention is a ring of one (CP 1,
and Ulysses after its all-to-all) it keeps the fp32 probabilities ``[b, a/(T U), sU, sU]``
of every layer, exactly RSA's algorithm over a ring of one (same two extra copies in a layer's
backward); inside a ring of R > 1 it materialises each block's scores transiently.  Ring modes keep
double-buffered K/V blocks and travelling dK/dV accumulators (a transient of the layer in
backward).  Outside the layers: the logits (kept as the softmax by the cross entropy),
the final norm and output-layer inputs, and the output layer's gradient in backward.

Model state, per local parameter (parameters of the TP-sharded linears and the vocabulary
are divided by ``T``; ``D`` = DP x CP, ``c`` = bytes of a compute weight: 2 under
bf16/fp16, else 4; :func:`model_state`)::

    replicated (DDP)        4 weight + 4 gradient + 8 Adam m, v            = 16
    --use-distributed-opt.  (4 + 4 + 8) / D, all layers' gathered compute weights (c) in the
                            step, and with gradient accumulation the unsharded fp32
                            gradients (4) from the first micro-batch's backward to the last
    --use-torch-fsdp2       (4 + 4 + 8) / D, the root's weights (embeddings, output layer)
                            gathered (c) in the step, plus two layers gathered (c) and two
                            layers' unsharded fp32 gradients (4) at a time
    --optimizer-cpu-offload the (4 + 4 + 8) / D shards live in host memory instead

The persistent state exists before the measured step (the scaling tool takes its baseline
after a warm-up step), so the step's peak counts gradients, activations and transients;
``device_peak`` adds the persistent device state, and ``host`` is the host memory a rank
holds for the model state.

Communication per step and rank (bytes sent, forward + backward):

* ring (p2p, the ring of a2a+p2p): forward ``(R-1)`` K/V blocks per layer; backward ``(R-1)``
  K/V blocks again plus ``R`` hops of the dK/dV accumulators;
* rsa: forward ``(P-1)`` K and ``(P-1)`` V blocks; backward the same plus ``P`` hops of dK and dV;
* a2a: 4 all-to-alls (q, k, v, out) forward and 4 backward, each sending ``(U-1)/U`` of its tensor;
* TP: 2 all-reduces of ``[s, b, h]`` per layer forward and 2 backward (ring all-reduce sends
  ``2(T-1)/T`` of it); with SP all-gather + reduce-scatter pairs (``(T-1)/T`` each);
* gradients: a ring all-reduce over DP x CP of the local gradients, ``2(n-1)/n`` of them.

Pipeline parallelism (``LayoutSpec.pp > 1``): a stage holds only its layers, and the
activations of the micro-batches its schedule keeps in flight; ``pipeline_parallel/memory.py``
builds the per-stage estimate from the pieces here, and :func:`estimate` returns its largest stage.
"""
from __future__ import annotations

import argparse
import math
from dataclasses import dataclass
from typing import Optional

from .model.config import default_ffn_hidden_size


@dataclass
class ModelSpec:
    num_layers: int
    hidden_size: int
    num_attention_heads: int
    vocab_size: int  # padded
    ffn_hidden_size: Optional[int] = None
    num_query_groups: Optional[int] = None
    kv_channels: Optional[int] = None
    swiglu: bool = False
    bias: bool = True
    rope: bool = True
    max_position_embeddings: int = 0  # learned absolute positions only
    tied: bool = True
    hidden_dropout: float = 0.0
    bf16: bool = False
    recompute: Optional[str] = None  # None, "selective", "full"
    attention_backend: str = "auto"  # --attention-backend: unfused/local materialise scores (see module doc)

    def __post_init__(self):
        self.ffn_hidden_size = self.ffn_hidden_size or default_ffn_hidden_size(self.hidden_size, self.swiglu)
        self.num_query_groups = self.num_query_groups or self.num_attention_heads
        self.kv_channels = self.kv_channels or self.hidden_size // self.num_attention_heads

    @classmethod
    def from_flags(cls, argv, bf16: bool = False, recompute: Optional[str] = None,
                   make_vocab_size_divisible_by: int = 128) -> "ModelSpec":
        """From ``pretrain_gpt.py`` model flags (the subset that changes memory)."""
        p = argparse.ArgumentParser(add_help=False, allow_abbrev=False)
        for flag, typ in (("--num-layers", int), ("--hidden-size", int), ("--num-attention-heads", int),
                          ("--ffn-hidden-size", int), ("--num-query-groups", int), ("--kv-channels", int),
                          ("--vocab-size", int), ("--max-position-embeddings", int), ("--hidden-dropout", float),
                          ("--make-vocab-size-divisible-by", int)):
            p.add_argument(flag, type=typ, default=None)
        for flag in ("--swiglu", "--disable-bias-linear", "--untie-embeddings-and-output-weights",
                     "--group-query-attention"):
            p.add_argument(flag, action="store_true")
        p.add_argument("--position-embedding-type", default="learned_absolute")
        p.add_argument("--attention-backend", default="auto")
        a, _ = p.parse_known_args(argv)
        div = a.make_vocab_size_divisible_by or make_vocab_size_divisible_by
        vocab = int(math.ceil(a.vocab_size / div) * div)  # NullTokenizer: EOD is the last of the V ids
        return cls(a.num_layers, a.hidden_size, a.num_attention_heads, vocab, a.ffn_hidden_size,
                   a.num_query_groups if a.group_query_attention else None, a.kv_channels, a.swiglu,
                   not a.disable_bias_linear, a.position_embedding_type == "rope",
                   0 if a.position_embedding_type == "rope" else (a.max_position_embeddings or 0),
                   not a.untie_embeddings_and_output_weights,
                   a.hidden_dropout if a.hidden_dropout is not None else 0.0, bf16, recompute,
                   a.attention_backend)


@dataclass(frozen=True)
class LayoutSpec:
    tp: int = 1
    cp: int = 1
    dp: int = 1
    mode: str = "p2p"  # rsa | p2p | a2a | a2a+p2p
    sp: bool = False
    ulysses: int = 1  # Ulysses degree (a2a: = cp)
    sharding: str = "none"  # none (DDP) | dist-opt | fsdp2
    offload: bool = False   # --optimizer-cpu-offload
    micro_batches: int = 1  # gradient accumulation steps per global batch
    pp: int = 1             # pipeline stages (pipeline_parallel/memory.py)
    virtual: int = 1        # virtual stages (model chunks) per pipeline rank
    schedule: str = "1F1B"  # --pipeline-schedule

    @property
    def ulysses_degree(self) -> int:
        if self.cp == 1:
            return 1
        return {"a2a": self.cp, "a2a+p2p": self.ulysses}.get(self.mode, 1)

    @property
    def ring_degree(self) -> int:
        return self.cp // self.ulysses_degree


@dataclass
class Estimate:
    params: float          # bytes of local fp32 weights (in the baseline)
    grads: float           # bytes of gradients
    adam: float            # bytes of Adam m and v
    activations: float     # saved activations of all layers + outside (forward end)
    transient: float       # extra at the peak (end of forward, or a layer's backward)
    grads_in_baseline: bool  # DDP (DP x CP > 1) allocates gradient buckets at setup
    early_grads: float     # gradients already allocated when a layer's backward peaks (no DDP)
    comm_bytes: float      # sent per step by this rank
    comm_detail: dict
    host: float = 0.0      # host bytes of the model state (--optimizer-cpu-offload)
    buffers: float = 0.0   # persistent pipeline receive buffers (pipeline_parallel/memory.py)
    optimizer: float = 0.0  # peak of the optimizer step (activations freed by then), see _optimizer_peak

    @property
    def device_peak(self) -> float:
        """Everything on the device at the step's peak: the persistent state and the step peak."""
        on_device = 0.0 if self.host else self.params + self.adam + (self.grads if self.grads_in_baseline else 0)
        return on_device + self.buffers + self.step_peak

    @property
    def step_peak(self) -> float:
        """Bytes the step needs above the baseline taken after a warm-up step: saved activations +
        the transient at the peak, or the optimizer step's peak if larger.  Weights, Adam state and
        (under DDP, DP x CP > 1) the gradient buckets are persistent and in the baseline; without DDP
        the gradients are created in backward, after the end-of-forward peak, and only those of the
        output layer and the last layer can coincide with a layer's backward peak (``transient``
        includes them; the scaling tool frees the previous step's before its baseline)."""
        return max(self.activations + self.transient, self.optimizer)

    @property
    def total_peak(self) -> float:
        return self.params + self.adam + (self.grads if self.grads_in_baseline else 0) + self.buffers + self.step_peak

    def breakdown(self) -> dict:
        mib = 2 ** 20
        return {"params_mib": self.params / mib, "grads_mib": self.grads / mib, "adam_mib": self.adam / mib,
                "host_mib": self.host / mib, "buffers_mib": self.buffers / mib,
                "device_peak_mib": self.device_peak / mib,
                "activations_mib": self.activations / mib, "transient_mib": self.transient / mib,
                "step_peak_mib": self.step_peak / mib, "comm_mib_per_step": self.comm_bytes / mib,
                **{f"comm_{k}_mib": v / mib for k, v in self.comm_detail.items()}}


def _layer_parameters(spec: ModelSpec, tp: int) -> float:
    h, f, a, g, d = (spec.hidden_size, spec.ffn_hidden_size, spec.num_attention_heads, spec.num_query_groups,
                     spec.kv_channels)
    qkv_out, fc1_out = (a + 2 * g) * d, f * (2 if spec.swiglu else 1)
    sharded = h * qkv_out + a * d * h + h * fc1_out + f * h + ((qkv_out + fc1_out) if spec.bias else 0)
    return sharded / tp + 2 * h * 2 + (2 * h if spec.bias else 0)


def model_state(spec: ModelSpec, lay: LayoutSpec, n: Optional[float] = None) -> dict:
    """Bytes of the model state per rank by sharding mode (module doc): the persistent
    ``params``/``grads``/``adam`` (on the device, or in ``host`` memory with offload), the
    ``gathered`` compute weights and ``unsharded_grads`` alive at the step's peak.  ``n``:
    the rank's parameters if not the whole model's (a pipeline stage, of ``spec.num_layers``)."""
    n = local_parameters(spec, lay.tp) if n is None else n
    if lay.sharding == "none":
        return dict(params=4.0 * n, grads=4.0 * n, adam=8.0 * n, host=0.0, gathered=0.0, unsharded_grads=0.0)
    if lay.sharding not in ("dist-opt", "fsdp2"):
        raise ValueError(f"sharding {lay.sharding!r}: choose none, dist-opt or fsdp2")
    shards = lay.dp * lay.cp
    c = 2 if spec.bf16 else 4
    layer = _layer_parameters(spec, lay.tp)
    root = n - spec.num_layers * layer
    if lay.sharding == "dist-opt":
        gathered = c * n
        unsharded = 4.0 * n if lay.micro_batches > 1 else 2 * 4.0 * layer
    else:
        gathered = c * (root + 2 * layer)
        unsharded = 2 * 4.0 * layer
    state = dict(params=4.0 * n / shards, grads=4.0 * n / shards, adam=8.0 * n / shards)
    host = sum(state.values()) if lay.offload else 0.0
    return dict(state, host=host, gathered=gathered, unsharded_grads=unsharded)


def local_parameters(spec: ModelSpec, tp: int) -> int:
    """Parameters on one TP rank (the same on every CP/DP rank)."""
    h, L, V = spec.hidden_size, spec.num_layers, spec.vocab_size
    per_layer = _layer_parameters(spec, tp)  # linears (sharded) + two norms and row biases (replicated)
    embed = V * h / tp * (1 if spec.tied else 2) + spec.max_position_embeddings * h
    return int(L * per_layer + embed + 2 * h)  # final norm


def _layer_saved(spec: ModelSpec, lay: LayoutSpec, s: float, b: int) -> float:
    """Bytes one layer saves for backward on this rank (s = tokens of this CP rank)."""
    h, f, a, g, d = (spec.hidden_size, spec.ffn_hidden_size, spec.num_attention_heads, spec.num_query_groups,
                     spec.kv_channels)
    T, e = lay.tp, (2 if spec.bf16 else 4)
    sp_div = T if (lay.sp and T > 1) else 1
    tok = s * b
    # norm inputs (residual stream), sharded under SP; linear inputs (gathered under SP: whole)
    elems = 2 * h / sp_div + 2 * h
    elems += (a + 2 * g) * d / T                      # q, k (RoPE outputs), v made contiguous
    elems += a * d / T                                # attention output = the projection input (a view:
                                                      # the kernels write it in [s, b, h, d] order)
    elems += (3 if spec.swiglu else 2) * f / T        # fc1 output (x2 SwiGLU) + activation output
    byts = tok * elems * e + tok * (a / T) * 4        # + lse (fp32)
    if spec.hidden_dropout > 0:
        byts += tok * 2 * h / sp_div                  # bool masks
    if lay.mode == "rsa" and lay.cp > 1:
        byts += b * (a / T) * s * (s * lay.cp) * 4    # full score rows, fp32
    return byts + _unfused_kept(spec, lay, s, b) + _ulysses_output(spec, lay, s, b)


def _outside_saved(spec: ModelSpec, lay: LayoutSpec, s: float, b: int) -> float:
    h, V, T, e = spec.hidden_size, spec.vocab_size, lay.tp, (2 if spec.bf16 else 4)
    sp_div = T if (lay.sp and T > 1) else 1
    tok = s * b
    # final norm input, output-layer input (gathered under SP), softmax of the logits (fp32, kept by
    # the cross entropy in place of the shifted logits); the embedding output is layer 1's norm input
    return tok * (h / sp_div * e + h * e + V / T * 4)


UNFUSED_BACKENDS = ("unfused", "local")


def _materialised(spec: ModelSpec, lay: LayoutSpec) -> bool:
    """Attention runs RSA's algorithm, keeping probabilities: rsa over P > 1, or ``--attention-backend
    unfused`` where attention is a ring of one (CP 1, every TP layout, Ulysses after its all-to-all)."""
    return (lay.mode == "rsa" and lay.cp > 1) or (spec.attention_backend in UNFUSED_BACKENDS
                                                  and lay.ring_degree == 1)


def _unfused_kept(spec: ModelSpec, lay: LayoutSpec, s: float, b: int) -> float:
    """Bytes per layer the materialised path saves beyond the flash accounting of :func:`_layer_saved`.

    Unfused over a ring of one: + the fp32 probabilities ``[b, a/(T U), sU, sU]`` (RSA's rows are
    counted there).  Both: - the LSE, which is not kept (the output, a fresh ``[b, h, s, d]``
    tensor, is not kept either: only the projection's ``[s, b, h d]`` copy of it, counted there).
    E.g. BERT-Base shapes (a = 12), N = 512, b = 1, T = 1: 12 MiB of probabilities per layer.
    """
    if not _materialised(spec, lay):
        return 0.0
    lse = s * b * spec.num_attention_heads / lay.tp * 4
    return (0.0 if lay.mode == "rsa" and lay.cp > 1 else _probs_bytes(spec, lay, s, b)) - lse


def _ulysses_output(spec: ModelSpec, lay: LayoutSpec, s: float, b: int) -> float:
    """Under Ulysses (U > 1) the attention output is kept twice: head-sharded by the ring function
    (``[b, a/(T U), sU, d]``) and, after the all-to-all back, as the projection's input."""
    if lay.ulysses_degree == 1 or _materialised(spec, lay):
        return 0.0
    return s * b * spec.num_attention_heads * spec.kv_channels / lay.tp * (2 if spec.bf16 else 4)


def _probs_bytes(spec: ModelSpec, lay: LayoutSpec, s: float, b: int) -> float:
    """fp32 probabilities one layer keeps: RSA's rows ``[b, a/T, s, sP]``, unfused over a ring of one
    ``[b, a/(T U), sU, sU]``; 0 where attention does not materialise them."""
    if not _materialised(spec, lay):
        return 0.0
    a, T, U = spec.num_attention_heads, lay.tp, lay.ulysses_degree
    if lay.mode == "rsa" and lay.cp > 1:
        return b * (a / T) * s * (s * lay.cp) * 4
    return b * (a / (T * U)) * (s * U) ** 2 * 4


def _unfused_transient(spec: ModelSpec, lay: LayoutSpec, s: float, b: int) -> float:
    """Score-sized tensors alive at a layer's backward peak under ``--attention-backend unfused``:
    over a ring of one, ``d_probs`` and the softmax-backward product (2 x the probabilities, as RSA);
    inside a ring (R > 1) the reference kernel's block (the largest is the diagonal ``[sU, sU]``):
    probabilities, their gradient and two temporaries of the softmax backward (4 x)."""
    if spec.attention_backend not in UNFUSED_BACKENDS or (lay.mode == "rsa" and lay.cp > 1):
        return 0.0
    a, T, U = spec.num_attention_heads, lay.tp, lay.ulysses_degree
    block = b * (a / (T * U)) * (s * U) ** 2 * 4
    return (2 if lay.ring_degree == 1 else 4) * block


def _optimizer_peak(n_params: int, ddp: bool) -> float:
    """The optimizer step, after backward freed the activations: foreach AdamW's ``sqrt(v)``, one
    fp32 copy of the local parameters, on top of the gradients when they are not DDP buckets (in the
    baseline)."""
    return 4.0 * n_params * (1 if ddp else 2)


def _layer_activations(spec: ModelSpec, lay: LayoutSpec, s: float, b: int, seq_length: int) -> tuple:
    """``(kept per layer, once)``: activations layers keep until backward by recompute mode, and the
    one layer's worth recomputed at a time in backward (``layers = L x kept + once``)."""
    saved = _layer_saved(spec, lay, s, b)
    if spec.recompute == "full":
        e = 2 if spec.bf16 else 4
        return s * b * spec.hidden_size / (lay.tp if lay.sp else 1) * e, saved
    if spec.recompute == "selective" and _materialised(spec, lay):  # one layer's probabilities at a time
        probs = _probs_bytes(spec, lay, s, b)
        return saved - probs, probs
    return saved, 0.0


def _transient(spec: ModelSpec, lay: LayoutSpec, s: float, b: int, early_grads: float = 0.0,
               outside: float = 0.0, head: bool = True) -> float:
    """Extra bytes on top of all saved activations at the step's peak: the largest of

    * the end of forward: the output layer's logits still alive while the cross entropy
      builds its shifted copy (``[s, b, V/T]`` fp32);
    * a layer's attention: all-to-all send/receive buffers of q, k, v (Ulysses), two K/V
      blocks in flight (ring);
    * rsa backward: ``d_probs`` and the softmax-backward product, two more score-sized tensors;
      gradients created before that point (output layer, last layer) come on top when not in DDP buckets;
      the tensors saved outside the layers (``outside``: logits' softmax, final norm and output-layer
      inputs) are freed by then.
    """
    h, a, g, d, V, T = (spec.hidden_size, spec.num_attention_heads, spec.num_query_groups, spec.kv_channels,
                        spec.vocab_size, lay.tp)
    e = 2 if spec.bf16 else 4
    tok = s * b
    head = tok * V / T * 4 if head else 0.0
    attn = 0.0
    U, R = lay.ulysses_degree, lay.ring_degree
    if U > 1:
        attn += tok * e * 2 * (a + 2 * max(g, U * T)) * d / T  # send + receive buffers of q, k, v
    if R > 1 and lay.mode != "rsa":
        attn += tok * e * 2 * 2 * max(g, U * T) * d / T  # two K/V blocks in flight
    if lay.mode == "rsa" and lay.cp > 1:
        attn += 2 * b * (a / T) * s * (s * lay.cp) * 4
    attn += _unfused_transient(spec, lay, s, b)
    return max(head, attn + early_grads - outside if attn else 0.0)


def _comm(spec: ModelSpec, lay: LayoutSpec, N: int, b: int, n_params: int) -> dict:
    h, a, g, d, L = (spec.hidden_size, spec.num_attention_heads, spec.num_query_groups, spec.kv_channels,
                     spec.num_layers)
    T, P, e = lay.tp, lay.cp, (2 if spec.bf16 else 4)
    U, R = lay.ulysses_degree, lay.ring_degree
    s = N / P
    out = {"cp": 0.0, "tp": 0.0, "grads": 0.0}
    if P > 1:
        if lay.mode == "rsa":
            blk = s * b * g * d / T * e  # one K (or V) block
            out["cp"] = L * blk * (2 * (P - 1) + 2 * (P - 1) + 2 * P)
        else:
            kv_heads = max(g // T, U) / U  # K/V heads per rank after the all-to-all (replicated when U > g)
            if R > 1:
                blk = (s * U) * b * kv_heads * d * e  # K (or V) of one ring portion, heads / U
                out["cp"] += L * blk * (2 * (R - 1) + 2 * (R - 1) + 2 * R)
            if U > 1:
                q = s * b * a / T * d * e
                kv = s * b * max(g // T, U) * d * e
                out["cp"] += L * 2 * (2 * q + 2 * kv) * (U - 1) / U  # q, k, v, out forward; their grads back
    if T > 1:
        x = N / P * b * h * e
        per = (T - 1) / T * x
        out["tp"] = (L * 4 + 2) * (2 * per if not lay.sp else 2 * per)  # AR = RS + AG in volume
    n = lay.dp * P
    if n > 1:
        out["grads"] = 2 * (n - 1) / n * n_params * 4
    return out


def estimate(spec: ModelSpec, lay: LayoutSpec, seq_length: int, micro_batch: int) -> Estimate:
    """Memory (bytes, per rank) and communication of one training step (see module doc); under
    pipeline parallelism the stage with the largest step peak (pipeline_parallel/memory.py)."""
    if lay.pp > 1:
        from .pipeline_parallel.memory import stage_estimates
        return max(stage_estimates(spec, lay, seq_length, micro_batch), key=lambda e: e.step_peak)
    s = seq_length / lay.cp
    b = micro_batch
    n = local_parameters(spec, lay.tp)
    kept, once = _layer_activations(spec, lay, s, b, seq_length)
    layers = spec.num_layers * kept + once
    outside = _outside_saved(spec, lay, s, b)
    acts = layers + outside
    comm = _comm(spec, lay, seq_length, b, n)
    state = model_state(spec, lay)
    if lay.sharding == "none":
        ddp = lay.dp * lay.cp > 1
        early = 0.0 if ddp else 4.0 * (n - spec.num_layers * _layer_parameters(spec, lay.tp)
                                       + _layer_parameters(spec, lay.tp))
        transient = _transient(spec, lay, s, b, early, outside)
        optimizer = _optimizer_peak(n, ddp)
    else:  # sharded gradients persist between steps; gathered weights and unsharded gradients do not
        ddp, early = True, 0.0
        transient = state["gathered"] + max(_transient(spec, lay, s, b, 0.0, outside), state["unsharded_grads"])
        optimizer = 0.0 if lay.offload else _optimizer_peak(n / (lay.dp * lay.cp), True)
    return Estimate(params=state["params"], grads=state["grads"], adam=state["adam"],
                    activations=acts, transient=transient, comm_bytes=sum(comm.values()),
                    grads_in_baseline=ddp, early_grads=early,
                    comm_detail=comm, host=state["host"], optimizer=optimizer)


def _largest(fits, granularity: int, limit: int) -> int:
    """Largest multiple of ``granularity`` <= limit with ``fits`` true (fits is monotone)."""
    lo, hi = 0, limit // granularity
    if hi == 0 or not fits(granularity):
        return 0
    lo = 1
    while lo < hi:
        mid = (lo + hi + 1) // 2
        if fits(mid * granularity):
            lo = mid
        else:
            hi = mid - 1
    return lo * granularity


def max_seq_length(spec: ModelSpec, lay: LayoutSpec, micro_batch: int, budget_bytes: float,
                   granularity: int = 1, limit: int = 1 << 24, device: bool = False) -> int:
    """The longest sequence (a multiple of ``granularity``) whose step peak fits the budget
    (with ``device``: whose whole device footprint, persistent state included, fits it)."""
    def fits(n):
        est = estimate(spec, lay, n, micro_batch)
        return (est.device_peak if device else est.step_peak) <= budget_bytes
    return _largest(fits, granularity, limit)


def max_micro_batch(spec: ModelSpec, lay: LayoutSpec, seq_length: int, budget_bytes: float,
                    limit: int = 1 << 16) -> int:
    """The largest micro-batch whose step peak fits the budget."""
    return _largest(lambda b: estimate(spec, lay, seq_length, b).step_peak <= budget_bytes, 1, limit)
