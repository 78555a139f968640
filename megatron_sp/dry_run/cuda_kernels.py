"""Where a CPU build of torch runs another kernel than a GPU run would, the GPU's, shape for shape.

The dry run executes the CPU code path (README, "Checking a command without a GPU").  One op
differs there in what it allocates, not only in speed: ``F.rms_norm``.  On CUDA it is one fused
kernel (``aten::_fused_rms_norm``) behind autocast's fp32 policy (``rms_norm`` is on autocast's
float32 list): a 2-byte input is cast to fp32, the kernel saves that fp32 input and an fp32
``rstd`` per row, returns fp32, and its backward makes the fp32 input gradient.  A CPU build
has no fused kernel and runs the composite (``pow``, ``mean``, ``rsqrt``, two ``mul``), whose
backward makes five fp32 ``[tok, h]`` temporaries (36 GB at 8B and 445K tokens) where the
fused kernel's makes two.

:func:`cuda_rms_norm` replaces ``torch.nn.functional.rms_norm`` (which ``torch.nn.RMSNorm``
calls too) while the dry run counts, with an autograd function that allocates what the CUDA
kernel allocates: forward the fp32 cast of the input (autocast), the fp32 output and
``rstd [..., 1]``; backward the input's fp32 gradient and the weight's.  Values are not
computed (fake tensors have none).  ``--attention-backend fused`` (CUDA's cuDNN or
memory-efficient kernel, what the planner picks for fp32) has no CPU kernel: torch's CPU flash
kernel stands in, keeping the same O(s) per head.  The report lists each substitution.

    with cuda_rms_norm():
        y = F.rms_norm(x, (h,), w, eps)   # [tok, h] bf16 -> fp32, rstd [tok, 1] fp32 saved
"""
from __future__ import annotations

import contextlib

import torch
import torch.nn.functional as F

NOTE = ("RMSNorm: CUDA's fused kernel stands in for the CPU composite (autocast's fp32 policy; saves "
        "the fp32 input and rstd; backward makes the fp32 input and weight gradients), as a GPU run "
        "allocates (dry_run/cuda_kernels.py)")

FUSED_NOTE = ("--attention-backend fused (cuDNN / memory-efficient attention, CUDA only): torch's CPU flash "
              "kernel stands in; both keep O(s) per head (the output and its log-sum-exp)")


class _FusedRMSNorm(torch.autograd.Function):
    """Allocates as ``aten::_fused_rms_norm`` and its backward do on CUDA (module doc)."""

    @staticmethod
    def forward(ctx, x, weight, dims: int):
        # x: [..., h] fp32 (autocast's cast), weight: [h] fp32 or None
        rstd = x.new_empty(x.shape[:-dims] + (1,) * dims, dtype=torch.float32)  # [..., 1]
        ctx.save_for_backward(x, weight, rstd)
        ctx.has_weight = weight is not None
        return torch.empty_like(x)

    @staticmethod
    def backward(ctx, grad):
        x, weight, rstd = ctx.saved_tensors
        dx = torch.empty_like(x)
        dw = torch.empty_like(weight) if ctx.has_weight and ctx.needs_input_grad[1] else None
        return dx, dw, None


def _rms_norm(input, normalized_shape, weight=None, eps=None):
    x, w = input, weight
    if torch.is_autocast_enabled(x.device.type):  # autocast's fp32 policy for rms_norm on CUDA
        x = x.float()
        w = w.float() if w is not None else None
    return _FusedRMSNorm.apply(x, w, len(normalized_shape))


@contextlib.contextmanager
def cuda_rms_norm():
    """``F.rms_norm`` allocates as on CUDA while inside (module doc)."""
    real = F.rms_norm
    F.rms_norm = _rms_norm
    try:
        yield
    finally:
        F.rms_norm = real
