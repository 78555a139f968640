"""USP (Fang & Zhao 2024): Ulysses over the inner group x ring over the outer group.

One implementation serves three modes, picked only by the group sizes::

    a2a+p2p   U x R = P      all-to-all in the Ulysses group, ring in the ring group
    a2a       U = P, R = 1   all-to-all only; the "ring" is the local block kernel
    p2p       U = 1, R = P   ring only; the all-to-alls are identities

Data layout: the ring portion of ring rank r is contiguous (non-causal) or the
zigzag chunks (r, 2R-1-r) (causal); Ulysses rank u holds the u-th of U
contiguous pieces of that portion.  After the all-to-all every rank of the
Ulysses group holds the whole ring portion, in order, for h/U heads, which is
exactly what the ring core (ring.py) expects.  Worked example, causal,
P = 4 = U 2 x R 2, sequence of 8 tokens in 4 zigzag chunks of 2::

    ring rank 0 portion: chunks 0, 3 = tokens 0 1 6 7  -> u0: 0 1   u1: 6 7
    ring rank 1 portion: chunks 1, 2 = tokens 2 3 4 5  -> u0: 2 3   u1: 4 5

Dropout seeds are salted with the Ulysses rank (its heads differ from the
others') and with the ring block ids (ring.py).

With the unfused kernel (``--attention-backend unfused``) and a ring of one (CP 1, or pure
Ulysses) the attention of the whole portion is RSA's algorithm over that ring of one: scores
materialised and the probabilities kept for backward (backends.py).
"""
from __future__ import annotations

from .comm import Ring
from .ring import RingAttentionFunction, block_seed
from .rsa import RingSelfAttentionFunction
from .ulysses import heads_to_seq, kv_heads_for_degree, seq_to_heads


def usp_attention(q, k, v, ulysses_group, ulysses_size: int, ulysses_index: int, ring: Ring,
                  kernel, causal: bool, zigzag: bool, scale: float, dropout_p: float = 0.0,
                  seed: int = 0, mask=None):
    # q: [s_local, b, hq, d]   k, v: [s_local, b, hkv, d]
    k, v = kv_heads_for_degree(k, ulysses_size), kv_heads_for_degree(v, ulysses_size)
    q, k, v = (seq_to_heads(x, ulysses_group) for x in (q, k, v))
    # q: [s_ring, b, hq / U, d] with s_ring = U * s_local: the ring portion, in order
    q, k, v = (x.permute(1, 2, 0, 3) for x in (q, k, v))
    if kernel.keeps_probs and ring.size == 1:  # unfused: probabilities [b, hq / U, s_ring, s_ring] kept
        out = RingSelfAttentionFunction.apply(q, k, v, ring, causal, scale, dropout_p,
                                              block_seed(seed, ulysses_index), mask)
    else:
        out = RingAttentionFunction.apply(q, k, v, ring, kernel, causal, zigzag, scale, dropout_p, seed,
                                          ulysses_index, mask)
    # out: [b, hq / U, s_ring, d] -> [s_ring, b, hq / U, d] -> [s_local, b, hq, d]
    return heads_to_seq(out.permute(2, 0, 1, 3), ulysses_group)
