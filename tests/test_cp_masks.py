"""Packed documents and sliding windows in every CP mode against a dense-mask reference.

The reference is float64 attention on the full sequence with an explicit dense [s, s] mask built
here, position by position; each mode's output and dQ, dK, dV, gathered back to sequence order,
must match it (norm-wise relative error <= 1e-5 in fp32).  Cases: a document spanning rank
boundaries, many short documents, a 1-token document, no EOD, samples with different documents
in one batch, windows smaller than, equal to and larger than a zigzag chunk.  The plans must
skip ring steps (no kernel call) where the mask empties them.
"""
import random

import pytest
import torch
import torch.nn.functional as F

from megatron_sp.parallel_state import initialize_model_parallel
from megatron_sp.sequence_parallel import AttentionMask, build_cp_attention, shard_for_cp, unshard_from_cp
from megatron_sp.sequence_parallel.masks import count_blocks, decompose, skip_fraction
from dist_utils import rel_err, run_distributed

SEQ, DIM = 48, 8
DOCS = {  # name -> document starts of each of the 2 samples
    "spanning": [[0, 5, 29, 48], [0, 5, 29, 48]],
    "short": [list(range(0, 48, 3)) + [48], [0, 1, 2, 7, 9, 30, 31, 48]],
    "one_token": [[0, 10, 11, 30, 48], [0, 47, 48]],
    "no_eod": [[0, 48], [0, 48]],
}


def dense_mask(bounds, window, s):
    """[b, 1, s, s] bool, True = visible, by the definition (same document, i - W <= j <= i)."""
    out = torch.zeros(len(bounds), 1, s, s, dtype=torch.bool)
    for b, starts in enumerate(bounds):
        doc = [max(d for d, x in enumerate(starts) if x <= i) for i in range(s)]
        for i in range(s):
            for j in range(i + 1):
                out[b, 0, i, j] = doc[i] == doc[j] and (window is None or i - j <= window)
    return out


def reference(q, k, v, dout, mask):
    leaves = [x.double().requires_grad_() for x in (q, k, v)]
    qq, kk, vv = (x.permute(1, 2, 0, 3) for x in leaves)
    g = qq.shape[1] // kk.shape[1]
    out = F.scaled_dot_product_attention(qq, kk.repeat_interleave(g, 1), vv.repeat_interleave(g, 1),
                                         attn_mask=mask).permute(2, 0, 1, 3)
    out.backward(dout.double())
    return [out.detach()] + [x.grad for x in leaves]


def test_decompose_covers_exactly_the_visible_pairs():
    rng = random.Random(0)
    for _ in range(400):
        s = rng.randint(1, 24)
        w = rng.choice([0, 1, 2, 5, 100, rng.randint(0, 24)])
        qa, ka = rng.randint(0, s - 1), rng.randint(0, s - 1)
        qb, kb = rng.randint(qa + 1, s), rng.randint(ka + 1, s)
        blocks = []
        decompose(qa, qb, ka, kb, w, blocks)
        seen = torch.zeros(s, s, dtype=torch.int)
        for a, b, c, d, kind in blocks:
            assert kind == "full" or b - a == d - c, blocks  # square: every kernel aligns it alike
            for i in range(a, b):
                row = [j for j in range(c, d) if kind == "full" or
                       (kind == "causal" and j - c <= i - a) or (kind == "flipped" and d - 1 - j <= b - 1 - i)]
                assert row, (qa, qb, ka, kb, w, blocks)  # no empty row in a live block
                seen[i, row] += 1
        want = torch.zeros(s, s, dtype=torch.int)
        for i in range(qa, qb):
            for j in range(ka, kb):
                want[i, j] = int(i - w <= j <= i)
        assert torch.equal(seen, want), (qa, qb, ka, kb, w, blocks)


def _windows(world):
    chunk = SEQ // (2 * world)
    return [None] + sorted({1, chunk, 2 * chunk + 1})


def _cases(world):
    hier = {1: (1, 1), 2: (2, 1), 3: (1, 3), 4: (2, 2), 8: (2, 4)}[world]
    cases = []
    for docs in DOCS:
        for window in _windows(world):
            if docs == "no_eod" and window is None:
                continue
            cases += [("rsa", docs, window, None), ("p2p", docs, window, None), ("a2a", docs, window, None),
                      ("a2a+p2p", docs, window, hier)]
    return cases


