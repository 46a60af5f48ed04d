"""Tests for proxy.policy.retry_budget."""

import math

import pytest
from hypothesis import given
from hypothesis import strategies as st

from proxy.policy.retry_budget import RetryBudget
from tests.fakes import FakeClock


def test_reserve_allows_min_per_second_times_ttl_without_traffic() -> None:
    """With no requests, exactly min_per_second * ttl retries are allowed in a window."""
    budget = RetryBudget(percent=20.0, min_per_second=1.0, ttl=10.0, clock=FakeClock())
    assert [budget.try_withdraw() for _ in range(11)] == [True] * 10 + [False]
    assert budget.exhausted_total == 1


def test_requests_deposit_percent_of_a_retry() -> None:
    """With no reserve, 100 requests at 20% allow 20 retries and no more."""
    budget = RetryBudget(percent=20.0, min_per_second=0.0, ttl=10.0, clock=FakeClock())
    for _ in range(100):
        budget.record_request()
    assert budget.available() == pytest.approx(20.0)
    assert sum(budget.try_withdraw() for _ in range(30)) == 20
    assert budget.exhausted_total == 10


def test_zero_budget_never_retries() -> None:
    """percent=0 and min_per_second=0 refuse every retry."""
    budget = RetryBudget(percent=0.0, min_per_second=0.0, clock=FakeClock())
    budget.record_request()
    assert not budget.try_withdraw()


def test_old_retries_and_requests_leave_the_window() -> None:
    """After ttl seconds, spent retries (and old deposits) no longer count."""
    clock = FakeClock()
    budget = RetryBudget(percent=50.0, min_per_second=0.0, ttl=10.0, clock=clock)
    for _ in range(10):
        budget.record_request()
    assert sum(budget.try_withdraw() for _ in range(10)) == 5
    clock.advance(10.0)
    assert budget.available() == 0.0  # the deposits expired with the withdrawals
    budget.record_request()
    budget.record_request()
    assert budget.try_withdraw()
    assert not budget.try_withdraw()


def test_partial_window_keeps_recent_buckets() -> None:
    """Requests from the last few seconds still count while older ones expire."""
    clock = FakeClock(0.0)
    budget = RetryBudget(percent=100.0, min_per_second=0.0, ttl=10.0, clock=clock)
    budget.record_request()  # t=0
    clock.advance(5.0)
    budget.record_request()  # t=5
    clock.advance(5.5)  # t=10.5: the t=0 slot has left the window, the t=5 slot has not
    assert budget.available() == pytest.approx(1.0)


@given(
    events=st.lists(
        st.tuples(st.sampled_from(["req", "retry"]), st.floats(0.0, 3.0)), max_size=200
    ),
    percent=st.floats(0.0, 100.0),
    min_per_second=st.floats(0.0, 5.0),
)
def test_retries_in_window_never_exceed_budget(
    events: list[tuple[str, float]], percent: float, min_per_second: float
) -> None:
    """At each granted retry, window retries <= percent% of window requests + reserve."""
    ttl = 10.0
    clock = FakeClock(0.0)
    budget = RetryBudget(percent, min_per_second, ttl, clock=clock)
    requests: list[float] = []
    retries: list[float] = []
    for kind, gap in events:
        clock.advance(gap)
        if kind == "req":
            budget.record_request()
            requests.append(clock.now)
            continue
        if not budget.try_withdraw():
            continue
        retries.append(clock.now)
        # The window is the current 1 s slot plus the 9 before it (10 slots over ttl=10).
        start = (math.floor(clock.now) - 9) * 1.0
        window_retries = sum(1 for t in retries if t >= start)
        window_requests = sum(1 for t in requests if t >= start)
        assert window_retries <= percent / 100 * window_requests + min_per_second * ttl + 1e-9


def test_rejects_negative_parameters() -> None:
    """Negative percent or non-positive ttl are refused."""
    with pytest.raises(ValueError):
        RetryBudget(percent=-1.0, clock=FakeClock())
    with pytest.raises(ValueError):
        RetryBudget(ttl=0.0, clock=FakeClock())
