"""Pre-norm decoder layer: attention (TP heads x CP sequence) and MLP, with recompute.

Data flow of one layer on a rank (T = TP size, P = CP size, s = seq/P)::

    x [s(/T), b, h] -> norm -> linear_qkv (column) -> q [s, b, nq/T, d], k, v [s, b, ng/T, d]
      -> RoPE (global positions) -> CP attention over the CP group -> [s, b, nq/T, d]
      -> linear_proj (row) -> dropout + residual
      -> norm -> linear_fc1 (column) -> GELU or SwiGLU -> linear_fc2 (row) -> dropout + residual

The fused QKV weight is laid out per query group ``g``: ``[q heads of g | k_g | v_g]``,
so a contiguous TP shard holds whole groups and GQA needs no reshuffling.
"""
from __future__ import annotations

import contextlib

import torch
import torch.nn.functional as F

from ..activations import ActivationOffloader, sequence_tiled
from ..sequence_parallel import build_cp_attention
from ..tensor_parallel import ColumnParallelLinear, RowParallelLinear, set_tp_attributes
from .config import GPTConfig
from .rope import apply_rotary


class Norm1P(torch.nn.Module):
    """Megatron's ``--apply-layernorm-1p``: the norm's weight is stored as ``gamma - 1``
    (initialised to zeros, so weight decay pulls gamma towards 1, not 0)."""

    def __init__(self, normalization: str, hidden_size: int, eps: float):
        super().__init__()
        self.normalization, self.eps = normalization, eps
        self.weight = torch.nn.Parameter(torch.zeros(hidden_size))
        self.bias = torch.nn.Parameter(torch.zeros(hidden_size)) if normalization == "LayerNorm" else None

    def forward(self, x):
        if self.normalization == "RMSNorm":
            return F.rms_norm(x, x.shape[-1:], self.weight + 1, self.eps)
        return F.layer_norm(x, x.shape[-1:], self.weight + 1, self.bias, self.eps)


def build_norm(cfg: GPTConfig) -> torch.nn.Module:
    if cfg.apply_layernorm_1p:
        norm = Norm1P(cfg.normalization, cfg.hidden_size, cfg.norm_epsilon)
    elif cfg.normalization == "RMSNorm":
        norm = torch.nn.RMSNorm(cfg.hidden_size, eps=cfg.norm_epsilon)
    else:
        norm = torch.nn.LayerNorm(cfg.hidden_size, eps=cfg.norm_epsilon)
    for name, p in norm.named_parameters():
        set_tp_attributes(p, None, 1, "ones" if name == "weight" and not cfg.apply_layernorm_1p else "zeros",
                          sequence_parallel=cfg.sequence_parallel)
    norm.register_forward_hook(_in_input_dtype)
    return norm


def _in_input_dtype(module, inputs, out):
    """The norm's output in its input's dtype.  CUDA's autocast runs layer_norm and rms_norm in
    fp32 (its fp32 list) and returns fp32; every consumer casts to the compute dtype anyway, but
    the tiled MLP saves its input as given, so a 2-byte stream would keep 4 bytes per element
    there (CPU: already the input's dtype, no copy)."""
    return out.to(inputs[0].dtype)


def dropout_add(x, residual, p: float, training: bool, rng, sharded: bool):
    """``residual + dropout(x)``; on Megatron-SP shards the mask comes from the TP stream."""
    if not training or p == 0.0:
        return residual + x
    if sharded:
        with rng.fork():
            return residual + F.dropout(x, p, True)
    return residual + F.dropout(x, p, True)


