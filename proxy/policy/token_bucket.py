"""Token-bucket rate limiters: one bucket, and bounded per-key (per-source) buckets.

Design note: the request stack depends on the ``RateLimiter`` / ``KeyedRateLimiter`` protocols,
not on these classes, so a global (shared, e.g. Envoy-RLS-style) limiter can replace the local
one later. Such a limiter must still answer synchronously on the hot path, which it can do from
a locally cached quota lease refreshed in the background.
"""

from collections import OrderedDict
from collections.abc import Hashable
from typing import Protocol

from proxy.policy.clock import Clock

# Float slack so that waiting exactly ``retry_after()`` seconds is always enough.
_EPSILON = 1e-9


class RateLimiter(Protocol):
    """A limiter for one traffic stream."""

    def try_acquire(self) -> bool: ...

    def retry_after(self) -> float: ...


class KeyedRateLimiter(Protocol):
    """A limiter with one independent limit per key (e.g. per source identity)."""

    def try_acquire(self, key: Hashable) -> bool: ...

    def retry_after(self, key: Hashable) -> float: ...


class TokenBucket:
    """``rate_per_s`` tokens per second, at most ``burst`` saved up; starts full.

    Implemented as GCRA (one "theoretical arrival time" float instead of a token count and a
    timestamp): the same admissions as a token bucket, and an exact ``retry_after``.
    """

    __slots__ = ("_clock", "_interval", "_tat", "_tolerance")

    def __init__(self, rate_per_s: float, burst: float, clock: Clock) -> None:
        if rate_per_s <= 0:
            raise ValueError(f"rate_per_s must be > 0, got {rate_per_s}")
        if burst < 1:
            raise ValueError(f"burst must be >= 1, got {burst}")
        self._clock = clock
        self._interval = 1.0 / rate_per_s
        self._tolerance = (burst - 1) * self._interval
        self._tat = clock()  # time at which the bucket is full again

    def try_acquire(self) -> bool:
        """Take one token if one is available."""
        now = self._clock()
        tat = self._tat if self._tat > now else now
        if tat - now > self._tolerance + _EPSILON:
            return False
        self._tat = tat + self._interval
        return True

    def retry_after(self) -> float:
        """Seconds until ``try_acquire`` would succeed (0.0 if it would now)."""
        wait = self._tat - self._clock() - self._tolerance
        return wait if wait > _EPSILON else 0.0


class KeyedTokenBuckets:
    """One ``TokenBucket`` per key, at most ``max_keys`` of them (least recently used evicted).

    Evicting a drained bucket forgives its debt; with ``max_keys`` well above the number of
    active sources that only happens to sources idle for long, whose bucket would be full anyway.
    """

    __slots__ = ("_buckets", "_burst", "_clock", "_max_keys", "_rate")

    def __init__(self, rate: float, burst: float, clock: Clock, max_keys: int = 10000) -> None:
        if max_keys < 1:
            raise ValueError(f"max_keys must be >= 1, got {max_keys}")
        TokenBucket(rate, burst, clock)  # validate the parameters once, eagerly
        self._rate = rate
        self._burst = burst
        self._clock = clock
        self._max_keys = max_keys
        self._buckets: OrderedDict[Hashable, TokenBucket] = OrderedDict()

    def __len__(self) -> int:
        return len(self._buckets)

    def try_acquire(self, key: Hashable) -> bool:
        """Take one token from ``key``'s bucket, creating it (full) if needed."""
        bucket = self._buckets.get(key)
        if bucket is None:
            if len(self._buckets) >= self._max_keys:
                self._buckets.popitem(last=False)
            bucket = self._buckets[key] = TokenBucket(self._rate, self._burst, self._clock)
        else:
            self._buckets.move_to_end(key)
        return bucket.try_acquire()

    def retry_after(self, key: Hashable) -> float:
        """Seconds until ``key`` may acquire; 0.0 for an unknown key (its bucket would be full)."""
        bucket = self._buckets.get(key)
        return 0.0 if bucket is None else bucket.retry_after()
