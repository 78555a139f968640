"""The global batch size as a function of the samples consumed so far: ONE object that the flag
checks, the batch generator, the learning-rate schedule, the loop and checkpoint resume all ask
(Megatron-LM's num-microbatches calculator).  Imports no torch (the flag contract uses it).

Three kinds, from the flags:

* constant: ``--global-batch-size G`` for every iteration;
* ramp-up: ``--rampup-batch-size START INCR SAMPLES`` (Megatron-LM's ramp-up calculator, as
  Megatron-LM had it until April 2026): the batch grows from START by INCR in
  ``(G - START) / INCR`` equal slices of SAMPLES consumed samples, then stays at G.  With
  ``--rampup-batch-size 4 4 24`` and ``--global-batch-size 12``: 2 increments of 12 samples each,
  so the batches are 4, 4, 4 (consumed 0, 4, 8), 8 (consumed 12), 8, 12 (consumed 28 > 24) ...
* step: ``--step-batch-size-schedule "0:16 2.4B:320 ..."`` (Megatron-LM's step calculator):
  THRESHOLD:BATCH pairs, thresholds in tokens (K/M/B/T suffixes) that become samples by
  ``// --seq-length``; the batch is that of the last threshold the consumed samples reached.

Every batch the schedule can take must divide into micro-batches x data-parallel ranks.
"""
from __future__ import annotations

SUFFIXES = {"K": 10 ** 3, "M": 10 ** 6, "B": 10 ** 9, "T": 10 ** 12}


class BatchScheduleError(ValueError):
    """A bad batch-size schedule flag, in one line."""


def parse_count(text: str, flag: str) -> int:
    """``"2.4B"`` -> 2400000000 (Megatron's K/M/B/T suffixes)."""
    word = text.strip().upper()
    mult = SUFFIXES.get(word[-1:], 1)
    try:
        return int(float(word[:-1] if mult > 1 else word) * mult)
    except ValueError:
        raise BatchScheduleError(f"{flag}: {text!r} is not a number (suffixes K, M, B, T allowed)") from None