class SelfAttention(torch.nn.Module):
    def __init__(self, cfg: GPTConfig, mesh, rng):
        super().__init__()
        tp = mesh.tp_size
        self.rng, self.cfg = rng, cfg
        self.groups_local = cfg.num_query_groups // tp
        self.heads_per_group = cfg.num_attention_heads // cfg.num_query_groups
        d = cfg.kv_channels
        self.linear_qkv = ColumnParallelLinear(
            cfg.hidden_size, cfg.num_query_groups * (self.heads_per_group + 2) * d, mesh.tp_group,
            bias=cfg.add_bias_linear or cfg.add_qkv_bias, sequence_parallel=cfg.sequence_parallel)
        self.core = build_cp_attention(cfg.cp_comm_type, mesh, causal=True,
                                       attention_dropout=cfg.attention_dropout,
                                       attention_backend=cfg.attention_backend, window=cfg.window_size)
        self.linear_proj = RowParallelLinear(cfg.num_attention_heads * d, cfg.hidden_size, mesh.tp_group,
                                             bias=cfg.add_bias_linear,
                                             sequence_parallel=cfg.sequence_parallel)

    def _core(self, q, k, v, mask=None):
        with self.rng.fork():  # heads are split over TP: dropout masks must differ
            return self.core(q, k, v, mask)

    def forward(self, x, rope=None, mask=None):
        # mask: sequence_parallel.AttentionMask of the micro-batch's documents, or None
        # x: [s(/T), b, h]
        mixed = self.linear_qkv(x)  # [s, b, g_local * (hpg + 2) * d]
        s, b = mixed.shape[:2]
        hpg, d = self.heads_per_group, self.cfg.kv_channels
        mixed = mixed.view(s, b, self.groups_local, hpg + 2, d)
        q = mixed[:, :, :, :hpg].reshape(s, b, self.groups_local * hpg, d)  # [s, b, nq_local, d]
        k, v = mixed[:, :, :, hpg], mixed[:, :, :, hpg + 1]  # [s, b, ng_local, d]
        if rope is not None:
            q, k = apply_rotary(q, *rope), apply_rotary(k, *rope)
        self.core.train(self.training)
        if self.cfg.recompute_granularity == "selective":
            ctx = self.rng.checkpoint(self._core, q, k, v.contiguous(), mask)
        else:
            ctx = self._core(q, k, v.contiguous(), mask)
        return self.linear_proj(ctx.reshape(s, b, -1))  # [s(/T), b, h]


class MLP(torch.nn.Module):
    """Column-parallel fc1 -> GELU or SwiGLU -> row-parallel fc2.

    With ``tiled_mlp_chunk_size`` (``--tiled-mlp-chunk-size``) the local part (both matmuls and
    the activation) runs over chunks of that many tokens and is recomputed in backward
    (``activations.sequence_tiled``): only one chunk's ``[c, 2 ffn/T]`` intermediate exists
    and the layer keeps the MLP's input alone.  The TP communication stays outside the tiles.
    """

    def __init__(self, cfg: GPTConfig, mesh):
        super().__init__()
        self.swiglu, self.chunk_tokens = cfg.swiglu, cfg.tiled_mlp_chunk_size
        self.gelu_approximate = "tanh" if cfg.openai_gelu else "none"
        width = cfg.ffn_hidden_size * (2 if cfg.swiglu else 1)
        self.linear_fc1 = ColumnParallelLinear(cfg.hidden_size, width, mesh.tp_group, bias=cfg.add_bias_linear,
                                               sequence_parallel=cfg.sequence_parallel,
                                               chunks=2 if cfg.swiglu else 1)
        self.linear_fc2 = RowParallelLinear(cfg.ffn_hidden_size, cfg.hidden_size, mesh.tp_group,
                                            bias=cfg.add_bias_linear, sequence_parallel=cfg.sequence_parallel)

    def _activation(self, h):
        # h: [.., ffn/T (x2 for SwiGLU)] -> [.., ffn/T]
        if self.swiglu:
            gate, up = h.chunk(2, dim=-1)
            return F.silu(gate) * up
        return F.gelu(h, approximate=self.gelu_approximate)

    def _local(self, x, *params):
        # x: [c, h] -> partial fc2 output [c, h] (summed over TP by the caller)
        w1, b1, w2 = params if len(params) == 3 else (params[0], None, params[1])
        return F.linear(self._activation(F.linear(x, w1, b1)), w2)

    def forward(self, x):
        if not self.chunk_tokens:
            return self.linear_fc2(self._activation(self.linear_fc1(x)))
        x = self.linear_fc1.gather_input(x)  # [s, b, h]
        s, b, h = x.shape
        params = [p for p in (self.linear_fc1.weight, self.linear_fc1.bias, self.linear_fc2.weight) if p is not None]
        y = sequence_tiled(self._local, x.reshape(s * b, h), params=params, chunk_tokens=self.chunk_tokens)
        return self.linear_fc2.reduce_output(y.view(s, b, -1))  # [s(/T), b, h]


