"""CP attention across gloo ranks against single-process attention on the full sequence.

One launch per world size runs every (mode, causal, heads, hierarchy) case: the
output and dQ, dK, dV are gathered back to full-sequence order and compared with
float64 SDPA on the full sequence (norm-wise relative error <= 1e-5 in fp32),
and the collectives of the call are checked against each mode's formula.
"""
import pytest
import torch
import torch.distributed as dist
import torch.nn.functional as F

from megatron_sp.parallel_state import initialize_model_parallel
from megatron_sp.sequence_parallel import (build_cp_attention, cp_sizes, shard_for_cp,
                                           unshard_from_cp)
from megatron_sp.sequence_parallel.comm import count_collectives
from dist_utils import run_distributed

SEQ, BATCH, DIM = 48, 2, 8


def reference(q, k, v, dout, causal):
    """float64 full-sequence attention; returns [out, dq, dk, dv] in [s, b, h, d]."""
    leaves = [x.double().requires_grad_() for x in (q, k, v)]
    qq, kk, vv = (x.permute(1, 2, 0, 3) for x in leaves)
    g = qq.shape[1] // kk.shape[1]
    out = F.scaled_dot_product_attention(qq, kk.repeat_interleave(g, 1), vv.repeat_interleave(g, 1),
                                         is_causal=causal).permute(2, 0, 1, 3)
    out.backward(dout.double())
    return [out.detach()] + [x.grad for x in leaves]


def rel_err(a, b):
    err = ((a.double() - b.double()).norm() / b.double().norm()).item()
    return float("inf") if err != err else err  # NaN never passes


def expected_collectives(mode, p, u, r, hq, hkv, elsize):
    """(kind -> count, total bytes) of one forward + backward, per rank."""
    if p == 1:
        return {}, 0
    s_local = SEQ // p
    if mode in ("rsa", "p2p"):
        u, r = 1, p
    kv_heads = max(hkv, u)  # after GQA replication for Ulysses
    kv_numel = s_local * BATCH * kv_heads * DIM  # == ring-portion K numel per rank
    counts, nbytes = {}, 0
    if u > 1:  # q, k, v, out forward; dout, dq, dk, dv backward
        counts["all_to_all"] = 8
        nbytes += 4 * s_local * BATCH * hq * DIM * elsize + 4 * kv_numel * elsize
    if r > 1:  # K and V: hops forward and backward; dK, dV (fp32): R hops
        counts["send"] = 4 * (r - 1) + 2 * r
        nbytes += 4 * (r - 1) * kv_numel * elsize + 2 * r * kv_numel * 4
    return counts, nbytes


def _run_cases(rank, world, cases, dtype=torch.float32):
    meshes, results = {}, []
    for mode, causal, hq, hkv, hier in cases:
        if hier not in meshes:
            meshes[hier] = initialize_model_parallel(1, world, hier)
        mesh = meshes[hier]
        g = torch.Generator().manual_seed(hash((mode, causal, hq, hkv)) % 1000)
        q, dout = (torch.randn(SEQ, BATCH, hq, DIM, generator=g) for _ in range(2))
        k, v = (torch.randn(SEQ, BATCH, hkv, DIM, generator=g) for _ in range(2))
        ref = reference(q, k, v, dout, causal)
        local = [shard_for_cp(x, 0, mode, causal, mesh).to(dtype).requires_grad_()
                 for x in (q, k, v)]
        attn = build_cp_attention(mode, mesh, causal)
        with count_collectives() as records:
            out = attn(*local)
            out.backward(shard_for_cp(dout, 0, mode, causal, mesh).to(dtype))
        got = [unshard_from_cp(x, 0, mode, causal, mesh) for x in [out] + [t.grad for t in local]]
        counts = {}
        for kind, _ in records:
            counts[kind] = counts.get(kind, 0) + 1
        results.append(dict(case=(mode, causal, hq, hkv, hier),
                            errors=[rel_err(a, b) for a, b in zip(got, ref)],
                            counts=counts, nbytes=sum(n for _, n in records),
                            sizes=cp_sizes(mode, mesh)))
    return results


def _heads(mode, u):
    """MHA and GQA head configs for Ulysses degree u, odd local head counts included."""
    if mode in ("rsa", "p2p") or u == 1:
        return [(3, 3), (6, 2)]
    return [(3 * u, 3 * u), (2 * u, 1)]  # GQA with 1 K/V head: replicated u times


HIERARCHIES = {1: [(1, 1)], 2: [(2, 1), (1, 2)], 3: [(3, 1), (1, 3)], 4: [(2, 2)],
               8: [(2, 4), (4, 2)]}


def _cases(world):
    cases = []
    for causal in (True, False):
        for mode in ("rsa", "p2p", "a2a"):
            u = world if mode == "a2a" else 1
            cases += [(mode, causal, hq, hkv, None) for hq, hkv in _heads(mode, u)]
        for hier in HIERARCHIES[world]:
            cases += [("a2a+p2p", causal, hq, hkv, hier) for hq, hkv in _heads("a2a+p2p", hier[0])]
    return cases


