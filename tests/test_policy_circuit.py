"""Tests for proxy.policy.circuit."""

import pytest
from hypothesis import given
from hypothesis import strategies as st

from proxy.policy.circuit import Circuit, ConnectionPoolLimits


def test_requests_over_the_limit_overflow() -> None:
    """Past max_concurrent_requests a start is refused and counted until one finishes."""
    circuit = Circuit(ConnectionPoolLimits(max_concurrent_requests=2))
    assert circuit.try_start_request()
    assert circuit.try_start_request()
    assert not circuit.try_start_request()
    assert circuit.request_overflow == 1
    circuit.finish_request()
    assert circuit.try_start_request()
    assert circuit.overflow_total == 1


def test_pending_queue_limit() -> None:
    """Past max_pending a queued request is refused; dequeuing frees a slot."""
    circuit = Circuit(ConnectionPoolLimits(max_pending=1))
    assert circuit.try_queue_pending()
    assert not circuit.try_queue_pending()
    circuit.dequeue_pending()
    assert circuit.try_queue_pending()
    assert circuit.pending_overflow == 1


def test_connection_limit_and_total() -> None:
    """Connection refusals are counted separately and in overflow_total."""
    circuit = Circuit(ConnectionPoolLimits(max_connections=0, max_pending=0))
    assert not circuit.try_open_connection()
    assert not circuit.try_queue_pending()
    assert (circuit.connection_overflow, circuit.pending_overflow) == (1, 1)
    assert circuit.overflow_total == 2


def test_requests_per_connection() -> None:
    """A connection is exhausted at max_requests_per_connection; 0 means never."""
    assert Circuit(ConnectionPoolLimits(max_requests_per_connection=3)).connection_exhausted(3)
    assert not Circuit(ConnectionPoolLimits(max_requests_per_connection=3)).connection_exhausted(2)
    assert not Circuit(ConnectionPoolLimits()).connection_exhausted(10**6)


def test_release_without_acquire_raises() -> None:
    """Releasing more than was taken is a bug and raises instead of drifting."""
    circuit = Circuit(ConnectionPoolLimits())
    with pytest.raises(RuntimeError):
        circuit.finish_request()
    with pytest.raises(RuntimeError):
        circuit.dequeue_pending()
    with pytest.raises(RuntimeError):
        circuit.close_connection()


def test_limits_are_validated() -> None:
    """Negative limits are refused."""
    with pytest.raises(ValueError):
        ConnectionPoolLimits(max_connections=-1)


@given(limit=st.integers(0, 20), ops=st.lists(st.booleans(), max_size=100))
def test_active_never_exceeds_limit(limit: int, ops: list[bool]) -> None:
    """Whatever the start/finish order, active requests stay within [0, limit]."""
    circuit = Circuit(ConnectionPoolLimits(max_concurrent_requests=limit))
    refused = 0
    for start in ops:
        if start:
            refused += not circuit.try_start_request()
        elif circuit.active_requests:
            circuit.finish_request()
        assert 0 <= circuit.active_requests <= limit
    assert circuit.request_overflow == refused
