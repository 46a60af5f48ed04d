"""Exponential backoff with full jitter (as Envoy's retry back-off)."""

import math
import random


class Backoff:
    """``delay(attempt)`` is uniform in ``[0, min(max, base * 2**attempt)]``.

    Attempt 0 is the first retry.

    Full jitter spreads retries of many clients that failed together, so they do not return
    in lockstep.
    """

    __slots__ = ("_base", "_max", "_rng", "_saturation")

    def __init__(self, base: float, max: float, rng: random.Random) -> None:
        if base <= 0 or max < base:
            raise ValueError(f"need 0 < base <= max, got base={base} max={max}")
        self._base = base
        self._max = max
        self._rng = rng
        # First attempt whose ceiling reaches max: beyond it, skip the (overflowing) power.
        self._saturation = math.ceil(math.log2(max / base))

    def ceiling(self, attempt: int) -> float:
        """Upper bound of the delay for ``attempt`` (before jitter)."""
        if attempt < 0:
            raise ValueError(f"attempt must be >= 0, got {attempt}")
        if attempt >= self._saturation:
            return self._max
        return min(self._max, math.ldexp(self._base, attempt))

    def delay(self, attempt: int) -> float:
        """Seconds to wait before retry number ``attempt`` (0-based)."""
        return self._rng.random() * self.ceiling(attempt)
