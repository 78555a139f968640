"""argparse helpers: a bad flag value is one line naming the flag, at parse time, on every rank.

    from megatron_sp.arguments.types import ArgumentParser, at_least, in_range, POSITIVE_INT, NON_NEGATIVE

    p = ArgumentParser(description="...")                    # errors: one line, exit 2
    p.add_argument("--log-interval", type=POSITIVE_INT, default=100)
    p.add_argument("--hidden-dropout", type=in_range(0, 1, hi_open=True), default=0.1)
    p.add_argument("--lr", type=NON_NEGATIVE, required=True)

    $ pretrain_gpt.py ... --log-interval 0
    error: argument --log-interval: 0 is not an integer >= 1 (see --help)

Every numeric flag gets one of these types, so no value can reach a ZeroDivisionError, a
torch message that does not name the flag, or a silent no-op further down.  Floats must
be finite (``nan``/``inf`` are refused).  ``tests/test_flag_validation.py`` sweeps every
numeric flag of pretrain_gpt.py and the tools with bad values and fails for a flag whose
type lets one through -- so a new flag needs a range too.
"""
from __future__ import annotations

import argparse
import math


class ArgumentParser(argparse.ArgumentParser):
    """``error()`` prints one line, ``error: <message> (see --help)``, instead of the usage block."""

    def __init__(self, *args, **kwargs):
        kwargs.setdefault("allow_abbrev", False)
        super().__init__(*args, **kwargs)

    def error(self, message):
        self.exit(2, f"error: {message} (see --help)\n")


class Range:
    """An argparse ``type``: parse ``int``/``float`` text and check it lies in a range.

    ``Range(int, lo=1)`` accepts 1, 2, ...; ``Range(float, 0, 1, hi_open=True)`` accepts
    [0, 1).  The bounds are inclusive unless ``lo_open`` / ``hi_open``.
    """

    def __init__(self, kind=int, lo=None, hi=None, lo_open=False, hi_open=False):
        self.kind, self.lo, self.hi, self.lo_open, self.hi_open = kind, lo, hi, lo_open, hi_open
        self.__name__ = self.describe()  # argparse names the type by it in some messages

    def describe(self) -> str:
        noun = "an integer" if self.kind is int else "a number"
        if self.lo is not None and self.hi is not None:
            return (f"{noun} in {'(' if self.lo_open else '['}{self.lo:g}, {self.hi:g}"
                    f"{')' if self.hi_open else ']'}")
        if self.lo is not None:
            return f"{noun} {'>' if self.lo_open else '>='} {self.lo:g}"
        if self.hi is not None:
            return f"{noun} {'<' if self.hi_open else '<='} {self.hi:g}"
        return noun

    def contains(self, value) -> bool:
        if self.kind is float and not math.isfinite(value):
            return False
        if self.lo is not None and (value <= self.lo if self.lo_open else value < self.lo):
            return False
        if self.hi is not None and (value >= self.hi if self.hi_open else value > self.hi):
            return False
        return True

    def __call__(self, text: str):
        try:
            value = self.kind(text)
        except (TypeError, ValueError):
            raise argparse.ArgumentTypeError(f"{text!r} is not {self.describe()}") from None
        if not self.contains(value):
            raise argparse.ArgumentTypeError(f"{text} is not {self.describe()}")
        return value

    def __repr__(self) -> str:
        return self.describe()


def at_least(lo, kind=int) -> Range:
    """``kind`` values >= ``lo`` (``at_least(1)``: a positive integer)."""
    return Range(kind, lo=lo)


def in_range(lo, hi, kind=float, lo_open=False, hi_open=False) -> Range:
    return Range(kind, lo, hi, lo_open, hi_open)


POSITIVE_INT = at_least(1)
NON_NEGATIVE_INT = at_least(0)
POSITIVE = Range(float, lo=0, lo_open=True)          # > 0
NON_NEGATIVE = Range(float, lo=0)                     # >= 0
PROBABILITY = in_range(0, 1, hi_open=True)            # dropout: [0, 1)
FRACTION = in_range(0, 1)                             # [0, 1]
SEED = Range(int, 0, 2 ** 32 - 1)                     # numpy's and torch's seed range
