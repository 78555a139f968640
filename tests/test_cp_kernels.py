"""Block kernels, the online-softmax merge and dropout masks (single process)."""
import pytest
import torch
import torch.nn.functional as F

from megatron_sp.sequence_parallel import kernels
from megatron_sp.sequence_parallel.kernels import (ENV_KERNEL, CpuFlashKernel, ReferenceKernel,
                                                   dropout_mask, select_kernel)
from megatron_sp.sequence_parallel.ring import block_seed, merge_


def _rel(a, b):
    err = ((a.double() - b.double()).norm() / b.double().norm()).item()
    assert err == err, "NaN"
    return err


def _sdpa64(q, k, v, causal, scale):
    # [b, h, s, d] float64 reference with GQA by repetition
    q, k, v = (x.detach().double().requires_grad_() for x in (q, k, v))
    g = q.shape[1] // k.shape[1]
    out = F.scaled_dot_product_attention(q, k.repeat_interleave(g, 1), v.repeat_interleave(g, 1),
                                         is_causal=causal, scale=scale)
    return out, (q, k, v)


@pytest.mark.parametrize("kernel", [ReferenceKernel(), CpuFlashKernel()], ids=lambda k: k.name)
@pytest.mark.parametrize("causal", [False, True])
@pytest.mark.parametrize("hq,hkv", [(3, 3), (6, 2), (5, 1)])
def test_kernel_forward_backward_matches_sdpa(kernel, causal, hq, hkv):
    g = torch.Generator().manual_seed(0)
    q = torch.randn(2, hq, 24, 8, generator=g)
    k, v = (torch.randn(2, hkv, 24, 8, generator=g) for _ in range(2))
    dout = torch.randn(2, hq, 24, 8, generator=g)
    ref, leaves = _sdpa64(q, k, v, causal, 0.3)
    ref.backward(dout.double())
    out, lse = kernel.forward(q, k, v, causal, 0.3)
    assert lse.shape == (2, hq, 24) and lse.dtype == torch.float32
    grads = kernel.backward(dout, q, k, v, out, lse, causal, 0.3)
    assert _rel(out, ref) < 1e-5
    for got, leaf in zip(grads, leaves):
        assert got.shape == leaf.shape
        assert _rel(got, leaf.grad) < 1e-5


def test_merge_of_two_key_halves_equals_full_attention():
    g = torch.Generator().manual_seed(1)
    q, k, v = (torch.randn(1, 2, 16, 8, generator=g) for _ in range(3))
    kern = ReferenceKernel()
    full, full_lse = kern.forward(q, k, v, False, 0.5)
    out, lse = kern.forward(q, k[:, :, :7], v[:, :, :7], False, 0.5)
    out_b, lse_b = kern.forward(q, k[:, :, 7:], v[:, :, 7:], False, 0.5)
    merge_(out, lse, out_b, lse_b)
    assert _rel(out, full) < 1e-6 and _rel(lse, full_lse) < 1e-6


def test_backward_per_block_with_final_stats_sums_to_full_gradient():
    g = torch.Generator().manual_seed(2)
    q, k, v, dout = (torch.randn(1, 2, 16, 8, generator=g) for _ in range(4))
    kern = CpuFlashKernel()
    out, lse = kern.forward(q, k, v, False, 0.5)
    dq, dk, dv = kern.backward(dout, q, k, v, out, lse, False, 0.5)
    parts = [kern.backward(dout, q, k[:, :, c], v[:, :, c], out, lse, False, 0.5)
             for c in (slice(0, 5), slice(5, 16))]
    assert _rel(parts[0][0] + parts[1][0], dq) < 1e-5
    assert _rel(torch.cat([parts[0][1], parts[1][1]], 2), dk) < 1e-5
    assert _rel(torch.cat([parts[0][2], parts[1][2]], 2), dv) < 1e-5


def test_select_kernel_by_device_and_override(monkeypatch):
    monkeypatch.delenv(ENV_KERNEL, raising=False)
    assert select_kernel("cpu", torch.float32).name == "cpu_flash"
    assert select_kernel("cpu", torch.float32, dropout_p=0.1).name == "reference"
    monkeypatch.setenv(ENV_KERNEL, "reference")
    assert select_kernel("cpu", torch.float32).name == "reference"
    monkeypatch.setenv(ENV_KERNEL, "nope")
    with pytest.raises(ValueError, match=ENV_KERNEL):
        select_kernel("cpu", torch.float32)


def test_broken_private_op_falls_back_to_reference(monkeypatch):
    monkeypatch.delenv(ENV_KERNEL, raising=False)
    monkeypatch.setattr(kernels, "_PROBED", {})

    def broken(self, *args):
        raise RuntimeError("op changed")
    monkeypatch.setattr(CpuFlashKernel, "_fwd", broken)
    assert select_kernel("cpu", torch.float32).name == "reference"


def test_dropout_mask_is_a_function_of_the_seed():
    a = dropout_mask((4, 64), 0.25, 7, "cpu")
    assert torch.equal(a, dropout_mask((4, 64), 0.25, 7, "cpu"))
    assert not torch.equal(a, dropout_mask((4, 64), 0.25, 8, "cpu"))
    assert torch.equal(a.unique(), torch.tensor([0.0, 1 / 0.75]))
    seeds = {block_seed(5, r, j) for r in range(8) for j in range(8)}
    assert len(seeds) == 64


def test_reference_dropout_backward_matches_autograd_of_the_same_mask():
    g = torch.Generator().manual_seed(3)
    q, k, v, dout = (torch.randn(1, 2, 12, 4, generator=g, dtype=torch.float64) for _ in range(4))
    kern = ReferenceKernel()
    out, lse = kern.forward(q, k, v, True, 0.5, 0.3, seed=11)
    grads = kern.backward(dout, q, k, v, out, lse, True, 0.5, 0.3, seed=11)
    leaves = [x.clone().requires_grad_() for x in (q, k, v)]
    s = (leaves[0] @ leaves[1].transpose(-1, -2)) * 0.5
    s = s.masked_fill(torch.ones(12, 12, dtype=torch.bool).triu(1), float("-inf"))
    probs = torch.softmax(s, -1) * dropout_mask((1, 2, 12, 12), 0.3, 11, "cpu", torch.float64)
    ref = probs @ leaves[2]
    ref.backward(dout)
    assert _rel(out, ref) < 1e-12
    for got, leaf in zip(grads, leaves):
        assert _rel(got, leaf.grad) < 1e-12
