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

Masks (packed documents, sliding windows; masks.py): a step's block becomes the live sub-blocks
of the mask's plan (:func:`step_blocks`), each one kernel call (full, causal, or the window's
edge reversed into causal); a step with none calls no kernel while its K/V and dK/dV still
travel on.  Rows then start empty (``lse = -inf``) and every sub-block merges into them.
"""
from __future__ import annotations

import torch

from .comm import Ring, TravellingSum, circulate
from .kernels import block_backward, block_forward
from .masks import CAUSAL, FULL, record_step

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


def step_blocks(step: int, src: int, ring: Ring, s: int, batch: int, causal: bool, zigzag: bool,
                mask=None) -> list:
    """The kernel calls of ring step ``step`` (K/V of ring rank ``src``):
    ``[(batch rows, query rows, key rows, kind)]`` with kind full / causal / flipped (masks.py);
    empty when nothing is visible (the step calls no kernel, its K/V still travel on)."""
    if mask is None:
        plan = block_plan(step, src, ring.index, s, causal, zigzag)
        if plan is None:
            return []
        rows, cols, blk_causal = plan
        return [(_ALL, rows, cols, CAUSAL if blk_causal else FULL)]
    groups = mask.blocks(batch, s * ring.size, zigzag, ring.size, ring.index, src)
    blocks = [(b, rows, cols, kind) for b, live in groups for rows, cols, kind in live]
    record_step([(rows, cols, kind) for _, rows, cols, kind in blocks])
    return blocks


def merge_(out, lse, block_out, block_lse) -> None:
    """Merge a block's partial result into ``out``/``lse`` (fp32 views, in place).

    ``out - w * (out - out_b)`` is ``lerp(out, out_b, w)``: one fused pass, no temporaries.
    Rows not yet reached hold ``lse = -inf`` (masked calls): their weight is 1, so they take the
    block's result as it is.
    """
    # out: [b, h, sq, d] fp32   lse: [b, h, sq] fp32
    weight = torch.sigmoid(block_lse - lse).unsqueeze(-1)
    out.lerp_(block_out.to(out.dtype), weight)
    lse.copy_(torch.logaddexp(lse, block_lse.to(lse.dtype)))


def _seed(seed, salt, ring, src, n, mask):
    """Dropout seed of sub-block ``n`` of the step holding ``src``'s K/V (unmasked: one block)."""
    ids = (salt, ring.index, src, n) if mask is not None else (salt, ring.index, src)
    return block_seed(seed, *ids)


def ring_forward(ring: Ring, kernel, q, k, v, causal, zigzag, scale, dropout_p=0.0, seed=0,
                 salt=0, mask=None):
    """Return ``(out, lse)`` for the local queries; ``out`` fp32 (dtype of q when P == 1 unmasked).

    ``mask`` (masks.AttentionMask, causal only): documents and window; every step runs its live
    sub-blocks only, and rows start empty (lse -inf) instead of from step 0's whole block."""
    # q: [b, hq, s, d]   k, v: [b, hkv, s, d]
    acc = torch.promote_types(q.dtype, torch.float32)
    b, s, out, lse = q.shape[0], q.shape[2], None, None
    if mask is not None:
        out = torch.zeros(q.shape, dtype=acc, device=q.device)
        lse = torch.full(q.shape[:3], float("-inf"), dtype=acc, device=q.device)
    for step, src, (kc, vc) in circulate(ring, (k, v)):
        for n, (bs, rows, cols, kind) in enumerate(step_blocks(step, src, ring, s, b, causal, zigzag, mask)):
            blk_out, blk_lse = block_forward(kernel, q[bs, :, rows], kc[bs, :, cols], vc[bs, :, cols], kind,
                                             scale, dropout_p, _seed(seed, salt, ring, src, n, mask))
            if out is None:  # unmasked step 0 covers every row
                out, lse = (blk_out, blk_lse) if ring.size == 1 else (blk_out.to(acc), blk_lse.to(acc))
            else:
                merge_(out[bs, :, rows], lse[bs, :, rows], blk_out, blk_lse)
    return out, lse


def ring_backward(ring: Ring, kernel, dout, q, k, v, out, lse, causal, zigzag, scale,
                  dropout_p=0.0, seed=0, salt=0, mask=None):
    """Return ``(dq, dk, dv)`` of the local shard, accumulated in fp32."""
    # dout, out: [b, hq, s, d]   lse: [b, hq, s]
    if ring.size == 1 and mask is None:  # local attention: the kernel's gradients as they are
        return kernel.backward(dout, q, k, v, out, lse, causal, scale, dropout_p,
                               block_seed(seed, salt, 0, 0))
    acc = torch.promote_types(q.dtype, torch.float32)
    b, s = q.shape[0], q.shape[2]
    dq, dkv = None, TravellingSum(ring)
    if mask is not None:
        dq = torch.zeros(q.shape, dtype=acc, device=q.device)
    for step, src, (kc, vc) in circulate(ring, (k, v)):
        blocks = step_blocks(step, src, ring, s, b, causal, zigzag, mask)
        travelling = dkv.take()
        if travelling is None and (mask is not None or not blocks):  # this rank's block starts its sums
            travelling = [torch.zeros(k.shape, dtype=acc, device=k.device),
                          torch.zeros(v.shape, dtype=acc, device=v.device)]
        for n, (bs, rows, cols, kind) in enumerate(blocks):
            bdq, bdk, bdv = block_backward(kernel, dout[bs, :, rows], q[bs, :, rows], kc[bs, :, cols],
                                           vc[bs, :, cols], out[bs, :, rows], lse[bs, :, rows], kind, scale,
                                           dropout_p, _seed(seed, salt, ring, src, n, mask))
            if travelling is None:  # unmasked step 0: the whole block's gradients start the sums
                dq, travelling = bdq.to(acc), [bdk.to(acc), bdv.to(acc)]
            else:
                dq[bs, :, rows] += bdq
                travelling[0][bs, :, cols] += bdk
                travelling[1][bs, :, cols] += bdv
            del bdq, bdk, bdv
        dkv.pass_on(travelling)
        del travelling
        dkv.settle()  # finish the hop before the next K/V prefetch: fewer buffers alive
    dk, dv = dkv.result()
    return dq.to(q.dtype), dk.to(k.dtype), dv.to(v.dtype)


class RingAttentionFunction(torch.autograd.Function):
    """Differentiable ring attention on ``[b, h, s, d]`` shards (see module doc)."""

    @staticmethod
    def forward(ctx, q, k, v, ring, kernel, causal, zigzag, scale, dropout_p, seed, salt, mask=None):
        out, lse = ring_forward(ring, kernel, q, k, v, causal, zigzag, scale, dropout_p, seed, salt, mask)
        out = out.to(q.dtype)
        ctx.save_for_backward(q, k, v, out, lse)
        ctx.args = (ring, kernel, causal, zigzag, scale, dropout_p, seed, salt, mask)
        return out

    @staticmethod
    def backward(ctx, dout):
        q, k, v, out, lse = ctx.saved_tensors
        ring, kernel, causal, zigzag, scale, dropout_p, seed, salt, mask = ctx.args
        dq, dk, dv = ring_backward(ring, kernel, dout, q, k, v, out, lse, causal, zigzag, scale,
                                   dropout_p, seed, salt, mask)
        return dq, dk, dv, None, None, None, None, None, None, None, None, None
