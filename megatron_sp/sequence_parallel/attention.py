"""The CP attention layer the model calls: ``out = attn(q, k, v)`` on local shards.

    attn = build_cp_attention("p2p", mesh, causal=True, window=None)
    out = attn(q, k, v)   # q: [s_local, b, hq, d]  k, v: [s_local, b, hkv, d] -> [s_local, b, hq, d]
    out = attn(q, k, v, AttentionMask(document_starts))   # packed documents (masks.py)

``window`` (``--window-size W 0``): key j visible to query i only if ``i - W <= j <= i``.
Documents and window reach every mode as one :class:`masks.AttentionMask`: ``rsa`` masks its
materialised rows with it, the ring modes run only the live sub-blocks of each step.

Dispatch::

    cp_size == 1        local attention through the block kernel (any mode)
    rsa                 rsa.py (ring over the CP group, contiguous layout)
    p2p / a2a / a2a+p2p usp.py with (U, R) = (1, P) / (P, 1) / hierarchical sizes

The block kernel is chosen per call from ``--attention-backend`` and the tensors'
device and dtype (backends.resolve_backend; ``auto``: kernels.select_kernel); dropout (training mode only) draws one base seed per
call from torch's default generator, identical on all CP ranks, and every
(rank, block) derives its own seed from it.
"""
from __future__ import annotations

import math
from typing import Optional

import torch
from torch import nn

from .comm import Ring
from .masks import AttentionMask
from .config import check_cp_config, cp_sizes, mesh_layout, uses_zigzag
from .backends import UNFUSED_BACKENDS, check_backend_for_mode, resolve_backend
from .rsa import RingSelfAttentionFunction
from .usp import usp_attention


class ContextParallelAttention(nn.Module):
    """Attention over a sequence split across the CP group (no parameters)."""

    def __init__(self, mode: str, mesh, causal: bool = True, attention_dropout: float = 0.0,
                 softmax_scale: Optional[float] = None, kernel: Optional[str] = None,
                 attention_backend: str = "auto", window: Optional[int] = None):
        super().__init__()
        if window is not None and not causal:
            raise ValueError(f"--window-size {window} 0 is a causal left window; non-causal attention cannot take it")
        self.window = window
        self._window_mask = AttentionMask(None, window) if window is not None else None
        self.p, self.u_size, self.r_size = cp_sizes(mode, mesh)
        self.mode, self.mesh, self.causal = mode, mesh, causal
        self.attention_dropout, self.softmax_scale, self.kernel_name = (
            attention_dropout, softmax_scale, kernel)
        self.attention_backend = attention_backend
        # mode, sizes and dropout now; lengths and heads at each call; the backend's device at the first
        check_cp_config(2 * self.p, self.u_size, self.u_size, mode, causal, mesh, attention_dropout)
        check_backend_for_mode(attention_backend, mode, self.p)
        _, self.u_index, _, self.r_index = mesh_layout(mode, mesh)
        if self.p == 1:
            self.ulysses_group, self.ring = None, Ring([mesh.rank], 0)
        elif mode in ("rsa", "p2p"):
            self.ulysses_group, self.ring = None, Ring(mesh.cp_ranks, mesh.cp_rank, mesh.cp_group)
        elif mode == "a2a":
            self.ulysses_group, self.ring = mesh.cp_group, Ring([mesh.rank], 0)
        else:
            self.ulysses_group = mesh.ulysses_group
            self.ring = Ring(mesh.ring_ranks, mesh.ring_rank, mesh.ring_group)

    def extra_repr(self) -> str:
        return (f"mode={self.mode}, cp={self.p} (ulysses {self.u_size} x ring {self.r_size}), "
                f"causal={self.causal}, window={self.window}, dropout={self.attention_dropout}, "
                f"backend={self.attention_backend}")

    def _mask(self, mask: Optional[AttentionMask], seq_len: int) -> Optional[AttentionMask]:
        """The call's mask with this layer's window (else the mask's own); None when it masks nothing
        beyond causality."""
        if mask is not None and not self.causal:
            raise ValueError("document masks (--reset-attention-mask) need causal attention")
        window = self.window if self.window is not None else (mask.window if mask is not None else None)
        window = window if window is not None and window < seq_len - 1 else None
        if (mask is None or mask.bounds is None) and window is None:
            return None
        if (mask is None or mask.bounds is None) and window == self.window:
            return self._window_mask  # one plan cache for every call of this layer
        return mask.with_window(window)

    def forward(self, q, k, v, mask: Optional[AttentionMask] = None):
        # q: [s_local, b, hq, d]   k, v: [s_local, b, hkv, d]
        s_local, _, hq, d = q.shape
        if k.shape != v.shape or k.shape[:2] != q.shape[:2] or k.shape[3] != d:
            raise ValueError(f"CP attention: q {tuple(q.shape)}, k {tuple(k.shape)}, "
                             f"v {tuple(v.shape)} must be [s_local, b, heads, head_dim] alike")
        check_cp_config(s_local * self.p, hq, k.shape[2], self.mode, self.causal, self.mesh,
                        self.attention_dropout)
        scale = self.softmax_scale if self.softmax_scale is not None else 1.0 / math.sqrt(d)
        dropout_p = self.attention_dropout if self.training else 0.0
        seed = int(torch.randint(0, 1 << 62, (1,))) if dropout_p > 0 else 0
        mask = self._mask(mask, s_local * self.p)
        if self.mode == "rsa" and self.p > 1:
            out = RingSelfAttentionFunction.apply(*(x.permute(1, 2, 0, 3) for x in (q, k, v)),
                                                  self.ring, self.causal, scale, dropout_p, seed, mask)
            return out.permute(2, 0, 1, 3)
        kernel = resolve_backend(self.attention_backend, q.device, q.dtype, dropout_p, self.kernel_name)
        u_size = self.u_size if self.p > 1 else 1
        return usp_attention(q, k, v, self.ulysses_group, u_size, self.u_index, self.ring, kernel,
                             self.causal, uses_zigzag(self.mode, self.causal) and self.r_size > 1,
                             scale, dropout_p, seed, mask)


