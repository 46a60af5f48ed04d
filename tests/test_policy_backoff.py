"""Tests for proxy.policy.backoff."""

import random

import pytest
from hypothesis import given
from hypothesis import strategies as st

from proxy.policy.backoff import Backoff


def test_ceiling_doubles_until_max() -> None:
    """The jitter ceiling is base * 2**attempt, capped at max."""
    backoff = Backoff(0.025, 0.25, random.Random(1))
    assert [backoff.ceiling(a) for a in range(6)] == pytest.approx(
        [0.025, 0.05, 0.1, 0.2, 0.25, 0.25]
    )


def test_huge_attempt_does_not_overflow() -> None:
    """A very large attempt number yields max instead of an overflow."""
    backoff = Backoff(1e-9, 30.0, random.Random(1))
    assert backoff.ceiling(10_000) == 30.0


@given(
    base=st.floats(1e-4, 1.0),
    factor=st.floats(1.0, 1000.0),
    attempt=st.integers(0, 200),
    seed=st.integers(0, 2**32),
)
def test_delay_is_within_zero_and_ceiling(
    base: float, factor: float, attempt: int, seed: int
) -> None:
    """Every delay lies in [0, min(max, base * 2**attempt)]."""
    backoff = Backoff(base, base * factor, random.Random(seed))
    delay = backoff.delay(attempt)
    assert 0.0 <= delay <= min(base * factor, base * 2.0 ** min(attempt, 1000))


def test_delays_are_jittered_over_the_whole_range() -> None:
    """Full jitter: delays spread over [0, ceiling], mean about half the ceiling."""
    backoff = Backoff(0.1, 1.0, random.Random(7))
    delays = [backoff.delay(3) for _ in range(10_000)]  # ceiling 0.8
    assert min(delays) < 0.01
    assert max(delays) > 0.79
    assert sum(delays) / len(delays) == pytest.approx(0.4, abs=0.02)


def test_rejects_bad_parameters() -> None:
    """A non-positive base, max below base, or a negative attempt are refused."""
    with pytest.raises(ValueError):
        Backoff(0.0, 1.0, random.Random())
    with pytest.raises(ValueError):
        Backoff(2.0, 1.0, random.Random())
    with pytest.raises(ValueError):
        Backoff(0.1, 1.0, random.Random()).delay(-1)