def parse_step_schedule(text: str, seq_length: int) -> list:
    """``"0:16 2.4B:320"`` -> ``[(0, 16), (2.4e9 // seq_length, 320)]`` (thresholds in samples)."""
    flag = "--step-batch-size-schedule"
    steps = []
    for entry in text.replace(",", " ").split():
        threshold, sep, batch = entry.partition(":")
        if not sep:
            raise BatchScheduleError(f"{flag} {text!r}: entry {entry!r} is not THRESHOLD:BATCH_SIZE")
        steps.append((parse_count(threshold, flag) // seq_length, parse_count(batch, flag)))
    steps.sort()
    if not steps or steps[0][0] != 0:
        raise BatchScheduleError(f"{flag} {text!r}: the first threshold must be 0 (the batch size to start with)")
    for (a, _), (b, _) in zip(steps, steps[1:]):
        if a == b:
            raise BatchScheduleError(f"{flag} {text!r}: two thresholds fall on sample {a} (--seq-length "
                                     f"{seq_length}); make the thresholds strictly increasing")
    if any(bs <= 0 for _, bs in steps):
        raise BatchScheduleError(f"{flag} {text!r}: batch sizes must be positive")
    if any(b < a for (_, a), (_, b) in zip(steps, steps[1:])):
        raise BatchScheduleError(f"{flag} {text!r}: the batch size must not decrease (Megatron-LM stops when the "
                                 "micro-batch count falls); order the batch sizes upwards")
    return steps


class BatchSchedule:
    """``global_batch_size(consumed_samples)`` and everything derived from it."""

    def __init__(self, target: int, micro_batch_size: int, data_parallel_size: int,
                 rampup: tuple | None = None, steps: list | None = None):
        self.target, self.per_micro = target, micro_batch_size * data_parallel_size
        self.micro_batch_size = micro_batch_size
        self.rampup, self.steps = rampup, steps
        if rampup is not None:
            start, incr, samples = rampup
            self.per_increment = samples / ((target - start) // incr) if target > start else float("inf")

    @property
    def kind(self) -> str:
        return "ramp-up" if self.rampup else "step" if self.steps else "constant"

    def global_batch_size(self, consumed_samples: int) -> int:
        if self.rampup is not None:
            start, incr, samples = self.rampup
            if consumed_samples > samples or self.target == start:
                return self.target
            return start + int(consumed_samples / self.per_increment) * incr
        if self.steps is not None:
            return [bs for threshold, bs in self.steps if consumed_samples >= threshold][-1]
        return self.target

    def num_micro_batches(self, consumed_samples: int) -> int:
        return self.global_batch_size(consumed_samples) // self.per_micro

    def batch_sizes(self) -> list:
        """Every batch size the schedule can take, in order."""
        if self.rampup is not None:
            start, incr, _ = self.rampup
            return list(range(start, self.target + 1, incr))
        return [bs for _, bs in self.steps] if self.steps is not None else [self.target]

    def consumed_after(self, iterations: int, consumed_samples: int = 0) -> int:
        """The consumed-sample count ``iterations`` iterations after ``consumed_samples``."""
        done = 0
        while done < iterations:
            if self.kind == "constant" or consumed_samples > self._last_change():
                return consumed_samples + (iterations - done) * self.target
            consumed_samples += self.global_batch_size(consumed_samples)
            done += 1
        return consumed_samples

    def _last_change(self) -> int:
        return self.rampup[2] if self.rampup is not None else self.steps[-1][0]

    def iterations_for_samples(self, train_samples: int) -> int:
        """``--train-samples``: Megatron-LM's iteration count (a partial last batch is dropped)."""
        if self.kind == "constant":
            return train_samples // self.target
        iterations = consumed = 0
        if self.rampup is not None:  # the ramp, then whole target batches
            while consumed <= self.rampup[2] and consumed <= train_samples:
                consumed += self.global_batch_size(consumed)
                iterations += 1
            return iterations + max(train_samples - consumed, 0) // self.target
        while consumed < train_samples:  # step schedule: until the samples are reached
            consumed += self.global_batch_size(consumed)
            iterations += 1
        return iterations

    def iterations_to_reach(self, samples: int) -> int:
        """The fewest iterations whose batches hold at least ``samples`` samples (``--train-tokens``:
        Megatron-DeepSpeed trains while the consumed tokens are fewer than it)."""
        iterations = consumed = 0
        while consumed < samples:
            if self.kind == "constant" or consumed > self._last_change():
                return iterations + -(-(samples - consumed) // self.target)
            consumed += self.global_batch_size(consumed)
            iterations += 1
        return iterations

    def describe(self) -> str:
        if self.kind == "constant":
            return f"global {self.target}"
        if self.rampup is not None:
            start, incr, samples = self.rampup
            return (f"ramp-up from {start} by {incr} every {self.per_increment:g} samples to {self.target} "
                    f"(after {samples} samples)")
        return "step schedule " + ", ".join(f"{bs} from sample {t}" for t, bs in self.steps)


def batch_schedule_from_args(args) -> BatchSchedule:
    """The schedule of the flags (after validate_args: ``data_parallel_size``, ``global_batch_size``)."""
    rampup = getattr(args, "rampup_batch_size", None)
    step = getattr(args, "step_batch_size_schedule", None)
    steps = parse_step_schedule(step, args.seq_length) if step else None
    return BatchSchedule(args.global_batch_size, args.micro_batch_size, args.data_parallel_size,
                         tuple(rampup) if rampup else None, steps)


def check_batch_schedule(args) -> BatchSchedule:
    """Validate the schedule flags and set ``args.global_batch_size`` (the target); one-line errors."""
    rampup, step = getattr(args, "rampup_batch_size", None), getattr(args, "step_batch_size_schedule", None)
    if rampup and step:
        raise BatchScheduleError("--rampup-batch-size and --step-batch-size-schedule are exclusive: give one "
                                 "(Megatron-LM replaced the first by the second)")
    if step:
        last = parse_step_schedule(step, args.seq_length)[-1][1]
        if args.global_batch_size not in (None, last):
            raise BatchScheduleError(f"--global-batch-size {args.global_batch_size} disagrees with "
                                     f"--step-batch-size-schedule {step!r}, whose last batch size is {last}; "
                                     "drop --global-batch-size or make them agree")
        args.global_batch_size = last
    if rampup:
        start, incr, samples = rampup
        if start <= 0 or incr <= 0 or samples < 0:
            raise BatchScheduleError(f"--rampup-batch-size {start} {incr} {samples}: the start batch size and "
                                     "increment must be positive, the ramp-up samples not negative")
        gbs = args.global_batch_size
        if gbs is None or gbs < start or (gbs - start) % incr:
            raise BatchScheduleError(f"--rampup-batch-size {start} {incr} {samples}: --global-batch-size {gbs} "
                                     f"must be START + a whole number of INCR (>= {start})")
    if args.global_batch_size is None:
        args.global_batch_size = args.micro_batch_size * args.data_parallel_size
    schedule = batch_schedule_from_args(args)
    per = schedule.per_micro
    for bs in schedule.batch_sizes():
        if bs % per:
            flag = ("--global-batch-size" if schedule.kind == "constant" else
                    "--rampup-batch-size" if rampup else "--step-batch-size-schedule")
            raise BatchScheduleError(
                f"{flag}: global batch size {bs} is not divisible by --micro-batch-size {args.micro_batch_size} "
                f"x data-parallel size {args.data_parallel_size} = {per}")
    return schedule
