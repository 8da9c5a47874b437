"""The clock is a seam: tests replace it to make time-dependent decisions deterministic."""

from __future__ import annotations

import time
from typing import Protocol


class Clock(Protocol):
    def now(self) -> float:
        """Seconds since the epoch (wall clock, stored in the database)."""
        ...


class SystemClock:
    def now(self) -> float:
        return time.time()
