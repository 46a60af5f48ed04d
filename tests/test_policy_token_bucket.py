"""Tests for proxy.policy.token_bucket."""

import pytest
from hypothesis import given
from hypothesis import strategies as st

from proxy.policy.token_bucket import KeyedTokenBuckets, TokenBucket
from tests.fakes import FakeClock


def test_starts_full_and_allows_exactly_burst() -> None:
    """A new bucket admits ``burst`` requests at once and refuses the next."""
    clock = FakeClock()
    bucket = TokenBucket(10.0, 5, clock)
    assert [bucket.try_acquire() for _ in range(6)] == [True] * 5 + [False]


def test_refills_at_rate() -> None:
    """After draining, one token comes back every 1/rate seconds."""
    clock = FakeClock()
    bucket = TokenBucket(4.0, 1, clock)
    assert bucket.try_acquire()
    clock.advance(0.24)
    assert not bucket.try_acquire()
    clock.advance(0.01)
    assert bucket.try_acquire()
    assert not bucket.try_acquire()


def test_refill_is_capped_at_burst() -> None:
    """A long idle period saves up at most ``burst`` tokens."""
    clock = FakeClock()
    bucket = TokenBucket(100.0, 3, clock)
    clock.advance(3600)
    assert [bucket.try_acquire() for _ in range(4)] == [True, True, True, False]


def test_retry_after_is_zero_when_available_and_exact_when_empty() -> None:
    """retry_after is 0 with tokens left and the time to the next token when empty."""
    clock = FakeClock()
    bucket = TokenBucket(2.0, 1, clock)
    assert bucket.retry_after() == 0.0
    bucket.try_acquire()
    assert bucket.retry_after() == pytest.approx(0.5)
    clock.advance(0.2)
    assert bucket.retry_after() == pytest.approx(0.3)


@given(
    rate=st.floats(0.1, 1e4),
    burst=st.integers(1, 50),
    steps=st.lists(st.floats(0.0, 2.0), max_size=40),
)
def test_waiting_retry_after_always_suffices(rate: float, burst: int, steps: list[float]) -> None:
    """Whatever happened before, waiting retry_after() seconds makes try_acquire succeed."""
    clock = FakeClock()
    bucket = TokenBucket(rate, burst, clock)
    for step in steps:
        clock.advance(step)
        bucket.try_acquire()
    while bucket.try_acquire():
        pass
    wait = bucket.retry_after()
    assert wait > 0
    clock.advance(wait)
    assert bucket.try_acquire()


@given(rate=st.floats(1.0, 1000.0), burst=st.integers(1, 20), seconds=st.floats(0.0, 10.0))
def test_admissions_never_exceed_burst_plus_rate_times_time(
    rate: float, burst: int, seconds: float
) -> None:
    """Over any span, admissions stay within burst + rate * elapsed (checked at fine steps)."""
    clock = FakeClock()
    bucket = TokenBucket(rate, burst, clock)
    admitted = 0
    step = 1.0 / (4 * rate)
    elapsed = 0.0
    while elapsed <= seconds:
        while bucket.try_acquire():
            admitted += 1
        clock.advance(step)
        elapsed += step
    assert admitted <= burst + rate * elapsed + 1e-6


def test_rejects_nonsense_parameters() -> None:
    """A zero rate or a burst below one is refused at construction."""
    with pytest.raises(ValueError):
        TokenBucket(0.0, 1, FakeClock())
    with pytest.raises(ValueError):
        TokenBucket(1.0, 0.5, FakeClock())


def test_keyed_buckets_are_independent() -> None:
    """Draining one key's bucket does not affect another key."""
    clock = FakeClock()
    buckets = KeyedTokenBuckets(1.0, 1, clock)
    assert buckets.try_acquire("a")
    assert not buckets.try_acquire("a")
    assert buckets.try_acquire("b")
    assert buckets.retry_after("a") == pytest.approx(1.0)
    assert buckets.retry_after("never-seen") == 0.0


def test_keyed_buckets_evict_least_recently_used() -> None:
    """Past max_keys, the least recently used key is evicted (and comes back full)."""
    clock = FakeClock()
    buckets = KeyedTokenBuckets(1.0, 1, clock, max_keys=2)
    buckets.try_acquire("a")
    buckets.try_acquire("b")
    buckets.try_acquire("a")  # "a" is now more recent than "b"
    buckets.try_acquire("c")  # evicts "b"
    assert len(buckets) == 2
    assert buckets.retry_after("b") == 0.0
    assert buckets.retry_after("a") > 0
    assert not buckets.try_acquire("a")
