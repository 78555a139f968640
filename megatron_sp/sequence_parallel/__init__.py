"""Sequence (context) parallel attention: RSA, ring (zigzag), Ulysses and USP.

Public API::

    attn = build_cp_attention(mode, mesh, causal=True, attention_dropout=0.0, softmax_scale=None)
    out = attn(q, k, v)        # [s_local, b, heads, d] shards in, local output out
    line, warning = attention_summary(mode, cp_size, device, dtype, attention_dropout)
    kernel = resolve_backend("unfused", device, dtype)   # --attention-backend (Megatron's values)
    check_backend(backend, mode, cp_size, device, dtype, attention_dropout)
    check_cp_config(seq_len, num_heads_local, num_kv_heads_local, mode, causal, mesh_or_sizes,
                    attention_dropout)
    uses_zigzag(mode, causal); cp_local_indices(seq_len, mode, causal, mesh)
    shard_for_cp(x, seq_dim, mode, causal, mesh); unshard_from_cp(x_local, seq_dim, mode, causal, mesh)

Modules: kernels (block kernels), backends (--attention-backend), comm (ring P2P, all-to-all, counters),
masks (documents and windows per block), ring (online softmax + zigzag), rsa, ulysses, usp, shard, config, attention.
"""
from .attention import ContextParallelAttention, attention_summary, build_cp_attention
from .backends import ATTENTION_BACKENDS, check_backend, resolve_backend
from .masks import AttentionMask
from .config import CP_COMM_TYPES, check_cp_config, cp_sizes, uses_zigzag
from .shard import cp_local_indices, shard_for_cp, unshard_from_cp

__all__ = ["ATTENTION_BACKENDS", "AttentionMask", "CP_COMM_TYPES", "ContextParallelAttention", "attention_summary",
           "build_cp_attention",
           "check_backend", "check_cp_config", "cp_local_indices", "cp_sizes", "resolve_backend", "shard_for_cp",
           "unshard_from_cp", "uses_zigzag"]
