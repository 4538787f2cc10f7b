"""The clock protocol. Core and leasing never read a clock directly.

Deadlines are judged by the *server's* clock inside the Lua scripts; a
simulation swaps in a virtual one. Worker-side code (the lease keeper) gets a
``MonotonicClock`` passed in, so the simulator can drive it too.
"""

from __future__ import annotations

import time
from typing import Protocol


class MonotonicClock(Protocol):
    """A worker's own monotonic clock, in milliseconds."""

    def now_ms(self) -> float: ...


class SystemMonotonicClock:
    """The real monotonic clock of this process."""

    def now_ms(self) -> float:
        return time.monotonic() * 1000.0  # clock: the one production implementation


class ManualClock:
    """A monotonic clock moved by hand (tests, simulations). ``rate`` models drift."""

    def __init__(self, start_ms: float = 0.0, rate: float = 1.0) -> None:
        self._now_ms = float(start_ms)
        self.rate = rate

    def now_ms(self) -> float:
        return self._now_ms

    def advance(self, delta_ms: float) -> None:
        """Move forward by ``delta_ms`` of true time, scaled by this clock's drift rate."""
        self._now_ms += delta_ms * self.rate
