"""Per-destination breaker state: limits, the waiting queue and connections being opened."""

from __future__ import annotations

import asyncio
from types import SimpleNamespace
from typing import Any

from meshctl.api.policy import ConnectionPool
from proxy.destinations import Breaker, DestinationRegistry
from proxy.metrics import RequestStats


def breaker(**limits: int) -> Breaker:
    return Breaker(ConnectionPool(**limits))


def test_concurrent_requests_are_capped_and_released() -> None:
    """try_start admits up to maxConcurrentRequests; finish frees a slot."""
    b = breaker(max_concurrent_requests=2)
    assert b.try_start() and b.try_start()
    assert not b.try_start()
    b.finish()
    assert b.try_start()


def test_waiting_queue_is_bounded_fifo_and_cancellable() -> None:
    """Waiters queue up to maxPendingRequests, leave in order, and can withdraw."""
    b = breaker(max_pending_requests=2)
    first, second, third = (SimpleNamespace(n=i) for i in range(3))
    assert b.try_wait(first) and b.try_wait(second)  # type: ignore[arg-type]
    assert not b.try_wait(third)  # type: ignore[arg-type]
    b.cancel_wait(first)  # type: ignore[arg-type]
    assert b.next_waiter() is second and b.next_waiter() is None


async def test_connections_being_opened_count_against_the_limit() -> None:
    """A connect task counts from creation, so a burst cannot open more than maxConnections."""
    b = breaker(max_connections=2)
    b.pools = (SimpleNamespace(connections=1),)  # type: ignore[assignment]
    assert not b.connections_full()
    task: asyncio.Task[Any] = asyncio.get_running_loop().create_task(asyncio.sleep(0))
    b.opening(task)
    assert b.connections_full()
    b.started(task)  # from now on the pool's own count includes it
    assert not b.connections_full()
    await task


def test_registry_keeps_state_across_pushes_and_drops_undeclared_layers() -> None:
    """Same limits keep the breaker (and its counts); no connectionPool removes the layer."""
    registry = DestinationRegistry(RequestStats())
    pools: tuple[Any, ...] = ()
    state = registry.configure("reviews", ConnectionPool(max_connections=1), None, pools, 20, 10)
    assert state.breaker is not None and state.breaker.try_start()
    again = registry.configure("reviews", ConnectionPool(max_connections=1), None, pools, 20, 10)
    assert again.breaker is state.breaker and again.breaker.active == 1
    assert registry.configure("reviews", None, None, pools, 20, 10).breaker is None