def _run(rank, world, cases, kernel=None):
    meshes, results = {}, []
    for mode, docs, window, hier in cases:
        if hier not in meshes:
            meshes[hier] = initialize_model_parallel(1, world, hier)
        mesh = meshes[hier]
        u = world if mode == "a2a" else (hier[0] if mode == "a2a+p2p" else 1)
        hq, hkv = 2 * u, max(1, u // 2) if u > 1 else 2
        g = torch.Generator().manual_seed(7)
        q, dout = (torch.randn(SEQ, 2, hq, DIM, generator=g) for _ in range(2))
        k, v = (torch.randn(SEQ, 2, hkv, DIM, generator=g) for _ in range(2))
        ref = reference(q, k, v, dout, dense_mask(DOCS[docs], window, SEQ))
        local = [shard_for_cp(x, 0, mode, True, mesh).requires_grad_() for x in (q, k, v)]
        attn = build_cp_attention(mode, mesh, True, window=window, kernel=kernel)
        cu_seqlens = torch.tensor([b + [SEQ] * (20 - len(b)) for b in DOCS[docs]])  # padded as batches are
        mask = AttentionMask.from_cu_seqlens(cu_seqlens, None, SEQ)
        with count_blocks() as steps:
            out = attn(*local, mask)
            out.backward(shard_for_cp(dout, 0, mode, True, mesh))
        got = [unshard_from_cp(x, 0, mode, True, mesh) for x in [out] + [t.grad for t in local]]
        predicted = skip_fraction(AttentionMask(mask and mask.bounds, window), 2, SEQ, world > 1, world)
        results.append(dict(case=(mode, docs, window, hier), errors=[rel_err(a, b) for a, b in zip(got, ref)],
                            skipped=sum(not live for live, _ in steps), steps=len(steps), predicted=predicted))
    return results


@pytest.mark.parametrize("world", [1, 2, 3, 4, 8])
def test_masked_attention_matches_dense_reference_in_every_mode(world):
    results = run_distributed(_run, world, _cases(world), timeout=300)
    for rank_results in results:
        for res in rank_results:
            assert max(res["errors"]) <= 1e-5, res
    # p2p: the steps skipped on all ranks (forward and backward) are the plan's predicted share
    for i, case in enumerate(_cases(world)):
        if case[0] == "p2p" and not (case[1] == "no_eod" and case[2] >= SEQ - 1):  # else: nothing masked
            skipped, steps = (sum(rr[i][key] for rr in results) for key in ("skipped", "steps"))
            assert steps == 2 * world * world and skipped == results[0][i]["predicted"] * steps, results[0][i]
    if world >= 4:  # a window of one token empties ring steps
        assert any(rr[i]["skipped"] for rr in results for i, c in enumerate(_cases(world)) if c[2] == 1)


def test_reference_kernel_and_flash_kernel_agree_under_masks():
    cases = [("p2p", "short", 2, None), ("p2p", "spanning", None, None), ("a2a+p2p", "one_token", 3, (1, 2))]
    for rank_results in run_distributed(_run, 2, cases, kernel="reference", timeout=120):
        for res in rank_results:
            assert max(res["errors"]) <= 1e-5, res


def test_predicted_skip_fraction_of_a_small_window():
    # S = 64, P = 4, zigzag chunks 0..7 of 8: window 0 leaves each rank its own step only; window 1
    # adds the ranks holding the chunk before each of its chunks: r0 (0, 7) needs r1 (6), r1 (1, 6)
    # r0 and r2, r2 (2, 5) r1 and r3, r3 (3, 4) r2: 10 live steps of 16
    assert skip_fraction(AttentionMask(None, 0), 1, 64, True, 4) == pytest.approx(12 / 16)
    assert skip_fraction(AttentionMask(None, 1), 1, 64, True, 4) == pytest.approx(6 / 16)
    assert skip_fraction(AttentionMask(None, 63), 1, 64, True, 4) == 0.0
