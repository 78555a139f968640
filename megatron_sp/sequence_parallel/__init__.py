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
from .config import ATTENTION_BACKENDS, CP_COMM_TYPES, check_cp_config, cp_sizes, uses_zigzag

__all__ = ["ATTENTION_BACKENDS", "AttentionMask", "CP_COMM_TYPES", "ContextParallelAttention", "attention_summary",
           "build_cp_attention",
           "check_backend", "check_cp_config", "cp_local_indices", "cp_sizes", "resolve_backend", "shard_for_cp",
           "unshard_from_cp", "uses_zigzag"]

_TORCH_PARTS = {"ContextParallelAttention": "attention", "attention_summary": "attention",
                "build_cp_attention": "attention", "check_backend": "backends", "resolve_backend": "backends",
                "cp_local_indices": "shard", "shard_for_cp": "shard", "unshard_from_cp": "shard",
                "AttentionMask": "masks"}


def __getattr__(name):  # the torch parts, on first use: ``config`` (the modes and their rules) imports no torch
    if name in _TORCH_PARTS:
        import importlib
        return getattr(importlib.import_module(f".{_TORCH_PARTS[name]}", __name__), name)
    raise AttributeError(name)
