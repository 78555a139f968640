"""Attention masks of packed documents and sliding windows, described per block (never [s, s]).

The mask of one attention call is::

    key j is visible to query i  iff  doc(i) == doc(j)  and  i - W <= j <= i

with ``i, j`` global sequence positions, ``doc`` the document a position belongs to (from the
sample's document starts, Megatron's ``--reset-attention-mask``: a document ends with its EOD)
and ``W`` the causal left window (``--window-size W 0``: the query and the ``W`` keys before it;
``None``: unlimited).  Position ids (``--reset-position-ids``) do not enter the mask.

Every CP layout holds its tokens as a few contiguous *runs* of global positions (a ring portion
is one run, or the two zigzag chunks).  Cut at document starts, runs become *segments* (one
document, contiguous positions).  A (query segment, key segment) pair of the same document is a
rectangle that :func:`decompose` splits into live sub-blocks, each one call of an unmasked
block kernel::

    full      every key visible to every query
    causal    key j visible iff j <= i (the kernels' ``causal``), square
    flipped   key j visible iff j >= i - W: both sides reversed, it is ``causal`` again; square

(Causal blocks are square, so top-left and bottom-right alignments agree: flash-attn aligns
non-square causal blocks bottom-right, torch's ops top-left.)

Worked example, W = 2, queries and keys [0, 6) of one document (x = visible)::

    q\\k 0 1 2 3 4 5        decompose:
     0   x . . . . .          queries [0, 3) x keys [0, 3) causal
     1   x x . . . .          queries [3, 5) x keys [1, 3) flipped (j >= i - 2)
     2   x x x . . .          queries [3, 6) x keys [3, 6) causal
     3   . x x x . .        (query 5 sees none of keys [1, 3): trimmed away)
     4   . . x x x .
     5   . . . x x x        Every row of a live sub-block sees at least one key, so its partial
                            result merges with the LSE of the others.

A ring step whose key portion shares no live sub-block with the queries calls no kernel.
:func:`count_blocks` records, per ring step, whether it ran and the (query, key) pairs it
computed, for the tests and the benchmark (tools/bench_masked_attention.py).
"""
from __future__ import annotations

import bisect
from typing import List, Optional, Sequence, Tuple

import torch

from .records import BLOCKS


FULL, CAUSAL, FLIPPED = "full", "causal", "flipped"
_UNLIMITED = 1 << 62
def count_blocks():
    """Record ``(live, pairs)`` for every ring step of every masked call issued inside:
    ``live`` whether a kernel ran at that step, ``pairs`` the (query, key) pairs it computed."""
    return BLOCKS.recording()


def record_step(blocks) -> None:
    if BLOCKS.on:
        BLOCKS.add((bool(blocks), sum((q.stop - q.start) * (k.stop - k.start) for q, k, _ in blocks)))


def decompose(qa: int, qb: int, ka: int, kb: int, w: int, out: list) -> None:
    """Append the live sub-blocks ``(qa, qb, ka, kb, kind)`` of queries [qa, qb) x keys [ka, kb)
    (global positions of one document) under ``i - w <= j <= i`` (see module doc)."""
    ka, kb = max(ka, qa - w), min(kb, qb)         # keys no query can see
    qa, qb = max(qa, ka), min(qb, kb + w)         # queries that see none of these keys
    if qa >= qb or ka >= kb:
        return
    upper = kb - 1 > qa                           # some key after some query
    lower = ka < qb - 1 - w                       # some key before some query's window
    if not upper and not lower:
        out.append((qa, qb, ka, kb, FULL))
    elif upper and lower:
        if qb - qa - 1 > w:                       # taller than the window: halve the queries
            mid = (qa + qb) // 2
            decompose(qa, mid, ka, kb, w, out)
            decompose(mid, qb, ka, kb, w, out)
        else:                                     # keys before qa: window edge; from qa: diagonal
            decompose(qa, qb, ka, qa, w, out)
            decompose(qa, qb, qa, kb, w, out)
    elif upper:                                   # trimmed: ka <= qa, kb <= qb
        if qa > ka:
            out.append((qa, qb, ka, qa, FULL))
        out.append((qa, kb, qa, kb, CAUSAL))      # square: the same block under every kernel's alignment
        if qb > kb:
            out.append((kb, qb, qa, kb, FULL))
    else:                                         # lower only: keys [ka, qb - w) edge, rest full
        edge = ka + w                             # trimmed: qa <= edge < qb - 1
        if edge > qa:
            out.append((qa, edge, ka, qb - w, FULL))
        out.append((edge, qb, ka, qb - w, FLIPPED))  # square
        if kb > qb - w:
            out.append((qa, qb, qb - w, kb, FULL))