def attention_summary(mode: str, cp_size: int, device, dtype, attention_dropout: float,
                      kernel: Optional[str] = None, attention_backend: str = "auto",
                      ring_size: Optional[int] = None, score_bytes: float = 0.0) -> tuple[str, Optional[str]]:
    """``(line, warning)`` describing what the attention of a run will execute.

    ``ring_size`` is the ring degree R (default: from ``mode`` and ``cp_size``; give it for
    a2a+p2p).  ``warning`` is set when the choice costs memory quadratic in the block length
    without the user having asked for it: attention dropout under ``auto`` on a backend that
    cannot apply it falls back to the reference kernel, which materialises the fp32
    ``[s_block, s_block]`` scores of every head.  ``score_bytes``: the reference kernel's score
    bytes at a layer's backward at the run's shape (``config.reference_backward_bytes``, as the
    memory model counts them), printed with the reference kernel's line when > 0.
    """
    cost = f"; {score_bytes / 1e9:.3g} GB of scores at a layer's backward at this length" if score_bytes > 0 else ""
    what = f"--cp-comm-type {mode} over CP {cp_size}"
    if mode == "rsa" and cp_size > 1:
        return f"{what}: full score rows [s/{cp_size} x s] per head (the paper's RSA)", None
    ring = ring_size if ring_size is not None else (1 if mode == "a2a" else cp_size)
    chosen = resolve_backend(attention_backend, device, dtype, attention_dropout, kernel)
    backend = f"--attention-backend {attention_backend}" + (" (= unfused)" if attention_backend == "local" else "")
    if chosen.keeps_probs and ring == 1:
        heads = "per head" if cp_size == 1 else f"per head of the heads/{cp_size} after the all-to-all"
        line = (f"{what}, {backend}: scores materialised, fp32 probabilities [s x s] {heads} kept for "
                f"backward (plain matmuls)")
    elif chosen.keeps_probs:
        line = (f"{what}, {backend}: reference block kernel inside the ring (each block's scores "
                f"materialised, recomputed in backward)")
    elif chosen.name == "reference":
        line = f"{what}: block kernel reference (fp32 scores of each block materialised, recomputed in backward)"
    else:
        line = f"{what}: block kernel {chosen.name}" + (
            "" if attention_backend == "auto" else f" (--attention-backend {attention_backend})")
    if chosen.name != "reference" or chosen.keeps_probs:  # the figure is the reference kernel's blocks
        cost = ""
    if (attention_dropout > 0 and chosen.name == "reference" and not kernel
            and attention_backend not in UNFUSED_BACKENDS):
        return line + cost, (f"--attention-dropout {attention_dropout} > 0 runs attention through the reference "
                             "kernel (the flash kernels here cannot apply it), which materialises fp32 scores "
                             "[s_block x s_block] per head: memory quadratic in the sequence"
                             + (f" ({score_bytes / 1e9:.3g} GB at a layer's backward at this length)"
                                if score_bytes > 0 else "")
                             + ". Pass --attention-dropout 0 for the flash kernels (usual for long-context "
                             "training).")
    return line + cost, None


def build_cp_attention(mode: str, mesh, causal: bool = True, attention_dropout: float = 0.0,
                       softmax_scale: Optional[float] = None,
                       kernel: Optional[str] = None, attention_backend: str = "auto",
                       window: Optional[int] = None) -> ContextParallelAttention:
    """The CP attention layer for ``--cp-comm-type mode`` on ``mesh`` (see module doc).

    ``attention_backend`` is ``--attention-backend`` (backends.py); ``kernel`` forces a
    block-kernel backend by name under ``auto`` (default: by device and dtype).
    """
    return ContextParallelAttention(mode, mesh, causal, attention_dropout, softmax_scale, kernel,
                                    attention_backend, window)
