"""Block attention kernels: one interface, several backends (docs/ARCHITECTURE.md, "sequence_parallel").

Every CP mode is built from one primitive, attention of a block of queries
against a block of keys that returns the log-sum-exp (LSE) of each query row::

    forward(q, k, v, causal, scale)                 -> out, lse
    backward(dout, q, k, v, out, lse, causal, scale) -> dq, dk, dv

    # q: [b, hq, sq, d]   k, v: [b, hkv, sk, d]   (hq % hkv == 0, GQA)
    # out: [b, hq, sq, d] (dtype of q)   lse: [b, hq, sq] fp32

``backward`` is exact per block when given the *final* ``out`` and ``lse`` of
the full rows (the flash-attention identity ``dS = P * (dP - rowsum(dout*out))``
with ``P = exp(S - lse)``), which is what lets a ring merge blocks forward and
differentiate them one at a time backward.  ``causal`` masks ``j > i`` with the
top-left alignment of torch's SDPA; CP modes only ask for it on square
diagonal blocks.

GQA is handled here once for all backends: K/V heads are repeated to the query
heads for the call and dK/dV are summed back over each group.

Backends (all private torch ops live in this module and nowhere else):

==============  =====================================================  ==========
name            op                                                      device
==============  =====================================================  ==========
``cpu_flash``   ``aten._scaled_dot_product_flash_attention_for_cpu``    cpu
``flash_attn``  the flash-attn package (when installed)                 cuda
``cuda_flash``  ``aten._scaled_dot_product_flash_attention``            cuda fp16/bf16
``cuda_efficient`` ``aten._scaled_dot_product_efficient_attention``     cuda
``reference``   plain matmuls in fp32 (also the only one with dropout)  any
==============  =====================================================  ==========

:func:`select_kernel` picks by device, dtype and what is installed; the
environment variable ``MEGATRON_SP_ATTN_KERNEL=<name>`` forces one (tests,
benchmarks).  If a torch release breaks a private op, :func:`select_kernel`
notices at the first probe and falls back to ``reference``.

Dropout (``dropout_p > 0``) is applied to the normalised probabilities, as
flash-attn does: ``out = (P * M / (1 - p)) @ v`` with ``P`` from the *undropped*
scores, so block results still merge with their LSE.  The mask ``M`` is drawn
from a ``torch.Generator`` seeded with ``seed``, so backward regenerates it
exactly; callers give every (rank, block) its own seed.
"""
from __future__ import annotations

import os
from typing import Optional

import torch

ENV_KERNEL = "MEGATRON_SP_ATTN_KERNEL"


def dropout_mask(shape, p: float, seed: int, device, dtype=torch.float32) -> torch.Tensor:
    """Keep-mask scaled by 1/(1-p), a pure function of ``seed``."""
    gen = torch.Generator(device=device)
    gen.manual_seed(int(seed) & 0x7FFF_FFFF_FFFF_FFFF)
    keep = torch.rand(shape, generator=gen, device=device, dtype=dtype) >= p
    return keep.to(dtype) / (1.0 - p)


def _causal_mask(sq: int, sk: int, device) -> torch.Tensor:
    # True where masked: j > i (top-left aligned)
    return torch.ones(sq, sk, dtype=torch.bool, device=device).triu_(1)


class BlockKernel:
    """Base: GQA expansion and reduction around a backend's ``_fwd``/``_bwd``."""
    name = "base"
    supports_dropout = False
    keeps_probs = False  # backends.UnfusedKernel: keep probabilities where attention is a ring of one

    def forward(self, q, k, v, causal: bool, scale: float, dropout_p: float = 0.0,
                seed: Optional[int] = None):
        group = q.shape[1] // k.shape[1]
        k, v = repeat_kv(k, group), repeat_kv(v, group)
        return self._fwd(q, k, v, causal, scale, dropout_p, seed)

    def backward(self, dout, q, k, v, out, lse, causal: bool, scale: float,
                 dropout_p: float = 0.0, seed: Optional[int] = None):
        group = q.shape[1] // k.shape[1]
        ke, ve = repeat_kv(k, group), repeat_kv(v, group)
        dq, dk, dv = self._bwd(dout, q, ke, ve, out, lse, causal, scale, dropout_p, seed)
        return dq, sum_kv_groups(dk, group), sum_kv_groups(dv, group)

    def _fwd(self, q, k, v, causal, scale, dropout_p, seed):
        raise NotImplementedError

    def _bwd(self, dout, q, k, v, out, lse, causal, scale, dropout_p, seed):
        raise NotImplementedError


