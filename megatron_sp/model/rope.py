"""Rotary position embedding on global position ids (exact under any CP sharding).

``x * cos(p w) + rotate_half(x) * sin(p w)`` with ``w_i = base^(-2i/r)`` and
``rotate_half([x1, x2]) = [-x2, x1]`` (the non-interleaved form Megatron uses).
Because ``p`` is the token's global position, a CP rank holding tokens 0-1 and 6-7
(zigzag, P = 2, s = 8) rotates them exactly as the single-rank model does.

Megatron-LM's options: ``--rotary-percent f`` rotates the first ``r = int(d f)`` channels
of each head and passes the rest through; ``--rotary-seq-len-interpolation-factor k``
uses positions ``p / k``; ``--use-rope-scaling --rope-scaling-factor F`` rescales the
frequencies as Llama 3.1 does (:func:`llama3_scaled_frequencies`).
"""
from __future__ import annotations

import math

import torch


def llama3_scaled_frequencies(inv_freq, factor: float, low_freq_factor: float = 1.0,
                              high_freq_factor: float = 4.0, original_max_positions: int = 8192):
    """Llama 3.1's frequency scaling: wavelengths longer than ``original / low_freq_factor``
    are stretched by ``factor``, shorter than ``original / high_freq_factor`` kept, and the band
    between blended linearly in ``original / wavelength``.  The defaults are Llama 3.1's (and
    the constants Megatron-LM's ``--use-rope-scaling`` uses)."""
    wavelen = 2 * math.pi / inv_freq
    low, high = original_max_positions / low_freq_factor, original_max_positions / high_freq_factor
    smooth = (original_max_positions / wavelen - low_freq_factor) / (high_freq_factor - low_freq_factor)
    blended = (1 - smooth) * inv_freq / factor + smooth * inv_freq
    out = torch.where(wavelen > low, inv_freq / factor, inv_freq)
    return torch.where((wavelen >= high) & (wavelen <= low), blended, out)


class RotaryEmbedding(torch.nn.Module):
    """No buffer: the frequencies are recomputed per call (``rot/2`` numbers, negligible), so a
    model built on the meta device and materialised with ``to_empty`` needs no re-initialisation."""

    def __init__(self, dim: int, base: float = 10000.0, rotary_percent: float = 1.0,
                 interpolation_factor: float | None = None, rope_scaling_factor: float | None = None):
        super().__init__()
        self.rot = int(dim * rotary_percent) if rotary_percent < 1.0 else dim
        self.base, self.rope_scaling_factor = base, rope_scaling_factor
        self.interpolation_factor = interpolation_factor

    def inv_freq(self, device) -> torch.Tensor:
        inv_freq = 1.0 / self.base ** (torch.arange(0, self.rot, 2, dtype=torch.float32, device=device) / self.rot)
        if self.rope_scaling_factor is not None:
            inv_freq = llama3_scaled_frequencies(inv_freq, self.rope_scaling_factor)
        return inv_freq

    def forward(self, position_ids):
        # position_ids: [b, s] -> cos, sin: [s, b, 1, r]
        pos = position_ids.t().float()
        if self.interpolation_factor is not None:
            pos = pos / self.interpolation_factor
        freqs = pos.unsqueeze(-1) * self.inv_freq(position_ids.device)
        emb = torch.cat([freqs, freqs], dim=-1).unsqueeze(2)
        return emb.cos(), emb.sin()


def _rotate(x, cos, sin):
    # x: [s, b, heads, d]; cos, sin: [s, b, 1, r] with r <= d (channels r.. pass through)
    rot = cos.shape[-1]
    x_rot, x_pass = x[..., :rot].float(), x[..., rot:]
    x1, x2 = x_rot.chunk(2, dim=-1)
    out = torch.cat([-x2, x1], dim=-1).mul_(sin).addcmul_(x_rot, cos)  # two fp32 copies of x at most
    del x_rot, x1, x2
    out = out.to(x.dtype)
    return out if rot == x.shape[-1] else torch.cat([out, x_pass], dim=-1)


class _Rotary(torch.autograd.Function):
    """The rotation in fp32, returned in ``x``'s dtype, keeping only ``cos`` and ``sin`` (which
    every layer shares) for backward.  Left to autograd the same expression keeps its fp32
    intermediates (the upcast ``x``, ``rotate_half(x)`` and the products: about five fp32
    copies of q per layer, 80 KB per token at 8B, on the device for the recomputed layer);
    the backward here is the transposed rotation, the rotation by ``-angle``."""

    @staticmethod
    def forward(ctx, x, cos, sin):
        ctx.save_for_backward(cos, sin)
        return _rotate(x, cos, sin)

    @staticmethod
    def backward(ctx, grad):
        cos, sin = ctx.saved_tensors
        return _rotate(grad, cos, -sin), None, None


def apply_rotary(x, cos, sin):
    """``x * cos + rotate_half(x) * sin`` on the first ``r`` channels of ``x`` ([s, b, heads, d]),
    computed in fp32 and returned in ``x``'s dtype (see :class:`_Rotary` for what it keeps)."""
    return _Rotary.apply(x, cos, sin)
