"""The pieces of the memory model below the estimate: what a layout and a model are
(``ModelSpec``, ``LayoutSpec``), what the estimate returns (``Estimate``), and the terms that do not
depend on the step's phases: model state by sharding mode, the optimizer step's peak, the head's kept
tensors and the communication per step.

``memory_model`` (the estimate, its searches) and ``pipeline_parallel/memory.py`` (one estimate
per stage) both build on this module; it imports neither.  The notation and the accounting
are in ``memory_model``'s docstring.  Pure Python (no torch).
"""
from __future__ import annotations

import argparse
import math
from dataclasses import dataclass
from typing import Optional

from . import activation_memory
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
    rmsnorm: bool = False  # --normalization RMSNorm (keeps x * rsqrt for its weight gradient)
    recompute_method: str = "uniform"  # full: "uniform" or "block"
    recompute_num_layers: int = 1
    loss_chunk: int = 2048  # --cross-entropy-chunk-size (0: full logits)
    loss_fusion: bool = False  # --cross-entropy-loss-fusion
    mlp_chunk: int = 0  # --tiled-mlp-chunk-size (0: untiled)
    offload_layers: int = 0  # --cpu-offloading-num-layers (with --cpu-offloading)
    device: str = "cuda"  # "cpu": host and device are one memory (offload moves nothing)
    attention_backend: str = "auto"  # --attention-backend: unfused/local materialise scores (see module doc)

    def __post_init__(self):
        self.ffn_hidden_size = self.ffn_hidden_size or default_ffn_hidden_size(self.hidden_size, self.swiglu)
        self.num_query_groups = self.num_query_groups or self.num_attention_heads
        self.kv_channels = self.kv_channels or self.hidden_size // self.num_attention_heads

    @classmethod
    def from_flags(cls, argv, bf16: bool = False, recompute: Optional[str] = None,
                   make_vocab_size_divisible_by: int = 128, device: str = "cuda") -> "ModelSpec":
        """From ``pretrain_gpt.py`` flags (the subset that changes memory); ``bf16``/``recompute``
        given here override the flags."""
        p = argparse.ArgumentParser(add_help=False, allow_abbrev=False)
        for flag, typ in (("--num-layers", int), ("--hidden-size", int), ("--num-attention-heads", int),
                          ("--ffn-hidden-size", int), ("--num-query-groups", int), ("--kv-channels", int),
                          ("--vocab-size", int), ("--max-position-embeddings", int), ("--hidden-dropout", float),
                          ("--make-vocab-size-divisible-by", int), ("--recompute-granularity", str),
                          ("--recompute-method", str), ("--recompute-num-layers", int),
                          ("--cross-entropy-chunk-size", int), ("--tiled-mlp-chunk-size", int),
                          ("--cpu-offloading-num-layers", int)):
            p.add_argument(flag, type=typ, default=None)
        for flag in ("--swiglu", "--disable-bias-linear", "--untie-embeddings-and-output-weights",
                     "--group-query-attention", "--bf16", "--recompute-activations", "--cross-entropy-loss-fusion",
                     "--cpu-offloading", "--legacy-tokenizer"):
            p.add_argument(flag, action="store_true")
        p.add_argument("--position-embedding-type", default="learned_absolute")
        p.add_argument("--normalization", default="LayerNorm")
        p.add_argument("--attention-backend", default="auto")
        a, _ = p.parse_known_args(argv)
        div = a.make_vocab_size_divisible_by or make_vocab_size_divisible_by
        # NullTokenizer: EOD is the last of the V ids (--legacy-tokenizer: an extra id V)
        vocab = int(math.ceil((a.vocab_size + a.legacy_tokenizer) / div) * div)
        recompute = recompute or a.recompute_granularity or ("selective" if a.recompute_activations else None)
        return cls(a.num_layers, a.hidden_size, a.num_attention_heads, vocab, a.ffn_hidden_size,
                   a.num_query_groups if a.group_query_attention else None, a.kv_channels, a.swiglu,
                   not a.disable_bias_linear, a.position_embedding_type == "rope",
                   0 if a.position_embedding_type == "rope" else (a.max_position_embeddings or 0),
                   not a.untie_embeddings_and_output_weights,
                   a.hidden_dropout if a.hidden_dropout is not None else 0.0, bf16 or a.bf16, recompute,
                   rmsnorm=a.normalization == "RMSNorm", recompute_method=a.recompute_method or "uniform",
                   recompute_num_layers=a.recompute_num_layers or 1,
                   loss_chunk=2048 if a.cross_entropy_chunk_size is None else a.cross_entropy_chunk_size,
                   loss_fusion=a.cross_entropy_loss_fusion, mlp_chunk=a.tiled_mlp_chunk_size or 0,
                   offload_layers=(a.cpu_offloading_num_layers or 0) if a.cpu_offloading else 0, device=device,
                   attention_backend=a.attention_backend)


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
    activations: float     # kept on the device at the end of forward: all layers + outside
    transient: float       # extra at the peak phase (the loss, a layer's backward ...)
    grads_in_baseline: bool  # DDP (DP x CP > 1) allocates gradient buckets at setup
    early_grads: float     # gradients already allocated when the last layer's backward peaks (no DDP)
    comm_bytes: float      # sent per step by this rank
    comm_detail: dict
    host: float = 0.0      # host bytes of the model state (--optimizer-cpu-offload)
    buffers: float = 0.0   # persistent pipeline receive buffers (pipeline_parallel/memory.py)
    optimizer: float = 0.0  # peak of the optimizer step (activations freed by then)
    host_activations: float = 0.0  # activations offloaded to (pinned) host memory (--cpu-offloading, CUDA)
    phases: dict = None    # peak bytes of each phase of the step (activation_memory.phases)

    @property
    def host_total(self) -> float:
        """Host bytes this rank needs: offloaded model state and offloaded activations."""
        return self.host + self.host_activations

    @property
    def device_peak(self) -> float:
        """Everything on the device at the step's peak: the persistent state and the step peak."""
        on_device = 0.0 if self.host else self.params + self.adam + (self.grads if self.grads_in_baseline else 0)
        return on_device + self.buffers + self.step_peak

    @property
    def step_peak(self) -> float:
        """Bytes the step needs above the baseline taken after a warm-up step (the previous step's
        gradients freed): the largest phase (kept activations + that phase's transient), or the
        optimizer step's peak if larger.  Weights, Adam state and (under DDP, DP x CP > 1, or sharded
        state) the gradients are persistent and in the baseline; without DDP backward makes the
        gradients, and each phase counts those made before it."""
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
                "step_peak_mib": self.step_peak / mib, "host_activations_mib": self.host_activations / mib,
                "comm_mib_per_step": self.comm_bytes / mib,
                **{f"phase_{k}_mib": v / mib for k, v in (self.phases or {}).items()},
                **{f"comm_{k}_mib": v / mib for k, v in self.comm_detail.items()}}

