"""Clocks for tests (the bot's clock is a seam, see bot/clock.py)."""

from __future__ import annotations

import time


class FakeClock:
    """Time that moves only when the test says so."""

    def __init__(self, now: float = 1000.0) -> None:
        self.t = now

    def now(self) -> float:
        return self.t

    def advance(self, seconds: float) -> None:
        self.t += seconds


class OffsetClock:
    """The wall clock, moved forward on demand (a week passes in a test)."""

    def __init__(self) -> None:
        self.offset = 0.0

    def now(self) -> float:
        return time.time() + self.offset