def repeat_kv(x, group: int):
    # x: [b, hkv, s, d] -> [b, hkv * group, s, d]; kv head j serves query heads j*group ...
    if group == 1:
        return x
    b, h, s, d = x.shape
    return x[:, :, None].expand(b, h, group, s, d).reshape(b, h * group, s, d)


def sum_kv_groups(dx, group: int):
    # dx: [b, hkv * group, s, d] -> [b, hkv, s, d]
    if group == 1:
        return dx
    b, h, s, d = dx.shape
    return dx.view(b, h // group, group, s, d).sum(2)


class ReferenceKernel(BlockKernel):
    """Plain matmuls in fp32; materialises the [sq, sk] score block."""
    name = "reference"
    supports_dropout = True

    def _probs(self, q, k, causal, scale, lse=None):
        # s: [b, h, sq, sk] in fp32 (fp64 for fp64 inputs, for gradient checks)
        acc = torch.promote_types(q.dtype, torch.float32)
        s = torch.matmul(q.to(acc), k.to(acc).transpose(-1, -2)) * scale
        if causal:
            s.masked_fill_(_causal_mask(s.shape[-2], s.shape[-1], s.device), float("-inf"))
        if lse is None:
            lse = torch.logsumexp(s, dim=-1)
        return torch.exp(s - lse[..., None]), lse

    def _fwd(self, q, k, v, causal, scale, dropout_p, seed):
        p, lse = self._probs(q, k, causal, scale)
        if dropout_p > 0:
            p = p * dropout_mask(p.shape, dropout_p, seed, p.device, p.dtype)
        return torch.matmul(p, v.to(p.dtype)).to(q.dtype), lse

    def _bwd(self, dout, q, k, v, out, lse, causal, scale, dropout_p, seed):
        p, _ = self._probs(q, k, causal, scale, lse)
        do, acc = dout.to(p.dtype), p.dtype
        mask = dropout_mask(p.shape, dropout_p, seed, p.device, acc) if dropout_p > 0 else None
        pd = p * mask if mask is not None else p
        dv = torch.matmul(pd.transpose(-1, -2), do)
        dp = torch.matmul(do, v.to(acc).transpose(-1, -2))
        if mask is not None:
            dp = dp * mask
        delta = (do * out.to(acc)).sum(-1, keepdim=True)  # rowsum(dout * out_final)
        ds = p * (dp - delta) * scale
        dq = torch.matmul(ds, k.to(acc))
        dk = torch.matmul(ds.transpose(-1, -2), q.to(acc))
        return dq.to(q.dtype), dk.to(k.dtype), dv.to(v.dtype)


class CpuFlashKernel(BlockKernel):
    """torch's CPU flash-attention op (returns the LSE, has a backward)."""
    name = "cpu_flash"

    def _fwd(self, q, k, v, causal, scale, dropout_p, seed):
        out, lse = torch.ops.aten._scaled_dot_product_flash_attention_for_cpu(
            q, k, v, 0.0, causal, scale=scale)
        return out, lse

    def _bwd(self, dout, q, k, v, out, lse, causal, scale, dropout_p, seed):
        return torch.ops.aten._scaled_dot_product_flash_attention_for_cpu_backward(
            dout.to(q.dtype), q, k, v, out.to(q.dtype), lse.float().contiguous(), 0.0, causal,
            scale=scale)


class CudaFlashKernel(BlockKernel):
    """torch's CUDA flash-attention op (fp16/bf16, head dim <= 256). Untested here."""
    name = "cuda_flash"

    def _fwd(self, q, k, v, causal, scale, dropout_p, seed):
        res = torch.ops.aten._scaled_dot_product_flash_attention(
            q, k, v, 0.0, causal, False, scale=scale)
        return res[0], res[1]

    def _bwd(self, dout, q, k, v, out, lse, causal, scale, dropout_p, seed):
        empty = torch.empty(0, device=q.device, dtype=torch.int64)
        return torch.ops.aten._scaled_dot_product_flash_attention_backward(
            dout.to(q.dtype).contiguous(), q, k, v, out.to(q.dtype), lse.float().contiguous(),
            empty, empty, q.shape[2], k.shape[2], 0.0, causal, empty, empty, scale=scale)


class CudaEfficientKernel(BlockKernel):
    """torch's CUDA memory-efficient op (any float dtype). Untested here.

    Its LSE is padded to a multiple of 32 rows: sliced on the way out, padded back in.
    """
    name = "cuda_efficient"

    def _fwd(self, q, k, v, causal, scale, dropout_p, seed):
        res = torch.ops.aten._scaled_dot_product_efficient_attention(
            q, k, v, None, True, 0.0, causal, scale=scale)
        return res[0], res[1][..., :q.shape[2]]

    def _bwd(self, dout, q, k, v, out, lse, causal, scale, dropout_p, seed):
        sq = q.shape[2]
        padded = torch.nn.functional.pad(lse.float(), (0, (-sq) % 32))
        zero = torch.zeros((), device=q.device, dtype=torch.int64)
        grads = torch.ops.aten._scaled_dot_product_efficient_attention_backward(
            dout.to(q.dtype), q, k, v, None, out.to(q.dtype), padded, zero, zero, 0.0,
            [True, True, True, False], causal, scale=scale)
        return grads[0], grads[1], grads[2]


class FlashAttnPackageKernel(BlockKernel):
    """The flash-attn package (layout [b, s, h, d]); GQA native but kept uniform. Untested here."""
    name = "flash_attn"

    def _fwd(self, q, k, v, causal, scale, dropout_p, seed):
        from flash_attn import flash_attn_func
        qt, kt, vt = (x.transpose(1, 2) for x in (q, k, v))  # [b, s, h, d]
        out, lse, _ = flash_attn_func(qt, kt, vt, 0.0, scale, causal, return_attn_probs=True)
        return out.transpose(1, 2), lse

    def _bwd(self, dout, q, k, v, out, lse, causal, scale, dropout_p, seed):
        from flash_attn.flash_attn_interface import _flash_attn_backward
        qt, kt, vt, ot, dot = (x.transpose(1, 2).contiguous() for x in (q, k, v, out.to(q.dtype),
                                                                         dout.to(q.dtype)))
        dq, dk, dv = torch.empty_like(qt), torch.empty_like(kt), torch.empty_like(vt)
        _flash_attn_backward(dot, qt, kt, vt, ot, lse.float().contiguous(), dq, dk, dv,
                             0.0, scale, causal, -1, -1, 0.0, None, False, None)
        return dq.transpose(1, 2), dk.transpose(1, 2), dv.transpose(1, 2)


KERNELS = {k.name: k for k in (ReferenceKernel, CpuFlashKernel, CudaFlashKernel,
                               CudaEfficientKernel, FlashAttnPackageKernel)}
_PROBED: dict = {}


def _works(cls, device, dtype) -> bool:
    """Run a tiny forward+backward against the reference once per (backend, device, dtype)."""
    key = (cls.name, str(device), dtype)
    if key not in _PROBED:
        try:
            g = torch.Generator(device="cpu").manual_seed(0)
            q, k, v, do = (torch.randn(1, 2, 8, 16, generator=g).to(device, dtype) for _ in range(4))
            kern, ref = cls(), ReferenceKernel()
            out, lse = kern.forward(q, k, v, True, 0.25)
            ro, rl = ref.forward(q, k, v, True, 0.25)
            grads = kern.backward(do, q, k, v, ro, rl, True, 0.25)
            rgrads = ref.backward(do, q, k, v, ro, rl, True, 0.25)
            tol = 1e-3 if dtype == torch.float32 else 5e-2
            _PROBED[key] = all(torch.allclose(a.float(), b.float(), atol=tol, rtol=tol)
                               for a, b in zip((out, lse, *grads), (ro, rl, *rgrads)))
        except Exception:  # noqa: BLE001 - a missing or changed private op means "not usable"
            _PROBED[key] = False
    return _PROBED[key]


def select_kernel(device, dtype, dropout_p: float = 0.0, name: Optional[str] = None) -> BlockKernel:
    """The backend for tensors on ``device`` of ``dtype``; ``name``/env var forces one."""
    name = name or os.environ.get(ENV_KERNEL)
    if name:
        if name not in KERNELS:
            raise ValueError(f"{ENV_KERNEL}={name!r}: unknown attention kernel; "
                             f"choose one of {sorted(KERNELS)}")
        return KERNELS[name]()
    if dropout_p > 0:
        return ReferenceKernel()
    device = torch.device(device)
    if device.type == "cuda":
        candidates = [CudaEfficientKernel]
        if dtype in (torch.float16, torch.bfloat16):
            candidates = [FlashAttnPackageKernel, CudaFlashKernel] + candidates
    elif device.type == "cpu":
        candidates = [CpuFlashKernel]
    else:
        candidates = []
    for cls in candidates:
        if cls is FlashAttnPackageKernel:
            try:
                import flash_attn  # noqa: F401
            except ImportError:
                continue
        if _works(cls, device, dtype):
            return cls()
    return ReferenceKernel()
