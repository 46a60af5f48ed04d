"""Send times of an open-loop fixed-rate run: request i is due at start + i / rate."""

from __future__ import annotations

import math
from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class FixedRateSchedule:
    """A fixed request rate from `start` (clock seconds) for `total` requests."""

    start: float
    rate: float
    total: int

    def __post_init__(self) -> None:
        if self.rate <= 0:
            raise ValueError("rate must be positive")

    def time_of(self, index: int) -> float:
        """Scheduled send time of request `index` (0-based)."""
        return self.start + index / self.rate

    def due_count(self, now: float) -> int:
        """How many requests are due at `now` (scheduled time <= now), capped at `total`."""
        if now < self.start:
            return 0
        # The epsilon keeps a send whose time is exactly `now` from being lost to float rounding.
        return min(self.total, math.floor((now - self.start) * self.rate + 1e-9) + 1)