class TransformerLayer(torch.nn.Module):
    def __init__(self, cfg: GPTConfig, mesh, rng):
        super().__init__()
        self.cfg, self.rng = cfg, rng
        self.input_norm = build_norm(cfg)
        self.self_attention = SelfAttention(cfg, mesh, rng)
        self.pre_mlp_norm = build_norm(cfg)
        self.mlp = MLP(cfg, mesh)
        self.sharded = cfg.sequence_parallel and mesh.tp_size > 1

    def forward(self, x, rope=None, mask=None):
        p, train = self.cfg.hidden_dropout, self.training
        x = dropout_add(self.self_attention(self.input_norm(x), rope, mask), x, p, train, self.rng, self.sharded)
        return dropout_add(self.mlp(self.pre_mlp_norm(x)), x, p, train, self.rng, self.sharded)


class TransformerBlock(torch.nn.Module):
    """The stack of layers, with Megatron's full-recompute methods and activation offload.

    ``layers`` are the *global* indices this rank holds (all of them without pipeline
    parallelism): ``self.layers`` is keyed by them, so parameter names are
    ``layers.<global index>...`` in every pipeline layout (checkpoints and the
    name-seeded initialisation depend on it).  ``forward(x, rope, keys)`` runs the
    layers ``keys`` (one pipeline stage's; default all) in order.

    ``uniform``: layers are split into groups of ``recompute_num_layers`` and each
    group's input is the only activation kept.  ``block``: the first
    ``recompute_num_layers`` layers are recomputed one by one, the rest are not.
    ``cpu_offloading_num_layers`` N: what a run of layers starting below N keeps for
    backward (its checkpointed input, or all it saves) waits in host memory
    (``activations.offload``).
    """

    def __init__(self, cfg: GPTConfig, mesh, rng, layers=None):
        super().__init__()
        self.cfg, self.rng = cfg, rng
        ids = range(cfg.num_layers) if layers is None else layers
        self.layers = torch.nn.ModuleDict({str(i): TransformerLayer(cfg, mesh, rng) for i in ids})
        # --cpu-offloading: what the first N layers (global indices) keep for backward waits in host memory
        self.offloader = ActivationOffloader() if cfg.cpu_offloading_num_layers > 0 else None

    @staticmethod
    def _run(layers, mask=None):
        def run(x, *rope):
            for layer in layers:
                x = layer(x, rope or None, mask)
            return x
        return run

    def segments(self, n: int):
        """``(start, end, checkpointed)`` runs of ``n`` layers (positions in the run list), in order."""
        cfg = self.cfg
        if cfg.recompute_granularity != "full" or not self.training:
            return [(i, i + 1, False) for i in range(n)]
        step = max(1, cfg.recompute_num_layers)
        if cfg.recompute_method == "uniform":
            return [(start, min(n, start + step), True) for start in range(0, n, step)]
        return [(i, i + 1, i < step) for i in range(n)]  # block

    def forward(self, x, rope=None, keys=None, mask=None):
        # mask: the micro-batch's AttentionMask (documents), the same object for every layer
        keys = [int(k) for k in self.layers] if keys is None else list(keys)  # global layer indices
        layers = [self.layers[str(k)] for k in keys]
        rope_args = tuple(rope) if rope is not None else ()
        offload = self.offloader if (self.offloader is not None and self.training
                                     and torch.is_grad_enabled()) else None
        if offload is not None:
            offload.begin()
        for start, end, checkpointed in self.segments(len(layers)):
            run = self._run(layers[start:end], mask)
            with (offload.layer(keys[start]) if offload is not None and keys[start] < self.cfg.cpu_offloading_num_layers
                  else contextlib.nullcontext()):
                x = self.rng.checkpoint(run, x, *rope_args) if checkpointed else run(x, *rope_args)
        return x
