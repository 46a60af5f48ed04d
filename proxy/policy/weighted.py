"""Weighted choice of an index (route backends by weight) in O(log n) per pick."""

import bisect
import random
from itertools import accumulate


class WeightedPicker:
    """Picks index ``i`` with probability ``weights[i] / sum(weights)``; zero weights never.

    Built once per route (config change), so the cumulative table costs nothing per request;
    a single non-zero weight short-circuits without touching the RNG.
    """

    __slots__ = ("_cumulative", "_only", "_rng", "_total")

    def __init__(self, weights: tuple[int, ...], rng: random.Random) -> None:
        if any(w < 0 for w in weights):
            raise ValueError(f"weights must be >= 0, got {weights}")
        self._cumulative = tuple(accumulate(weights))
        self._total = self._cumulative[-1] if weights else 0
        if self._total == 0:
            raise ValueError("at least one weight must be > 0")
        nonzero = [i for i, w in enumerate(weights) if w]
        self._only = nonzero[0] if len(nonzero) == 1 else -1
        self._rng = rng

    def pick(self) -> int:
        """The index of the chosen weight."""
        if self._only >= 0:
            return self._only
        # bisect_right skips zero-weight slots: their cumulative value equals the previous one.
        # int(random() * total) is uniform on range(total) like randrange, at a third of the cost.
        return bisect.bisect_right(self._cumulative, int(self._rng.random() * self._total))
