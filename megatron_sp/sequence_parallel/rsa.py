"""Ring Self-Attention (Li et al. 2021), the seed paper's sequence parallelism.

Rank r holds queries, keys and values of the contiguous shard r (length s = N/P).

Forward, two ring passes:

1. ring-pass K: at step i the rank holds K of shard j = (r - i) % P and fills
   columns ``[j*s, (j+1)*s)`` of its full score rows ``S_r = Q_r K^T / sqrt(d)``
   (``[s, N]`` per head: O(N^2/P) memory, by design);
2. softmax over complete rows (causal: global column > global row masked),
   dropout on the probabilities;
3. ring-pass V: ``O_r = sum_j A_r[:, shard j] V_j``.

Backward, two ring passes again, gradients of K and V travelling back to their
owners (no all-reduce of full-length gradients):

1. ring-pass V: ``dA_r[:, shard j] = dO_r V_j^T``; ``dV_j += A_r[:, shard j]^T dO_r``
   travels with V_j;
2. softmax backward over complete rows: ``dS = A * (dA - rowsum(dA * A))``;
3. ring-pass K: ``dQ_r += dS_r[:, shard j] K_j``; ``dK_j += dS_r[:, shard j]^T Q_r``
   travels with K_j.

Worked example, P = 2, N = 4: rank 0 holds rows 0-1 and builds scores [2 x 4]
from its own K (cols 0-1, step 0) and rank 1's K (cols 2-3, step 1).

Scores are kept in fp32.  The dropout mask of column block j on rank r is drawn
from ``block_seed(seed, r, j)``, so masks differ per rank and per block and
backward regenerates them.  GQA: K/V heads are repeated for the matmuls.
"""
from __future__ import annotations

import torch

from .comm import Ring, TravellingSum, circulate
from .kernels import dropout_mask, repeat_kv, sum_kv_groups
from .ring import block_seed


_MASK_ROWS = 256  # score rows masked at a time under documents / windows


def _dropped(probs, cols, p, seed, ring, src):
    blk = probs[..., cols]
    if p == 0:
        return blk
    return blk * dropout_mask(blk.shape, p, block_seed(seed, ring.index, src), blk.device, blk.dtype)


def _pass_on(travelling: TravellingSum, contribution) -> None:
    acc = travelling.take()
    if acc is None:  # first step: this rank's contribution starts the sum
        acc = [contribution]
    else:
        acc[0].add_(contribution)
    travelling.pass_on(acc)
    travelling.settle()


def rsa_forward(ring: Ring, q, k, v, causal, scale, dropout_p=0.0, seed=0, mask=None):
    """Return ``(out, probs)``; ``probs`` ([b, hq, s, N] fp32) is saved for backward.

    ``mask`` (masks.AttentionMask): documents and window, applied to the materialised rows
    directly (a boolean ``[b or 1, 1, s, N]`` beside the scores of the same size)."""
    # q: [b, hq, s, d]   k, v: [b, hkv, s, d]
    b, hq, s, _ = q.shape
    group, acc = hq // k.shape[1], torch.promote_types(q.dtype, torch.float32)
    probs = torch.empty(b, hq, s, s * ring.size, dtype=acc, device=q.device)
    for _, src, (kc,) in circulate(ring, (k,)):
        torch.matmul(q.to(acc), repeat_kv(kc, group).to(acc).transpose(-1, -2),
                     out=probs[..., src * s:(src + 1) * s])
    probs.mul_(scale)
    if mask is not None:  # by row tiles: the boolean rows alive at once are [tile x N], not [s x N]
        rows, cols = torch.arange(s) + ring.index * s, torch.arange(s * ring.size)
        for r0 in range(0, s, _MASK_ROWS):
            tile = slice(r0, min(s, r0 + _MASK_ROWS))
            probs[:, :, tile].masked_fill_(~mask.dense_rows(b, rows[tile], cols, q.device), float("-inf"))
    elif causal:
        rows = torch.arange(s, device=q.device) + ring.index * s
        cols = torch.arange(s * ring.size, device=q.device)
        probs.masked_fill_(cols[None, :] > rows[:, None], float("-inf"))
    probs = torch.softmax(probs, dim=-1)
    out = torch.zeros(q.shape, dtype=acc, device=q.device)
    for _, src, (vc,) in circulate(ring, (v,)):
        cols = slice(src * s, (src + 1) * s)
        out += torch.matmul(_dropped(probs, cols, dropout_p, seed, ring, src),
                            repeat_kv(vc, group).to(acc))
    return out.to(q.dtype), probs


def rsa_backward(ring: Ring, dout, q, k, v, probs, scale, dropout_p=0.0, seed=0):
    # dout: [b, hq, s, d]   probs: [b, hq, s, N]
    s, group, acc = q.shape[2], q.shape[1] // k.shape[1], probs.dtype
    do = dout.to(acc)
    d_probs = torch.empty_like(probs)
    dv = TravellingSum(ring)
    for _, src, (vc,) in circulate(ring, (v,)):
        cols = slice(src * s, (src + 1) * s)
        torch.matmul(do, repeat_kv(vc, group).to(acc).transpose(-1, -2), out=d_probs[..., cols])
        if dropout_p > 0:
            d_probs[..., cols] *= dropout_mask((*probs.shape[:-1], s), dropout_p,
                                               block_seed(seed, ring.index, src), q.device, acc)
        blk_dv = sum_kv_groups(torch.matmul(
            _dropped(probs, cols, dropout_p, seed, ring, src).transpose(-1, -2), do), group)
        _pass_on(dv, blk_dv)
    # softmax backward over complete rows, in place: d_probs becomes dS * scale
    d_probs.sub_((d_probs * probs).sum(-1, keepdim=True)).mul_(probs).mul_(scale)
    dq = torch.zeros(q.shape, dtype=acc, device=q.device)
    dk = TravellingSum(ring)
    for _, src, (kc,) in circulate(ring, (k,)):
        ds = d_probs[..., src * s:(src + 1) * s]
        dq += torch.matmul(ds, repeat_kv(kc, group).to(acc))
        blk_dk = sum_kv_groups(torch.matmul(ds.transpose(-1, -2), q.to(acc)), group)
        _pass_on(dk, blk_dk)
    return dq.to(q.dtype), dk.result()[0].to(k.dtype), dv.result()[0].to(v.dtype)


class RingSelfAttentionFunction(torch.autograd.Function):
    """Differentiable RSA on ``[b, h, s, d]`` shards (see module doc)."""

    @staticmethod
    def forward(ctx, q, k, v, ring, causal, scale, dropout_p, seed, mask=None):
        out, probs = rsa_forward(ring, q, k, v, causal, scale, dropout_p, seed, mask)
        ctx.save_for_backward(q, k, v, probs)
        ctx.args = (ring, scale, dropout_p, seed)
        return out

    @staticmethod
    def backward(ctx, dout):
        q, k, v, probs = ctx.saved_tensors
        ring, scale, dropout_p, seed = ctx.args
        dq, dk, dv = rsa_backward(ring, dout, q, k, v, probs, scale, dropout_p, seed)
        return dq, dk, dv, None, None, None, None, None, None
