"""``--attention-backend``: Megatron-LM's names for the attention implementation, mapped to ours.

    kernel = resolve_backend("unfused", device, dtype, dropout_p)   # a BlockKernel (kernels.py)
    check_backend("flash", "rsa", cp_size=4, device=..., dtype=..., attention_dropout=0.0)  # raises

=========  ===========================================  ==============================================
value      Megatron-LM                                   here
=========  ===========================================  ==============================================
auto       Transformer Engine picks                      by device, dtype and dropout
                                                         (:func:`kernels.select_kernel`, the default)
flash      flash attention                               ``cpu_flash`` on CPU; ``flash_attn`` or
                                                         ``cuda_flash`` on CUDA (fp16/bf16 only)
fused      cuDNN fused attention                         ``cuda_efficient`` (torch's fused memory-
                                                         efficient kernel) on CUDA; none on CPU
unfused    scores materialised, softmax probabilities    plain matmuls in fp32, probabilities kept for
           kept for backward                             backward (:class:`UnfusedKernel`)
local      Megatron-core's own (non-TE) attention:       the same unfused path (same math, same memory)
           the same unfused math
=========  ===========================================  ==============================================

**Unfused memory.**  Where attention is local (CP 1, every TP layout, and Ulysses after its
all-to-all: a ring of one), ``unfused`` runs the paper's RSA algorithm over a ring of one
(:mod:`rsa`): the fp32 probabilities ``[b, heads_local, s, s]`` are kept for backward in every
layer, as Megatron's unfused attention keeps its softmax output.  That is the baseline of Li et
al. 2021 (Megatron TP with standard attention).  Inside a ring of R > 1 blocks the ring's merge
needs the final LSE, so there ``unfused`` is the reference block kernel: each block's scores are
materialised, then recomputed in backward, not kept.

A value that cannot be honoured (no such kernel on this device or dtype, dropout on a kernel
that cannot apply it, flash with RSA, whose score rows are materialised by design) is refused
with one line naming the flags and the fix, at start-up on every rank.
"""
from __future__ import annotations

from typing import Optional

import torch

from .config import ATTENTION_BACKENDS, BackendError, _refuse, check_backend_for_mode
from .kernels import (BlockKernel, CpuFlashKernel, CudaEfficientKernel, CudaFlashKernel,
                      FlashAttnPackageKernel, ReferenceKernel, _works, select_kernel)

UNFUSED_BACKENDS = ("unfused", "local")


class UnfusedKernel(ReferenceKernel):
    """The reference kernel, marked to keep probabilities where attention is a ring of one."""
    name = "unfused"
    keeps_probs = True




def _flash(device, dtype) -> BlockKernel:
    if device.type == "cpu":
        if _works(CpuFlashKernel, device, dtype):
            return CpuFlashKernel()
        _refuse("flash", f"is not available on cpu for {dtype}: torch's CPU flash op failed its probe",
                "use --attention-backend unfused or auto")
    if device.type != "cuda":
        _refuse("flash", f"has no kernel on device {device.type}", "use --attention-backend unfused")
    if dtype not in (torch.float16, torch.bfloat16):
        _refuse("flash", f"needs fp16/bf16 on CUDA (got {dtype})",
                "add --bf16 or --fp16, or use --attention-backend fused or auto")
    try:
        import flash_attn  # noqa: F401
        if _works(FlashAttnPackageKernel, device, dtype):
            return FlashAttnPackageKernel()
    except ImportError:
        pass
    if _works(CudaFlashKernel, device, dtype):
        return CudaFlashKernel()
    _refuse("flash", f"found no working flash kernel on {device} for {dtype}", "use --attention-backend auto")


def _fused(device, dtype) -> BlockKernel:
    if device.type != "cuda":
        _refuse("fused", f"has no kernel on {device.type}: fused (cuDNN / memory-efficient) attention is CUDA only",
                "use --attention-backend flash (torch's CPU flash kernel), unfused or auto")
    if _works(CudaEfficientKernel, device, dtype):
        return CudaEfficientKernel()
    _refuse("fused", f"found no working fused kernel on {device} for {dtype}", "use --attention-backend auto")


def resolve_backend(backend: str, device, dtype, dropout_p: float = 0.0,
                    forced: Optional[str] = None) -> BlockKernel:
    """The block kernel that ``--attention-backend backend`` means here (see module doc).

    ``forced`` (a kernel name, or the ``MEGATRON_SP_ATTN_KERNEL`` variable) only applies to
    ``auto``, as the device-based choice it overrides.
    """
    if backend not in ATTENTION_BACKENDS:
        raise BackendError(f"--attention-backend {backend!r} is unknown; choose one of "
                           f"{', '.join(ATTENTION_BACKENDS)}")
    device = torch.device(device)
    if backend == "auto":
        return select_kernel(device, dtype, dropout_p, forced)
    if backend in UNFUSED_BACKENDS:
        return UnfusedKernel()
    if dropout_p > 0:
        _refuse(backend, f"cannot apply --attention-dropout {dropout_p} (only the unfused kernel applies "
                         "attention dropout here)", "pass --attention-dropout 0 or use --attention-backend unfused")
    return _flash(device, dtype) if backend == "flash" else _fused(device, dtype)


def check_backend(backend: str, mode: str, cp_size: int, device, dtype, attention_dropout: float = 0.0) -> None:
    """Raise ``ValueError`` (one line) unless ``backend`` can run ``mode`` over ``cp_size`` ranks on
    ``device`` in ``dtype`` (called at start-up, before any collective)."""
    check_backend_for_mode(backend, mode, cp_size)
    if not (mode == "rsa" and cp_size > 1):  # RSA runs no block kernel
        resolve_backend(backend, device, dtype, attention_dropout)
