"""Ring attention with online softmax, zigzag causal balance and overlapped P2P.

Each rank keeps its queries; K/V blocks circulate around the ring
(:func:`comm.circulate`, the next block in flight while the current one is
computed).  Every step calls the block kernel, which returns ``(out_b, lse_b)``,
and merges into an fp32 accumulator with the stable form::

    out <- out - sigmoid(lse_b - lse) * (out - out_b)
    lse <- lse - logsigmoid(lse - lse_b)

Backward recomputes the blocks in the same order with the *final* out and lse:
dQ accumulates locally, dK/dV travel with their K/V block and are back at the
owner after P hops (:class:`comm.TravellingSum`).

Zigzag (causal): the sequence is cut in 2P chunks and rank r holds chunks r and
2P-1-r, so every rank has the same amount of causal work.  P = 2, chunks 0..3::

    rank 0 holds [0, 3]     rank 1 holds [1, 2]

    step 0  (own K/V)          causal block of the local [2c x 2c] (the local
                               order is increasing in global position)
    step i, src < r            all local queries x first half of K/V (chunk src)
    step i, src > r            second half of queries (chunk 2P-1-r) x all K/V

e.g. rank 1 at step 1 holds K/V of rank 0 = chunks [0, 3]: src 0 < 1, so queries
[1, 2] see chunk 0 fully and chunk 3 not at all.  Each non-diagonal step is half
a block, identical on every rank.  Non-causal: every step is a full block.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from .comm import Ring, TravellingSum, circulate

_ALL = slice(None)


def block_seed(base: int, *ids: int) -> int:
    """A dropout seed distinct for every (rank, block, ...) id tuple."""
    seed = int(base)
    for i in ids:
        seed = (seed * 1_000_003 + int(i) + 1) % (1 << 62)
    return seed


def block_plan(step: int, src: int, rank: int, s: int, causal: bool, zigzag: bool):
    """``(query_rows, key_rows, causal)`` of step ``step``, or None when nothing is visible."""
    if not causal:
        return _ALL, _ALL, False
    if step == 0:
        return _ALL, _ALL, True
    if not zigzag:  # contiguous split: earlier blocks fully visible, later ones not at all
        return (_ALL, _ALL, False) if src < rank else None
    half = s // 2
    if src < rank:
        return _ALL, slice(0, half), False
    return slice(half, s), _ALL, False


def merge_(out, lse, block_out, block_lse) -> None:
    """Merge a block's partial result into ``out``/``lse`` (fp32 views, in place).

    ``out - w * (out - out_b)`` is ``lerp(out, out_b, w)``: one fused pass, no temporaries.
    """
    # out: [b, h, sq, d] fp32   lse: [b, h, sq] fp32
    weight = torch.sigmoid(block_lse - lse).unsqueeze(-1)
    out.lerp_(block_out.to(out.dtype), weight)
    lse.sub_(F.logsigmoid(lse - block_lse))


def ring_forward(ring: Ring, kernel, q, k, v, causal, zigzag, scale, dropout_p=0.0, seed=0,
                 salt=0):
    """Return ``(out, lse)`` for the local queries; ``out`` fp32 (dtype of q when P == 1)."""
    # q: [b, hq, s, d]   k, v: [b, hkv, s, d]
    acc = torch.promote_types(q.dtype, torch.float32)
    s, out, lse = q.shape[2], None, None
    for step, src, (kc, vc) in circulate(ring, (k, v)):
        plan = block_plan(step, src, ring.index, s, causal, zigzag)
        if plan is None:
            continue
        rows, cols, blk_causal = plan
        blk_out, blk_lse = kernel.forward(q[:, :, rows], kc[:, :, cols], vc[:, :, cols], blk_causal,
                                          scale, dropout_p, block_seed(seed, salt, ring.index, src))
        if out is None:  # step 0 covers every row
            out, lse = (blk_out, blk_lse) if ring.size == 1 else (blk_out.to(acc), blk_lse.to(acc))
        else:
            merge_(out[:, :, rows], lse[:, :, rows], blk_out, blk_lse)
    return out, lse


def ring_backward(ring: Ring, kernel, dout, q, k, v, out, lse, causal, zigzag, scale,
                  dropout_p=0.0, seed=0, salt=0):
    """Return ``(dq, dk, dv)`` of the local shard, accumulated in fp32."""
    # dout, out: [b, hq, s, d]   lse: [b, hq, s]
    if ring.size == 1:  # local attention: the kernel's gradients as they are
        return kernel.backward(dout, q, k, v, out, lse, causal, scale, dropout_p,
                               block_seed(seed, salt, 0, 0))
    acc = torch.promote_types(q.dtype, torch.float32)
    s = q.shape[2]
    dq, dkv = None, TravellingSum(ring)
    for step, src, (kc, vc) in circulate(ring, (k, v)):
        plan = block_plan(step, src, ring.index, s, causal, zigzag)
        if plan is None:  # (contiguous causal only; step 0 always has a block)
            dkv.pass_on(dkv.take())
            dkv.settle()
            continue
        rows, cols, blk_causal = plan
        bdq, bdk, bdv = kernel.backward(dout[:, :, rows], q[:, :, rows], kc[:, :, cols],
                                        vc[:, :, cols], out[:, :, rows], lse[:, :, rows],
                                        blk_causal, scale, dropout_p,
                                        block_seed(seed, salt, ring.index, src))
        travelling = dkv.take()
        if step == 0:  # the whole block: the kernel's gradients start the sums
            dq, travelling = bdq.to(acc), [bdk.to(acc), bdv.to(acc)]
        else:
            dq[:, :, rows] += bdq
            travelling[0][:, :, cols] += bdk
            travelling[1][:, :, cols] += bdv
        del bdq, bdk, bdv
        dkv.pass_on(travelling)
        del travelling
        dkv.settle()  # finish the hop before the next K/V prefetch: fewer buffers alive
    dk, dv = dkv.result()
    return dq.to(q.dtype), dk.to(k.dtype), dv.to(v.dtype)


class RingAttentionFunction(torch.autograd.Function):
    """Differentiable ring attention on ``[b, h, s, d]`` shards (see module doc)."""

    @staticmethod
    def forward(ctx, q, k, v, ring, kernel, causal, zigzag, scale, dropout_p, seed, salt):
        out, lse = ring_forward(ring, kernel, q, k, v, causal, zigzag, scale, dropout_p, seed, salt)
        out = out.to(q.dtype)
        ctx.save_for_backward(q, k, v, out, lse)
        ctx.args = (ring, kernel, causal, zigzag, scale, dropout_p, seed, salt)
        return out

    @staticmethod
    def backward(ctx, dout):
        q, k, v, out, lse = ctx.saved_tensors
        ring, kernel, causal, zigzag, scale, dropout_p, seed, salt = ctx.args
        dq, dk, dv = ring_backward(ring, kernel, dout, q, k, v, out, lse, causal, zigzag, scale,
                                   dropout_p, seed, salt)
        return dq, dk, dv, None, None, None, None, None, None, None, None