@pytest.mark.parametrize("world", [1, 2, 3, 4, 8])
def test_every_mode_matches_full_attention_fp32(world):
    results = run_distributed(_run_cases, world, _cases(world), timeout=240)
    for rank_results in results:
        for res in rank_results:
            assert max(res["errors"]) <= 1e-5, res
            p, u, r = res["sizes"]
            mode, _, hq, hkv, _ = res["case"]
            counts, nbytes = expected_collectives(mode, p, u, r, hq, hkv, 4)
            assert res["counts"] == counts, res
            assert res["nbytes"] == nbytes, res


BF16_CASES = [("rsa", True, 4, 2, None), ("p2p", True, 4, 2, None), ("p2p", False, 4, 4, None),
              ("a2a", True, 8, 2, None), ("a2a+p2p", True, 8, 2, "h")]


def _bf16_errors(rank, world):
    hier = (2, world // 2)
    cases = [c[:4] + (hier if c[4] else None,) for c in BF16_CASES]
    return [max(r["errors"]) for r in _run_cases(rank, world, cases, torch.bfloat16)]


def test_bf16_error_does_not_grow_with_world_size():
    err2 = run_distributed(_bf16_errors, 2)[0]
    err8 = run_distributed(_bf16_errors, 8)[0]
    for case, e2, e8 in zip(BF16_CASES, err2, err8):
        assert e2 < 2e-2 and e8 <= 2 * e2, (case, e2, e8)


def _dropout_checks(rank, world, mode):
    """Finite differences (same base seed) agree with backward; masks differ per rank."""
    mesh = initialize_model_parallel(1, world, (2, world // 2) if mode == "a2a+p2p" else None)
    attn = build_cp_attention(mode, mesh, causal=True, attention_dropout=0.3)
    g = torch.Generator().manual_seed(5)
    x = [torch.randn(SEQ, 1, 4, 4, generator=g, dtype=torch.float64) for _ in range(3)]
    w, direction = (torch.randn(SEQ, 1, 4, 4, generator=g, dtype=torch.float64) for _ in range(2))
    x = [shard_for_cp(t, 0, mode, True, mesh).requires_grad_() for t in x]
    w, direction = (shard_for_cp(t, 0, mode, True, mesh) for t in (w, direction))

    def loss(eps):
        torch.manual_seed(123)  # the per-call base seed
        out = attn(*(t + eps * direction for t in x))
        total = (out * w).sum()
        summed = total.detach().clone()
        dist.all_reduce(summed)
        return total, summed.item()
    total, _ = loss(0.0)
    total.backward()
    analytic = torch.stack([(t.grad * direction).sum() for t in x]).sum()
    dist.all_reduce(analytic)
    eps = 1e-6
    numeric = (loss(eps)[1] - loss(-eps)[1]) / (2 * eps)
    # constant tokens: without dropout every rank's output is the same, with it they differ
    same = [torch.ones(SEQ // world, 1, 4, 4, dtype=torch.float64)] * 3
    attn_nc = build_cp_attention(mode, mesh, causal=False, attention_dropout=0.5)
    out_train = attn_nc(*same)
    outs = [torch.empty_like(out_train) for _ in range(world)]
    dist.all_gather(outs, out_train)
    attn_nc.eval()
    return (analytic.item(), numeric, not torch.equal(outs[0], outs[1]),
            torch.allclose(attn_nc(*same), same[0]))


@pytest.mark.parametrize("mode", ["rsa", "p2p", "a2a", "a2a+p2p"])
def test_dropout_gradients_and_per_rank_masks(mode):
    for analytic, numeric, masks_differ, eval_is_exact in run_distributed(_dropout_checks, 2,
                                                                          mode):
        assert abs(analytic - numeric) <= 1e-6 * max(1.0, abs(numeric)), (analytic, numeric)
        assert masks_differ and eval_is_exact


def _bad_length(rank, world, mode):
    mesh = initialize_model_parallel(1, world, (1, 2) if mode == "a2a+p2p" else None)
    attn = build_cp_attention(mode, mesh, causal=True)
    q = torch.randn(3, 1, 4, 8)  # 3 local tokens: 6 in all, not a multiple of 2P = 4
    attn(q, q, q)


def _bad_heads(rank, world):
    mesh = initialize_model_parallel(1, world)
    attn = build_cp_attention("a2a", mesh, causal=False)
    q = torch.randn(4, 1, 3, 8)  # 3 heads over a Ulysses degree of 2
    attn(q, q, q)


@pytest.mark.parametrize("mode", ["p2p", "a2a+p2p"])
def test_length_that_does_not_divide_fails_fast(mode):
    with pytest.raises(RuntimeError, match=r"ValueError: --seq-length 6 .*--context-parallel-size 2"):
        run_distributed(_bad_length, 2, mode, timeout=30)


def test_heads_that_do_not_divide_fail_fast():
    with pytest.raises(RuntimeError, match=r"ValueError: --num-attention-heads \(3"):
        run_distributed(_bad_heads, 2, timeout=30)