def segments(runs: Sequence[Tuple[int, int, int]], bounds: Optional[Sequence[int]]):
    """``runs`` (local offset, first global position, length) cut at document starts ->
    ``(local offset, first global position, length, document)``."""
    out = []
    for off, start, length in runs:
        pos, end = start, start + length
        while pos < end:
            if bounds is None:
                doc, nxt = 0, end
            else:
                doc = bisect.bisect_right(bounds, pos) - 1
                nxt = min(end, bounds[doc + 1]) if doc + 1 < len(bounds) else end
            out.append((off + pos - start, pos, nxt - pos, doc))
            pos = nxt
    return out


def live_blocks(q_runs, k_runs, bounds, window: Optional[int]) -> List[tuple]:
    """``[(query slice, key slice, kind)]`` in local indices: the kernel calls of one block."""
    w = _UNLIMITED if window is None else window
    by_doc: dict = {}
    for seg in segments(k_runs, bounds):
        by_doc.setdefault(seg[3], []).append(seg)
    blocks = []
    for q_off, q_start, q_len, doc in segments(q_runs, bounds):
        for k_off, k_start, k_len, _ in by_doc.get(doc, ()):
            rects: list = []
            decompose(q_start, q_start + q_len, k_start, k_start + k_len, w, rects)
            for qa, qb, ka, kb, kind in rects:
                blocks.append((slice(q_off + qa - q_start, q_off + qb - q_start),
                               slice(k_off + ka - k_start, k_off + kb - k_start), kind))
    return blocks


def portion_runs(seq_len: int, zigzag: bool, ring_size: int, r: int) -> List[Tuple[int, int, int]]:
    """The global runs of ring rank ``r``'s portion (shard.py's layout, Ulysses pieces joined)."""
    if zigzag:
        chunk = seq_len // (2 * ring_size)
        return [(0, r * chunk, chunk), (chunk, (2 * ring_size - 1 - r) * chunk, chunk)]
    size = seq_len // ring_size
    return [(0, r * size, size)]


def check_document_bounds(bounds: Sequence[int], seq_len: int) -> None:
    if len(bounds) < 2 or bounds[0] != 0 or bounds[-1] != seq_len or any(
            b > a for a, b in zip(bounds[1:], bounds[:-1])):
        raise ValueError(f"document starts {list(bounds)[:8]}... must rise from 0 to the sequence length "
                         f"{seq_len} (cu_seqlens of --reset-attention-mask)")


