"""Rates as operators write them, and the policies famprov announces.

A rate is ``N/PERIOD``: ``6000/min``, ``20/10min``, ``100/s``, ``5000/h``,
``1000/d``, or ``unlimited``. A `Policy` is a rate under the name that the
``RateLimit-Policy`` and ``RateLimit`` answer fields give it
(draft-ietf-httpapi-ratelimit-headers-11: a List of Items whose value is a
String, with the Integer parameters ``q`` and ``w``, and ``r`` and ``t``).
"""

# TODO: draft -12 (November 2026) came out after these fields were written
# against -11 and has not been checked; a client reading -12 may expect
# something these fields do not say.

from __future__ import annotations

import math
import re
from dataclasses import dataclass, field

UNLIMITED = "unlimited"
MAX_PER_SECOND = 1_000_000
MAX_SECONDS = 7 * 86_400

_UNITS = {
    "s": 1,
    "sec": 1,
    "second": 1,
    "seconds": 1,
    "m": 60,  # as durations elsewhere in the CLI write it (--overlap 30m)
    "min": 60,
    "minute": 60,
    "minutes": 60,
    "h": 3600,
    "hour": 3600,
    "hours": 3600,
    "d": 86_400,
    "day": 86_400,
    "days": 86_400,
}
_RATE = re.compile(r"\s*(\d{1,10})\s*/\s*(\d{1,6})?\s*([A-Za-z]+)\s*")
# Largest unit first: the one a rate is written in.
_SHOWN = (("d", 86_400), ("h", 3600), ("min", 60), ("s", 1))


class RateError(ValueError):
    """A rate that cannot be read; the message says what is expected."""


@dataclass(frozen=True, slots=True)
class Rate:
    """``count`` requests in any ``seconds``, in a burst or spread out."""

    count: int
    seconds: int

    @classmethod
    def parse(cls, text: str) -> Rate | None:
        """Read ``N/PERIOD``; None for ``unlimited``."""
        if text.strip().lower() == UNLIMITED:
            return None
        match = _RATE.fullmatch(text)
        unit = _UNITS.get(match.group(3).lower()) if match else None
        if match is None or unit is None:
            raise RateError(
                f"{text!r} is not a rate: write N/PERIOD, e.g. 600/min, 20/10min, "
                "100/s, 5000/h, 1000/d, or unlimited"
            )
        count, seconds = int(match.group(1)), int(match.group(2) or 1) * unit
        if count < 1 or not 1 <= seconds <= MAX_SECONDS:
            raise RateError(
                f"{text!r}: the count must be at least 1 and the period from "
                "1 second to 7 days"
            )
        if count > MAX_PER_SECOND * seconds:
            raise RateError(
                f"{text!r}: at most {MAX_PER_SECOND:,} per second; "
                "write unlimited for no limit"
            )
        return cls(count, seconds)

    def __str__(self) -> str:
        for unit, length in _SHOWN:
            if self.seconds % length == 0:
                times = self.seconds // length
                return f"{self.count}/{'' if times == 1 else times}{unit}"
        raise AssertionError("every period is a whole number of seconds")


def describe(rate: Rate | None) -> str:
    """The rate as an operator writes it."""
    return UNLIMITED if rate is None else str(rate)


@dataclass(frozen=True, slots=True)
class Policy:
    """A named rate, with what the request path needs worked out once.

    Counting is the generic cell rate algorithm: each request moves the
    key's "theoretical arrival time" on by ``interval``, and a request is
    refused when that time would run more than ``window`` ahead of now. It
    allows ``count`` requests at once, then one every ``interval``.
    """

    name: str
    rate: Rate
    interval: float = field(init=False)
    window: float = field(init=False)
    header: bytes = field(init=False)
    """The ``RateLimit-Policy`` field value."""
    _prefix: bytes = field(init=False)

    def __post_init__(self) -> None:
        rate = self.rate
        set_ = object.__setattr__
        set_(self, "interval", rate.seconds / rate.count)
        set_(self, "window", float(rate.seconds))
        name = self.name.encode()
        set_(self, "header", b'"%s";q=%d;w=%d' % (name, rate.count, rate.seconds))
        set_(self, "_prefix", b'"%s";r=' % name)

    def state(self, remaining: int, window: float) -> bytes:
        """The ``RateLimit`` field value: ``remaining`` requests can be sent
        now, and no more than those within ``window`` seconds (rounded up,
        so the field never promises more than the counts allow)."""
        return b"%s%d;t=%d" % (self._prefix, remaining, math.ceil(window))


def retry_after(wait: float) -> int:
    """Whole seconds to wait, never 0: ``Retry-After`` takes no fractions,
    and a client told 0 would come straight back."""
    return max(1, math.ceil(wait))
