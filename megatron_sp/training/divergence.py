"""Stop a diverged fp16 run instead of skipping every step to the end.

Once an fp16 run's loss is NaN, every step overflows and is skipped, the dynamic scale
falls to ``--min-loss-scale`` and stays there, and nothing changes any more.
:class:`DivergenceGuard` counts consecutive iterations skipped at the minimum scale (with
a static ``--loss-scale``, every skipped iteration: the scale cannot go lower); after
``--max-skips-at-min-loss-scale`` of them (0: never) it raises ``FloatingPointError``.
The skip decision is all-reduced, so every rank counts alike and stops at the same
iteration.  While such a streak lasts no checkpoint is written (:attr:`holding`), so the
last checkpoint stays the last one before the run started skipping.

Example, ``--initial-loss-scale 4 --hysteresis 1 --max-skips-at-min-loss-scale 3``::

    iteration  1: advances             scale 4
    iteration  2: overflow, skipped    scale 4 -> 2
    iteration  3: overflow, skipped    scale 2 -> 1 (the minimum)
    iterations 4, 5, 6: skipped at 1   -> FloatingPointError after iteration 6
"""
from __future__ import annotations

import math


class DivergenceGuard:
    def __init__(self, args, scaler):
        self.enabled = bool(args.fp16) and args.max_skips_at_min_loss_scale > 0
        self.limit, self.scaler = args.max_skips_at_min_loss_scale, scaler
        self.streak, self.first = 0, None

    @property
    def holding(self) -> bool:
        """True while the run skips at the minimum scale: checkpoints are not written."""
        return self.streak > 0

    def update(self, skipped: bool, scale_used: float, iteration: int, loss: float) -> None:
        """Count iteration ``iteration`` (run at ``scale_used``); raise at the bound."""
        if not self.enabled:
            return
        at_minimum = not self.scaler.dynamic or scale_used <= self.scaler.min_scale
        if not (skipped and at_minimum):
            self.streak, self.first = 0, None
            return
        self.streak += 1
        self.first = self.first or iteration
        if self.streak >= self.limit:
            which = (f"the minimum loss scale {scale_used:g} (--min-loss-scale)" if self.scaler.dynamic
                     else f"the static loss scale {scale_used:g} (--loss-scale)")
            raise FloatingPointError(
                f"fp16 training diverged: {self.streak} consecutive iterations skipped at {which}, iterations "
                f"{self.first}-{iteration}, lm loss {loss if math.isfinite(loss) else str(loss)}; stopped without "
                f"saving them (--max-skips-at-min-loss-scale {self.limit}). Resume from the last checkpoint "
                "with a lower --lr or with --bf16")
