"""Every CP mode at P = 2, 4, 8 on one GPU: P simulated ranks (threads) run the real ring, RSA,
Ulysses and USP code over the real CUDA block kernels; output and dq, dk, dv of the full sequence
against single-process full attention (fp64 reference).  Skipped without CUDA (``make gpu-check``)."""
import math

import pytest
import torch

from megatron_sp.sequence_parallel.comm import Ring
from megatron_sp.sequence_parallel.config import RING, RSA, ULYSSES, USP, uses_zigzag
from megatron_sp.sequence_parallel.kernels import ReferenceKernel, select_kernel
from megatron_sp.sequence_parallel.rsa import RingSelfAttentionFunction
from megatron_sp.sequence_parallel.shard import _indices
from megatron_sp.sequence_parallel.usp import usp_attention

from thread_world import ThreadGroup, ThreadWorld  # tests/gpu/thread_world.py (pytest puts tests/gpu on the path)

pytestmark = [pytest.mark.gpu,
              pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU (make gpu-check)")]

N, B, HQ, HKV, D = 256, 2, 8, 2, 64
TOL = {torch.float32: 2e-3, torch.bfloat16: 3e-2}


def _degrees(mode: str, p: int) -> tuple:
    """(Ulysses degree U, ring degree R) of ``mode`` over ``p`` ranks (USP: Ulysses 2 x ring p/2)."""
    return {RING: (1, p), RSA: (1, p), ULYSSES: (p, 1), USP: (2, p // 2)}[mode]


def _full_reference(q, k, v, dout, causal):
    # q, dout: [N, b, hq, d]  k, v: [N, b, hkv, d]; fp64 through the reference kernel on [b, h, s, d]
    leaves = [x.detach().double().permute(1, 2, 0, 3).contiguous() for x in (q, k, v)]
    kern, scale = ReferenceKernel(), 1.0 / math.sqrt(q.shape[-1])
    out, lse = kern.forward(*leaves, causal, scale)
    do = dout.double().permute(1, 2, 0, 3)
    grads = kern.backward(do, *leaves, out, lse, causal, scale)
    return [x.permute(2, 0, 1, 3) for x in (out, *grads)]


def simulate(mode: str, p: int, dtype, device, causal: bool = True) -> list:
    """``[out, dq, dk, dv]`` of the full sequence, assembled from ``p`` simulated ranks."""
    g = torch.Generator().manual_seed(p)
    q, dout = (torch.randn(N, B, HQ, D, generator=g).to(device, dtype) for _ in range(2))
    k, v = (torch.randn(N, B, HKV, D, generator=g).to(device, dtype) for _ in range(2))
    U, R = _degrees(mode, p)
    zigzag = uses_zigzag(mode, causal) and R > 1
    world, scale = ThreadWorld(p), 1.0 / math.sqrt(D)
    kernel = select_kernel(torch.device(device), dtype)

    def rank_fn(rank):
        u, r = rank % U, rank // U  # inside CP the Ulysses index varies fastest
        idx = _indices(N, zigzag, U, u, R, r).to(device)
        ql, kl, vl = (x.index_select(0, idx).detach().requires_grad_() for x in (q, k, v))
        ring = Ring([u + U * j for j in range(R)], r)
        if mode == RSA:
            out = RingSelfAttentionFunction.apply(*(x.permute(1, 2, 0, 3) for x in (ql, kl, vl)), ring, causal,
                                                  scale, 0.0, 0).permute(2, 0, 1, 3)
        else:
            group = ThreadGroup(world, [r * U + j for j in range(U)]) if U > 1 else None
            out = usp_attention(ql, kl, vl, group, U, u, ring, kernel, causal, zigzag, scale)
        out.backward(dout.index_select(0, idx))
        return idx, [out.detach(), ql.grad, kl.grad, vl.grad]

    with world.installed():
        per_rank = world.run(rank_fn)
    full = [torch.empty_like(x) for x in (q, q, k, v)]
    for idx, parts in per_rank:
        for dst, part in zip(full, parts):
            dst[idx] = part
    return full


def _rel(a, b) -> float:
    err = ((a.double() - b.double()).norm() / b.double().norm()).item()
    assert err == err, "NaN"
    return err


@pytest.mark.parametrize("p", [2, 4, 8])
@pytest.mark.parametrize("mode", [RSA, RING, ULYSSES, USP])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["fp32", "bf16"])
def test_cp_mode_matches_full_attention(mode, p, dtype):
    got = simulate(mode, p, dtype, "cuda")
    g = torch.Generator().manual_seed(p)
    q, dout = (torch.randn(N, B, HQ, D, generator=g).cuda() for _ in range(2))
    k, v = (torch.randn(N, B, HKV, D, generator=g).cuda() for _ in range(2))
    ref = _full_reference(q.to(dtype), k.to(dtype), v.to(dtype), dout.to(dtype), True)
    for name, a, b in zip(("out", "dq", "dk", "dv"), got, ref):
        assert _rel(a, b) < TOL[dtype], (mode, p, name, _rel(a, b))


@pytest.mark.parametrize("p", [2, 4, 8])
def test_non_causal_ring_matches_full_attention(p):
    got = simulate(RING, p, torch.float32, "cuda", causal=False)
    g = torch.Generator().manual_seed(p)
    q, dout = (torch.randn(N, B, HQ, D, generator=g).cuda() for _ in range(2))
    k, v = (torch.randn(N, B, HKV, D, generator=g).cuda() for _ in range(2))
    for a, b in zip(got, _full_reference(q, k, v, dout, False)):
        assert _rel(a, b) < TOL[torch.float32]
