"""The pieces of the memory model below the estimate: what a layout and a model are
(``ModelSpec``, ``ParallelConfig``), what the estimate returns (``Estimate``), and the terms that do not
depend on the step's phases: model state by sharding mode, the optimizer step's peak, the head's kept
tensors and the communication per step.

``memory/estimate.py`` (the estimate, its searches) and ``memory/stages.py`` (one estimate
per stage) both build on this module; it imports neither.  The notation and the accounting
are in ``memory/estimate.py``'s docstring.  Pure Python (no torch).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

from ..arguments.parallel import ParallelConfig
from . import activations as activation_memory
from ..model.config import default_ffn_hidden_size


@dataclass
class ModelSpec:
    """The model as the memory model sees it: the fields of :class:`~megatron_sp.model.GPTConfig`
    of the same names (``from_config`` copies them by name) plus the run's precision and device.
    Build it from a command line with :meth:`from_args` (the real parser's namespace) or
    :meth:`from_flags`; nothing here declares a flag or a flag's default."""
    num_layers: int
    hidden_size: int
    num_attention_heads: int
    vocab_size: int  # padded
    ffn_hidden_size: Optional[int] = None
    num_query_groups: Optional[int] = None
    kv_channels: Optional[int] = None
    swiglu: bool = False
    add_bias_linear: bool = True
    position_embedding_type: str = "learned_absolute"
    max_position_embeddings: int = 0
    untie_embeddings_and_output_weights: bool = False
    normalization: str = "LayerNorm"  # RMSNorm keeps x * rsqrt for its weight gradient
    hidden_dropout: float = 0.0
    attention_dropout: float = 0.0
    recompute_granularity: Optional[str] = None  # None, "selective", "full"
    recompute_method: Optional[str] = None  # full: "uniform" or "block"
    recompute_num_layers: int = 1
    cross_entropy_chunk_size: int = 2048  # 0: full logits
    cross_entropy_loss_fusion: bool = False
    tiled_mlp_chunk_size: int = 0  # 0: untiled
    cpu_offloading_num_layers: int = 0  # 0 unless --cpu-offloading
    attention_backend: str = "auto"  # unfused/local materialise scores (see memory/estimate.py)
    reset_attention_mask: bool = False  # per-document masks (--reset-attention-mask)
    window_size: Optional[int] = None  # causal left window W of --window-size W,0
    bf16: bool = False  # --bf16 or --fp16: 2-byte activations and compute weights
    device: str = "cuda"  # "cpu": host and device are one memory (offload moves nothing)

    def __post_init__(self):
        self.ffn_hidden_size = self.ffn_hidden_size or default_ffn_hidden_size(self.hidden_size, self.swiglu)
        self.num_query_groups = self.num_query_groups or self.num_attention_heads
        self.kv_channels = self.kv_channels or self.hidden_size // self.num_attention_heads

    # --- what the terms ask -------------------------------------------------------------
    @property
    def rope(self) -> bool:
        return self.position_embedding_type == "rope"

    @property
    def position_rows(self) -> int:
        """Rows of the learned position embedding (0 under RoPE)."""
        return 0 if self.rope else (self.max_position_embeddings or 0)

    @property
    def tied(self) -> bool:
        return not self.untie_embeddings_and_output_weights

    @property
    def masked(self) -> bool:
        """Attention under a per-document or sliding-window mask (activations.backward_parts)."""
        return self.reset_attention_mask or self.window_size is not None

    @property
    def rmsnorm(self) -> bool:
        return self.normalization == "RMSNorm"

    # --- from the flags -----------------------------------------------------------------
    @classmethod
    def from_config(cls, cfg, bf16: bool = False, device: str = "cuda") -> "ModelSpec":
        """From a :class:`~megatron_sp.model.GPTConfig`, field by field."""
        from ..arguments.model_config import fields_from
        return fields_from(cls, cfg, bf16=bf16, device=device)

    @classmethod
    def from_args(cls, args, device: str = "cuda") -> "ModelSpec":
        """From the namespace of ``pretrain_gpt.py``'s parser, validated (``arguments.preflight``)."""
        from ..arguments.preflight import model_of
        return cls.from_config(model_of(args), bf16=bool(args.bf16 or args.fp16), device=device)

    @classmethod
    def from_flags(cls, argv, bf16: bool = False, recompute: Optional[str] = None,
                   device: str = "cuda") -> "ModelSpec":
        """From ``pretrain_gpt.py`` flags through the real parser; the run flags a model does not
        need (micro-batch, learning rate, iterations, data) are filled in when absent.  ``bf16`` /
        ``recompute`` add ``--bf16`` / ``--recompute-granularity`` (uniform, 1 layer, for full)."""
        from ..arguments.preflight import parse_model_flags
        extra = (["--bf16"] if bf16 else []) + (["--recompute-granularity", recompute] if recompute else [])
        if recompute == "full":
            extra += ["--recompute-method", "uniform", "--recompute-num-layers", "1"]
        return cls.from_args(parse_model_flags(list(argv) + extra), device=device)


@dataclass
class Estimate:
    params: float          # bytes of local fp32 weights (in the baseline)
    grads: float           # bytes of gradients
    adam: float            # bytes of Adam m and v
    activations: float     # kept on the device at the end of forward: all layers + outside
    transient: float       # extra at the peak phase (the loss, a layer's backward ...)
    grads_in_baseline: bool  # DDP (DP x CP > 1) allocates gradient buckets at setup (sharded: no; stages.py: yes)
    early_grads: float     # gradients already allocated when the last layer's backward peaks (no DDP)
    comm_bytes: float      # sent per step by this rank
    comm_detail: dict
    host: float = 0.0      # host bytes of the model state (--optimizer-cpu-offload)
    host_optimizer: float = 0.0  # host temporaries of the offloaded optimizer step (host_optimizer_step)
    buffers: float = 0.0   # persistent pipeline receive buffers (memory/stages.py)
    optimizer: float = 0.0  # peak of the optimizer step (activations freed by then)
    host_activations: float = 0.0  # activations offloaded to (pinned) host memory (--cpu-offloading, CUDA)
    phases: dict = None    # peak bytes of each phase of the step (activation_memory.phases)

    @property
    def host_total(self) -> float:
        """Host bytes this rank needs: offloaded model state, offloaded activations and the offloaded
        optimizer step's temporaries (added, not overlapped: torch's host allocator keeps the pinned
        activation blocks cached for the next step)."""
        return self.host + self.host_activations + self.host_optimizer

    @property
    def device_peak(self) -> float:
        """Everything on the device at the step's peak: the persistent state and the step peak."""
        on_device = 0.0 if self.host else self.params + self.adam + (self.grads if self.grads_in_baseline else 0)
        return on_device + self.buffers + self.step_peak

    @property
    def step_peak(self) -> float:
        """Bytes the step needs above the baseline taken after a warm-up step (the previous step's
        gradients freed): the largest phase (kept activations + that phase's transient), or the
        optimizer step's peak if larger.  Weights, Adam state and (under DDP, DP x CP > 1) the
        gradients are persistent and in the baseline; otherwise backward makes the gradients (sharded
        state: their shards, ``estimate.grad_shards``), and each phase counts those made before it."""
        return max(self.activations + self.transient, self.optimizer)

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
    sharded = h * qkv_out + a * d * h + h * fc1_out + f * h + ((qkv_out + fc1_out) if spec.add_bias_linear else 0)
    return sharded / tp + 2 * h * 2 + (2 * h if spec.add_bias_linear else 0)


def model_state(spec: ModelSpec, lay: ParallelConfig, n: Optional[float] = None) -> dict:
    """Bytes of the model state per rank by sharding mode (module doc): the persistent
    ``params``/``grads``/``adam`` (on the device, or in ``host`` memory with offload), the
    ``gathered`` compute weights and ``unsharded_grads`` alive at the step's peak.  ``n``:
    the rank's parameters if not the whole model's (a pipeline stage, of ``spec.num_layers``)."""
    n = local_parameters(spec, lay.tp) if n is None else n
    if not lay.sharded:
        return dict(params=4.0 * n, grads=4.0 * n, adam=8.0 * n, host=0.0, gathered=0.0, unsharded_grads=0.0)
    if lay.sharding not in ("dist-opt", "fsdp2"):
        raise ValueError(f"sharding {lay.sharding!r}: choose none, dist-opt or fsdp2")
    shards = lay.dp * lay.cp
    c = 2 if spec.bf16 else 4
    layer = layer_parameters(spec, lay.tp)
    root = n - spec.num_layers * layer
    # without accumulation, in a layer's backward: its gradients (compute dtype, as the gathered weights)
    # and the previous layer's fp32 reduce-scatter input, which FSDP2 frees at the next reduce-scatter
    unsharded = (c + 4.0) * layer
    if lay.sharding == "dist-opt":
        gathered = c * n
        unsharded = 4.0 * n if lay.micro_batches > 1 else unsharded
    else:
        gathered = c * (root + 2 * layer)
    state = dict(params=4.0 * n / shards, grads=4.0 * n / shards, adam=8.0 * n / shards)
    host = sum(state.values()) if lay.offload else 0.0
    return dict(state, host=host, gathered=gathered, unsharded_grads=unsharded)


def local_parameters(spec: ModelSpec, tp: int) -> int:
    """Parameters on one TP rank (the same on every CP/DP rank)."""
    h, L, V = spec.hidden_size, spec.num_layers, spec.vocab_size
    per_layer = layer_parameters(spec, tp)  # linears (sharded) + two norms and row biases (replicated)
    embed = V * h / tp * (1 if spec.tied else 2) + spec.position_rows * h
    return int(L * per_layer + embed + 2 * h)  # final norm


def parameter_tensors(spec: ModelSpec) -> tuple:
    """(outside the layers, per layer) parameter tensors: embeddings, final norm, untied output
    weight; a layer's four linears, their biases and its two norms (weight, LayerNorm's bias)."""
    norm = 1 if spec.rmsnorm else 2
    outside = 1 + (0 if spec.rope else 1) + norm + (0 if spec.tied else 1)
    return outside, 4 + (4 if spec.add_bias_linear else 0) + 2 * norm


def largest_gradient_check(spec: ModelSpec, lay: ParallelConfig) -> float:
    """Bytes of the step's gradient checks on the largest local gradient (training/optimizer.py):
    ``isfinite`` (composite: an fp32 ``abs`` and three bool tensors) and the norm's fp32 ``pow``
    run one parameter at a time, so the largest one sets the peak: 7 bytes per element."""
    h, f, T = spec.hidden_size, spec.ffn_hidden_size, lay.tp
    largest = max(spec.vocab_size / T * h, (2 if spec.swiglu else 1) * f / T * h)
    if lay.sharded:
        largest /= lay.dp * lay.cp
    return 7.0 * largest


def optimizer_peak(spec: ModelSpec, lay: ParallelConfig, n_params: float, ddp: bool) -> float:
    """The optimizer step, after backward freed the activations: every gradient when they are not
    DDP buckets or shards (in the baseline), the gradient checks on the largest one, with a page per
    tensor (``activation_memory.cpu_pages``).  AdamW is torch's fused kernel on CUDA and on CPU
    (training/optimizer.py): no temporaries (the foreach AdamW made an fp32 ``sqrt(v)`` per
    parameter).  Under ``--optimizer-cpu-offload`` on CUDA the checks run in host memory
    (:func:`host_optimizer_step`)."""
    grads = 0.0 if ddp else 4.0 * n_params
    outside, per_layer = parameter_tensors(spec)
    tensors = (outside + spec.num_layers * per_layer) * (0 if ddp else 1) + 4
    on_host = lay.offload and spec.device != "cpu"
    return grads + (0.0 if on_host else largest_gradient_check(spec, lay)) + activation_memory.cpu_pages(spec, tensors)


def host_optimizer_step(spec: ModelSpec, lay: ParallelConfig, n_params: float) -> float:
    """Host bytes the optimizer step adds under ``--optimizer-cpu-offload`` on CUDA: the gradient
    checks on the largest shard; the fused CPU AdamW steps the fp32 shards in place (the foreach one
    made an fp32 ``sqrt(v)`` temporary per local parameter, about 32 GB for Llama-3-8B on one GPU)."""
    if not lay.offload or spec.device == "cpu":
        return 0.0
    return largest_gradient_check(spec, lay)


def outside_saved(spec: ModelSpec, lay: ParallelConfig, s: float, b: int) -> float:
    """What the head keeps (final norm, output-layer input, the loss's tensors, RoPE's tables)."""
    out_w = activation_memory.weight_copies(spec, lay)[2]
    fused = activation_memory.fused_loss(spec, s * b)
    return activation_memory.outside_kept(spec, lay, s, b) + (0.0 if fused else out_w)


def comm(spec: ModelSpec, lay: ParallelConfig, N: int, b: int, n_params: int) -> dict:
    h, a, g, d, L = (spec.hidden_size, spec.num_attention_heads, spec.num_query_groups, spec.kv_channels,
                     spec.num_layers)
    T, P, e = lay.tp, lay.cp, (2 if spec.bf16 else 4)
    U, R = lay.ulysses_degree, lay.ring_degree
    s = N / P
    out = {"cp": 0.0, "tp": 0.0, "grads": 0.0}
    if P > 1:
        if lay.rsa:
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
