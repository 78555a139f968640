"""Search for the largest value (sequence length, micro-batch) whose trial fits the budget.

Exponential bracketing from a start (the memory model's prediction), then bisection
on multiples of the granularity the layout needs; a non-memory failure stops it.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable, Optional


# --- search ----------------------------------------------------------------------------
@dataclass
class SearchResult:
    value: int  # the largest value that fits (0: none)
    result: Optional[object]
    trials: list = field(default_factory=list)  # (value, result) in order
    layout_name: str = ""


def search_max(trial: Callable[[int], object], granularity: int, start: int, limit: int,
               rel_tol: float = 0.02, fits: Callable[[object], bool] = lambda r: r.fits,
               growth: float = 2.0, step: Optional[int] = None) -> SearchResult:
    """Largest multiple of ``granularity`` in ``[granularity, limit]`` for which ``trial`` fits.

    Exponential steps (x ``growth`` up, / ``growth`` down; or, with ``step``, +-``step`` doubling
    each time) from ``start`` bracket the answer, then bisection on multiples of ``granularity``
    narrows it to within ``rel_tol`` (relative) or one granule.  ``step = granularity`` suits a
    start within a granule or two of the answer: two trials, the answer and the next granule,
    settle it.  Assumes fitting is monotone (a smaller value fits if a larger one does); every
    trial is recorded.
    """
    g = granularity
    limit = limit // g * g
    if limit < g:
        return SearchResult(0, None, [])
    cache, trials = {}, []

    def run(v):
        if v not in cache:
            cache[v] = trial(v)
            trials.append((v, cache[v]))
        return fits(cache[v])

    v = min(max(g, start // g * g), limit)
    lo, hi = 0, None  # lo fits (0: nothing yet), hi fails (None: nothing yet)
    delta = max(g, (step or g) // g * g)  # the additive step, doubled after each move
    if run(v):
        lo = v
        while hi is None and lo < limit:
            up = lo + delta if step else int(lo * growth) // g * g
            v, delta = min(limit, max(lo + g, up)), 2 * delta
            if run(v):
                lo = v
            else:
                hi = v
    else:
        hi = v
        while lo == 0 and hi > g:
            down = hi - delta if step else int(hi / growth) // g * g
            v, delta = max(g, min(hi - g, down)), 2 * delta
            if run(v):
                lo = v
            else:
                hi = v
    if hi is not None and lo > 0:
        while hi - lo > g and (hi - lo) > rel_tol * lo:
            mid = (lo + hi) // 2 // g * g
            if mid <= lo:
                mid = lo + g
            if mid >= hi:
                break
            if run(mid):
                lo = mid
            else:
                hi = mid
    return SearchResult(lo, cache.get(lo), trials)
