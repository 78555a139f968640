"""Learning-rate schedule, as Megatron-LM's: counted in samples, linear warmup from
``--lr-warmup-init``, then constant / linear / cosine / inverse-square-root decay to ``--min-lr``.

Megatron counts the schedule in *samples*: iteration ``i`` has seen ``s = i x G`` samples
(G = global batch size); ``--lr-warmup-iters W`` and ``--lr-decay-iters D`` mean ``W x G``
and ``D x G`` samples, ``--lr-warmup-samples`` / ``--lr-decay-samples`` (with
``--train-samples``) give them directly, and ``--lr-warmup-fraction f`` is ``f`` of the
decay length.  Worked example, ``--lr 1e-3 --min-lr 1e-4 --lr-warmup-samples 40
--lr-decay-samples 400`` at G = 4, cosine: iteration 5 (20 samples) -> 5e-4 (warmup,
``lr x 20 / 40``); iteration 55 (220 samples) -> ``min + (lr - min) x 0.5 x (1 + cos(pi x
180 / 360))`` = 5.5e-4; from iteration 100 on -> 1e-4.

Each parameter group may carry its own ``max_lr`` / ``min_lr`` (``--decoupled-lr`` and
``--decoupled-min-lr`` for the embedding and output layer); the shape is the same.

Resuming checks the checkpoint's schedule against the flags, as Megatron-LM does: a
difference is an error unless ``--override-opt_param-scheduler`` (the flags win) or
``--use-checkpoint-opt_param-scheduler`` (the checkpoint wins) says which to keep.
"""
from __future__ import annotations

import math

DECAY_STYLES = ("constant", "linear", "cosine", "inverse-square-root")
# The values a checkpoint's schedule is compared on (state key -> flag that sets it).
CHECKED = {"max_lr": "--lr", "min_lr": "--min-lr", "warmup_steps": "--lr-warmup-*",
           "decay_steps": "--lr-decay-*", "decay_style": "--lr-decay-style"}


class SchedulerMismatchError(ValueError):
    pass


class LRScheduler:
    def __init__(self, optimizer, lr: float, min_lr: float, warmup_steps: int, decay_steps: int,
                 decay_style: str, samples_per_step: int = 1, init_lr: float = 0.0,
                 override: bool = False, use_checkpoint: bool = False):
        if decay_style not in DECAY_STYLES:
            raise ValueError(f"--lr-decay-style {decay_style!r}: choose one of {', '.join(DECAY_STYLES)}")
        if override and use_checkpoint:
            raise ValueError("--override-opt_param-scheduler and --use-checkpoint-opt_param-scheduler "
                             "are exclusive: pick which schedule to keep")
        self.optimizer, self.max_lr, self.min_lr, self.init_lr = optimizer, lr, min_lr, init_lr
        self.warmup_steps, self.decay_steps, self.decay_style = warmup_steps, decay_steps, decay_style
        self.samples_per_step = samples_per_step
        self.override, self.use_checkpoint = override, use_checkpoint
        self.num_steps = 0  # iterations (the loop and checkpoints count iterations)
        self.num_samples = 0  # what the schedule follows: samples of the iterations stepped
        self.step(0)

    def get_lr(self, it: int, group: dict | None = None) -> float:
        """The learning rate after ``it`` iterations of ``samples_per_step`` samples each."""
        return self.lr_at_samples(it * self.samples_per_step, group)

    def lr_at_samples(self, s: float, group: dict | None = None) -> float:
        """The learning rate after ``s`` samples (under a batch-size ramp, the sum of the batches)."""
        group = group or {}
        max_lr, min_lr = group.get("max_lr", self.max_lr), group.get("min_lr", self.min_lr)
        if self.warmup_steps > 0 and s <= self.warmup_steps:
            return self.init_lr + (max_lr - self.init_lr) * s / self.warmup_steps
        if self.decay_style == "constant":
            return max_lr
        if self.decay_style == "inverse-square-root":
            return max(min_lr, max_lr * math.sqrt(max(self.warmup_steps, 1)) / math.sqrt(max(s, 1)))
        if s > self.decay_steps:
            return min_lr
        ratio = (s - self.warmup_steps) / max(1, self.decay_steps - self.warmup_steps)
        coeff = 1.0 - ratio if self.decay_style == "linear" else 0.5 * (1.0 + math.cos(math.pi * ratio))
        return min_lr + coeff * (max_lr - min_lr)

    def step(self, increment: int = 1, samples: int | None = None) -> float:
        """Advance ``increment`` iterations of ``samples`` samples in all (default: ``samples_per_step``
        each; the loop passes the batch-size schedule's batch, as Megatron steps by the batch)."""
        self.num_steps += increment
        self.num_samples += increment * self.samples_per_step if samples is None else samples
        for group in self.optimizer.param_groups:
            group["lr"] = self.lr_at_samples(self.num_samples, group)
        return self.lr_at_samples(self.num_samples)

    def state_dict(self) -> dict:
        return {"num_steps": self.num_steps, "num_samples": self.num_samples, "max_lr": self.max_lr,
                "min_lr": self.min_lr,
                "warmup_steps": self.warmup_steps, "decay_steps": self.decay_steps,
                "decay_style": self.decay_style, "samples_per_step": self.samples_per_step}

    def load_state_dict(self, state: dict) -> None:
        state = dict(state)
        if "warmup_iters" in state:  # checkpoints written before the schedule counted samples
            per = state.get("samples_per_step", self.samples_per_step)
            state["warmup_steps"], state["decay_steps"] = state["warmup_iters"] * per, state["decay_iters"] * per
        if not self.override:
            for key, flag in CHECKED.items():
                mine, saved = getattr(self, key), state.get(key)
                if saved is None or mine == saved:
                    continue
                if self.use_checkpoint:
                    setattr(self, key, saved)
                else:
                    raise SchedulerMismatchError(
                        f"the checkpoint's learning-rate schedule has {key} {saved} but the flags give {mine} "
                        f"({flag}); pass --override-opt_param-scheduler to use the flags or "
                        "--use-checkpoint-opt_param-scheduler to keep the checkpoint's")
        self.num_steps = state["num_steps"]
        self.num_samples = state.get("num_samples", self.num_steps * state.get("samples_per_step",
                                                                               self.samples_per_step))
        self.step(0)


def build_scheduler(optimizer, args) -> LRScheduler:
    """The schedule of the flags (arguments.py puts it in samples: lr_warmup_steps, lr_decay_steps)."""
    return LRScheduler(optimizer, args.lr, args.min_lr, args.lr_warmup_steps, args.lr_decay_steps,
                       args.lr_decay_style, samples_per_step=args.global_batch_size, init_lr=args.lr_warmup_init,
                       override=args.override_opt_param_scheduler,
                       use_checkpoint=args.use_checkpoint_opt_param_scheduler)
