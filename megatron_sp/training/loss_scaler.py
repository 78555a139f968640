"""Loss scaling for fp16 (Megatron's semantics), a constant scale of 1 otherwise.

Dynamic scaling: every step whose gradients hold an inf/NaN on *any* rank is
skipped on every rank; after ``hysteresis`` such steps in a row the scale is
multiplied by ``backoff`` (never below ``min_scale``); after ``window`` clean steps
in a row it is multiplied by ``growth``.  Example with scale 2^16, hysteresis 2:
overflow -> skip, scale stays 2^16; overflow again -> skip, scale 2^15.
"""
from __future__ import annotations


class ConstantLossScaler:
    dynamic = False

    def __init__(self, scale: float = 1.0):
        self.scale = float(scale)

    def update(self, found_inf: bool) -> None:
        pass

    def state_dict(self) -> dict:
        return {"scale": self.scale}

    def load_state_dict(self, state: dict) -> None:
        self.scale = float(state["scale"])


class DynamicLossScaler:
    dynamic = True

    def __init__(self, initial_scale: float = 2.0 ** 16, min_scale: float = 1.0, window: int = 1000,
                 hysteresis: int = 2, growth: float = 2.0, backoff: float = 0.5):
        if initial_scale < min_scale or min_scale <= 0:
            raise ValueError(f"--initial-loss-scale {initial_scale} must be >= --min-loss-scale {min_scale} > 0")
        self.scale, self.min_scale, self.window = float(initial_scale), float(min_scale), window
        self.hysteresis, self.growth, self.backoff = hysteresis, growth, backoff
        self.growth_tracker, self.hysteresis_tracker = 0, hysteresis

    def update(self, found_inf: bool) -> None:
        if found_inf:
            self.growth_tracker = 0
            self.hysteresis_tracker -= 1
            if self.hysteresis_tracker <= 0:
                self.scale = max(self.scale * self.backoff, self.min_scale)
        else:
            self.growth_tracker += 1
            if self.growth_tracker == self.window:
                self.growth_tracker, self.hysteresis_tracker = 0, self.hysteresis
                self.scale *= self.growth

    def state_dict(self) -> dict:
        return {"scale": self.scale, "growth_tracker": self.growth_tracker,
                "hysteresis_tracker": self.hysteresis_tracker}

    def load_state_dict(self, state: dict) -> None:
        self.scale = float(state["scale"])
        self.growth_tracker = state.get("growth_tracker", 0)
        self.hysteresis_tracker = state.get("hysteresis_tracker", self.hysteresis)


def build_loss_scaler(args):
    if not args.fp16:
        return ConstantLossScaler(1.0)
    if args.loss_scale is not None:
        return ConstantLossScaler(args.loss_scale)
    return DynamicLossScaler(args.initial_loss_scale, args.min_loss_scale, args.loss_scale_window,
                             args.hysteresis)
