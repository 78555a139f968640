"""Each CUDA block kernel against the fp64 reference, forward (out, LSE) and backward (dq, dk, dv),
in fp32, bf16 and fp16, with and without GQA, head dims 64 and 128, causal and not.  Also the
identity the rings rely on: a block's backward given the *final* out and LSE of its rows.
Skipped without CUDA (``make gpu-check``)."""
import importlib.util
import math

import pytest
import torch

from megatron_sp.sequence_parallel.kernels import KERNELS, ReferenceKernel, select_kernel

pytestmark = [pytest.mark.gpu,
              pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU (make gpu-check)")]

DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}
TOL = {torch.float32: 2e-3, torch.bfloat16: 3e-2, torch.float16: 5e-3}
CUDA_KERNELS = ["cuda_flash", "cuda_efficient", "flash_attn", "reference"]


def _kernel(name, dtype):
    if name == "flash_attn" and importlib.util.find_spec("flash_attn") is None:
        pytest.skip("the flash-attn package is not installed")
    if name in ("cuda_flash", "flash_attn") and dtype == torch.float32:
        pytest.skip(f"{name} takes fp16/bf16 only (select_kernel picks cuda_efficient for fp32)")
    return KERNELS[name]()


def _inputs(dtype, hq, hkv, d, s=256, b=2, seed=0):
    g = torch.Generator().manual_seed(seed)
    q, dout = (torch.randn(b, hq, s, d, generator=g).cuda().to(dtype) for _ in range(2))
    k, v = (torch.randn(b, hkv, s, d, generator=g).cuda().to(dtype) for _ in range(2))
    return q, k, v, dout


def _rel(a, b) -> float:
    err = ((a.double() - b.double()).norm() / b.double().norm()).item()
    assert err == err, "NaN"
    return err


@pytest.mark.parametrize("name", CUDA_KERNELS)
@pytest.mark.parametrize("dtype", list(DTYPES.values()), ids=list(DTYPES))
@pytest.mark.parametrize("hq,hkv", [(8, 8), (8, 2)], ids=["mha", "gqa"])
@pytest.mark.parametrize("d", [64, 128])
@pytest.mark.parametrize("causal", [True, False], ids=["causal", "full"])
def test_block_kernel_matches_the_reference(name, dtype, hq, hkv, d, causal):
    kern = _kernel(name, dtype)
    q, k, v, dout = _inputs(dtype, hq, hkv, d)
    scale = 1.0 / math.sqrt(d)
    out, lse = kern.forward(q, k, v, causal, scale)
    assert out.dtype == dtype and lse.dtype == torch.float32 and lse.shape == (2, hq, 256)
    grads = kern.backward(dout, q, k, v, out, lse, causal, scale)
    ref = ReferenceKernel()
    q64, k64, v64, do64 = (x.double() for x in (q, k, v, dout))
    rout, rlse = ref.forward(q64, k64, v64, causal, scale)
    rgrads = ref.backward(do64, q64, k64, v64, rout, rlse, causal, scale)
    assert _rel(out, rout) < TOL[dtype] and (lse.double() - rlse).abs().max().item() < 10 * TOL[dtype]
    for got, want, what in zip(grads, rgrads, ("dq", "dk", "dv")):
        assert got.shape == want.shape and got.dtype == dtype, what
        assert _rel(got, want) < TOL[dtype], (what, _rel(got, want))


@pytest.mark.parametrize("dtype", list(DTYPES.values()), ids=list(DTYPES))
def test_block_backward_with_final_statistics_sums_to_the_full_gradient(dtype):
    """The ring identity: two key blocks' backward, each given the final out and LSE of the full rows,
    add up to the full backward (with the kernel select_kernel picks on this GPU for ``dtype``)."""
    kern = select_kernel(torch.device("cuda"), dtype)
    assert kern.name != "reference", f"no CUDA kernel works for {dtype} on this GPU"
    q, k, v, dout = _inputs(dtype, 8, 2, 64, seed=1)
    scale = 0.125
    out, lse = kern.forward(q, k, v, False, scale)
    full = kern.backward(dout, q, k, v, out, lse, False, scale)
    halves = [kern.backward(dout, q, k[:, :, part], v[:, :, part], out, lse, False, scale)
              for part in (slice(0, 128), slice(128, 256))]
    dq = halves[0][0].double() + halves[1][0].double()
    dk = torch.cat([halves[0][1], halves[1][1]], dim=2)
    dv = torch.cat([halves[0][2], halves[1][2]], dim=2)
    for got, want in zip((dq, dk, dv), full):
        assert _rel(got, want) < TOL[dtype]


def test_auto_picks_a_flash_kernel_without_dropout_and_the_reference_with_it():
    assert select_kernel(torch.device("cuda"), torch.bfloat16).name in ("flash_attn", "cuda_flash")
    assert select_kernel(torch.device("cuda"), torch.float32).name == "cuda_efficient"
    assert select_kernel(torch.device("cuda"), torch.bfloat16, dropout_p=0.1).name == "reference"