def layer_parameters(spec: ModelSpec, tp: int) -> float:
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
    layer = layer_parameters(spec, lay.tp)
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
    per_layer = layer_parameters(spec, tp)  # linears (sharded) + two norms and row biases (replicated)
    embed = V * h / tp * (1 if spec.tied else 2) + spec.max_position_embeddings * h
    return int(L * per_layer + embed + 2 * h)  # final norm


def parameter_tensors(spec: ModelSpec) -> tuple:
    """(outside the layers, per layer) parameter tensors: embeddings, final norm, untied output
    weight; a layer's four linears, their biases and its two norms (weight, LayerNorm's bias)."""
    norm = 1 if spec.rmsnorm else 2
    outside = 1 + (0 if spec.rope else 1) + norm + (0 if spec.tied else 1)
    return outside, 4 + (4 if spec.bias else 0) + 2 * norm


def optimizer_peak(spec: ModelSpec, lay: LayoutSpec, n_params: float, ddp: bool) -> float:
    """The optimizer step, after backward freed the activations: every gradient when they are not
    DDP buckets or shards (in the baseline), and on CPU the foreach AdamW's ``sqrt(v)`` temporaries,
    one per local (sharded) parameter (CUDA's fused kernel makes none; offloaded state steps on the host),
    with a page per tensor (``activation_memory.cpu_pages``)."""
    grads = 0.0 if ddp else 4.0 * n_params
    if lay.sharding != "none":
        n_params /= lay.dp * lay.cp
    temps = spec.device == "cpu" and not lay.offload
    outside, per_layer = parameter_tensors(spec)
    tensors = (outside + spec.num_layers * per_layer) * ((0 if ddp else 1) + (1 if temps else 0))
    return grads + (4.0 * n_params if temps else 0.0) + activation_memory.cpu_pages(spec, tensors)


def outside_saved(spec: ModelSpec, lay: LayoutSpec, s: float, b: int) -> float:
    """What the head keeps (final norm, output-layer input, the loss's tensors, RoPE's tables)."""
    out_w = activation_memory.weight_copies(spec, lay)[2]
    fused = activation_memory.fused_loss(spec, s * b)
    return activation_memory.outside_kept(spec, lay, s, b) + (0.0 if fused else out_w)


def comm(spec: ModelSpec, lay: LayoutSpec, N: int, b: int, n_params: int) -> dict:
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
