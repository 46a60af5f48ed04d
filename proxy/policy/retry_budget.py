"""Retry budget (Finagle/Linkerd style): retries may add at most a percentage to request load."""

import math

from proxy.policy.clock import Clock


class RetryBudget:
    """Allows a retry while retries in the last ``ttl`` seconds stay within
    ``percent``% of the requests in that window plus ``min_per_second * ttl``.

    Call ``record_request()`` for every original request (not for retries) and
    ``try_withdraw()`` before every retry. Counts live in ``buckets`` time slots over the window
    (a ring of counters with running sums), so both calls are O(1) amortised and memory is fixed;
    the window is therefore between ``ttl * (1 - 1/buckets)`` and ``ttl`` long.
    """

    __slots__ = (
        "_clock",
        "_epoch",
        "_fraction",
        "_requests",
        "_requests_sum",
        "_reserve",
        "_retries",
        "_retries_sum",
        "_width",
        "exhausted_total",
    )

    def __init__(
        self,
        percent: float = 20.0,
        min_per_second: float = 10.0,
        ttl: float = 10.0,
        *,
        clock: Clock,
        buckets: int = 10,
    ) -> None:
        if percent < 0 or min_per_second < 0:
            raise ValueError("percent and min_per_second must be >= 0")
        if ttl <= 0 or buckets < 1:
            raise ValueError("ttl must be > 0 and buckets >= 1")
        self._clock = clock
        self._fraction = percent / 100.0
        self._reserve = min_per_second * ttl
        self._width = ttl / buckets
        self._requests = [0] * buckets
        self._retries = [0] * buckets
        self._requests_sum = 0
        self._retries_sum = 0
        self._epoch = math.floor(clock() / self._width)
        self.exhausted_total = 0  # retries refused: feeds the "budget exhausted" metric

    def _advance(self) -> int:
        """Zero the slots that fell out of the window; return the current slot index."""
        epoch = math.floor(self._clock() / self._width)
        n = len(self._requests)
        if epoch > self._epoch:
            for e in range(max(self._epoch + 1, epoch - n + 1), epoch + 1):
                i = e % n
                self._requests_sum -= self._requests[i]
                self._retries_sum -= self._retries[i]
                self._requests[i] = 0
                self._retries[i] = 0
            self._epoch = epoch
        return self._epoch % n

    def record_request(self) -> None:
        """Count one original request (it deposits ``percent``% of a retry)."""
        i = self._advance()
        self._requests[i] += 1
        self._requests_sum += 1

    def available(self) -> float:
        """How many more retries the budget allows right now (may be fractional)."""
        self._advance()
        allowed = self._fraction * self._requests_sum + self._reserve
        return max(0.0, allowed - self._retries_sum)

    def try_withdraw(self) -> bool:
        """Spend one retry if the budget allows it; count a refusal in ``exhausted_total``."""
        i = self._advance()
        if self._retries_sum + 1 > self._fraction * self._requests_sum + self._reserve:
            self.exhausted_total += 1
            return False
        self._retries[i] += 1
        self._retries_sum += 1
        return True
