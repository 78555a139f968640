"""Learning-rate schedule: linear warmup, then constant / linear / cosine decay to ``--min-lr``.

Worked example, ``--lr 1e-3 --min-lr 1e-4 --lr-warmup-iters 10 --lr-decay-iters 100``
with cosine: iteration 5 -> 5e-4 (warmup, ``lr * it / warmup``); iteration 55 ->
``min + (lr - min) * 0.5 * (1 + cos(pi * 45 / 90))`` = 5.5e-4; iteration >= 100 -> 1e-4.
"""
from __future__ import annotations

import math


class LRScheduler:
    def __init__(self, optimizer, lr: float, min_lr: float, warmup_iters: int, decay_iters: int,
                 decay_style: str):
        if decay_style not in ("constant", "linear", "cosine"):
            raise ValueError(f"--lr-decay-style {decay_style!r}: choose constant, linear or cosine")
        self.optimizer, self.max_lr, self.min_lr = optimizer, lr, min_lr
        self.warmup_iters, self.decay_iters, self.decay_style = warmup_iters, decay_iters, decay_style
        self.num_steps = 0
        self.step(0)

    def get_lr(self, it: int) -> float:
        if self.warmup_iters > 0 and it <= self.warmup_iters:
            return self.max_lr * it / self.warmup_iters
        if self.decay_style == "constant":
            return self.max_lr
        if it >= self.decay_iters:
            return self.min_lr
        ratio = (it - self.warmup_iters) / max(1, self.decay_iters - self.warmup_iters)
        coeff = 1.0 - ratio if self.decay_style == "linear" else 0.5 * (1.0 + math.cos(math.pi * ratio))
        return self.min_lr + coeff * (self.max_lr - self.min_lr)

    def step(self, increment: int = 1) -> float:
        self.num_steps += increment
        lr = self.get_lr(self.num_steps)
        for group in self.optimizer.param_groups:
            group["lr"] = lr
        return lr

    def state_dict(self) -> dict:
        return {"num_steps": self.num_steps, "max_lr": self.max_lr, "min_lr": self.min_lr,
                "warmup_iters": self.warmup_iters, "decay_iters": self.decay_iters,
                "decay_style": self.decay_style}

    def load_state_dict(self, state: dict) -> None:
        self.num_steps = state["num_steps"]
        self.step(0)
