"""One clock, passed in: epoch milliseconds for everything persisted."""

from __future__ import annotations

import time
from typing import Protocol


class Clock(Protocol):
    """Returns the wall-clock time in epoch milliseconds."""

    def __call__(self) -> int: ...


def system_clock() -> int:
    """The real wall clock, in epoch milliseconds."""
    return time.time_ns() // 1_000_000


class FakeClock:
    """A clock tests move by hand.

    Args:
        now_ms: the starting time in epoch milliseconds.
    """

    def __init__(self, now_ms: int = 1_767_000_000_000) -> None:
        self.now_ms = now_ms

    def __call__(self) -> int:
        return self.now_ms

    def advance(self, seconds: float) -> None:
        """Move the clock forward by ``seconds``."""
        self.now_ms += int(seconds * 1000)