class AttentionMask:
    """Document starts of each sample (global positions, ``[0, ..., seq_len]``; None: one
    document) and the causal left window (None: unlimited), for every layer of one forward.

    ``blocks(seq_len, zigzag, ring_size, q_rank, k_rank)`` -> ``[(batch slice, live blocks)]``:
    one entry for the whole batch when every sample has the same documents, else one per sample.
    Plans are cached on the object, so the layers of one forward compute them once.
    """

    def __init__(self, bounds: Optional[Sequence[Sequence[int]]] = None, window: Optional[int] = None):
        if window is not None and window < 0:
            raise ValueError(f"--window-size {window}: the left window must be >= 0 (or -1: unlimited)")
        self.bounds = None if bounds is None else [list(map(int, b)) for b in bounds]
        self.window = window
        self._cache: dict = {}

    @classmethod
    def from_cu_seqlens(cls, cu_seqlens: Optional[torch.Tensor], window: Optional[int], seq_len: int):
        """``cu_seqlens`` [b, n] (document starts padded with ``seq_len``) -> the mask, or None
        when nothing is masked beyond causality."""
        bounds = None
        if cu_seqlens is not None:
            bounds = []
            for row in cu_seqlens.detach().cpu().tolist():
                row = sorted(set(int(x) for x in row) | {0, seq_len})
                check_document_bounds(row, seq_len)
                bounds.append(row)
            if all(len(b) == 2 for b in bounds):
                bounds = None
        if window is not None and window >= seq_len - 1:  # every key of the causal rows is in the window
            window = None
        if bounds is None and window is None:
            return None
        return cls(bounds, window)

    def with_window(self, window: Optional[int]) -> "AttentionMask":
        return self if window == self.window else AttentionMask(self.bounds, window)

    def _groups(self, batch: int):
        if self.bounds is None:
            return [(slice(None), None)]
        if len(self.bounds) != batch:
            raise ValueError(f"the attention mask has document starts for {len(self.bounds)} samples, "
                             f"the batch has {batch}")
        if all(b == self.bounds[0] for b in self.bounds):
            return [(slice(None), self.bounds[0])]
        return [(slice(i, i + 1), b) for i, b in enumerate(self.bounds)]

    def blocks(self, batch: int, seq_len: int, zigzag: bool, ring_size: int, q_rank: int, k_rank: int):
        key = (batch, seq_len, zigzag, ring_size, q_rank, k_rank)
        if key not in self._cache:
            q_runs, k_runs = (portion_runs(seq_len, zigzag, ring_size, r) for r in (q_rank, k_rank))
            groups = []
            for rows, bounds in self._groups(batch):
                if bounds is not None:
                    check_document_bounds(bounds, seq_len)
                groups.append((rows, live_blocks(q_runs, k_runs, bounds, self.window)))
            self._cache[key] = groups
        return self._cache[key]

    def dense_rows(self, batch: int, rows, cols, device) -> torch.Tensor:
        """Visible ``[b or 1, 1, len(rows), len(cols)]`` (bool) for global positions ``rows`` x ``cols``:
        the materialised rows of RSA, and the tests' dense reference."""
        rows, cols = torch.as_tensor(rows), torch.as_tensor(cols)
        visible = cols[None, :] <= rows[:, None]
        if self.window is not None:
            visible &= rows[:, None] - cols[None, :] <= self.window
        masks = []
        for _, bounds in self._groups(batch):
            if bounds is None:
                masks.append(visible)
                continue
            b = torch.tensor(bounds)
            doc_r, doc_c = (torch.bucketize(x, b, right=True) for x in (rows, cols))
            masks.append(visible & (doc_r[:, None] == doc_c[None, :]))
        return torch.stack(masks)[:, None].to(device)


def skip_fraction(mask: AttentionMask, batch: int, seq_len: int, zigzag: bool, ring_size: int) -> float:
    """Share of the ring's (rank, step) blocks that the mask empties: the prediction from the
    plan alone (no tensors), for the benchmark to set beside the measured one."""
    skipped = total = 0
    for r in range(ring_size):
        for step in range(ring_size):
            src = (r - step) % ring_size
            live = any(blocks for _, blocks in mask.blocks(batch, seq_len, zigzag, ring_size, r, src))
            skipped += not live
            total += 1
    return skipped / total


def pad_cu_seqlens(rows) -> torch.Tensor:
    """Document starts of several samples as one ``[b, n]`` tensor, each row padded with its
    last value (the sequence length: empty documents, which masks.py ignores)."""
    width = max(r.numel() for r in rows)
    return torch.stack([torch.cat([r, r[-1:].expand(width - r.numel())]) for r in rows])
