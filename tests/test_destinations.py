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


class Waiter:
    """A queued request: notes when it is let go (with no connection: it opens its own, which
    counts against the limit at once, as Exchange._open_connection counts its connect)."""

    def __init__(self, pool: Any) -> None:
        self.pool = pool
        self.woken: list[Any] = []

    def take_connection(self, conn: Any) -> None:
        self.woken.append(conn)
        self.pool.connections += 1


def test_new_limits_keep_the_breaker_and_wake_the_queue_that_fits() -> None:
    """Changed limits change the same breaker (a request gives its slot back to the breaker
    it took it from); raised to two connections, one of two queued requests goes."""
    registry = DestinationRegistry(RequestStats())
    pool = SimpleNamespace(connections=1, breaker=None, address="10.0.0.1:80")
    state = registry.configure("reviews", ConnectionPool(max_connections=1), None, (pool,),  # type: ignore[arg-type]
                               20, 10)
    first = state.breaker
    assert first is not None and pool.breaker is first and first.try_start()
    waiters = [Waiter(pool), Waiter(pool)]
    assert all(first.try_wait(w) for w in waiters)  # type: ignore[arg-type]
    raised = registry.configure("reviews", ConnectionPool(max_connections=2), None, (pool,),  # type: ignore[arg-type]
                                20, 10)
    assert raised.breaker is first and first.limits.max_connections == 2 and first.active == 1
    assert [w.woken for w in waiters] == [[None], []]  # the second waits: 1 open + 1 new


def test_removed_limits_leave_the_pools_and_let_every_queued_request_go() -> None:
    registry = DestinationRegistry(RequestStats())
    pool = SimpleNamespace(connections=1, breaker=None, address="10.0.0.1:80")
    state = registry.configure("reviews", ConnectionPool(max_connections=1), None, (pool,),  # type: ignore[arg-type]
                               20, 10)
    old = state.breaker
    assert old is not None
    waiters = [Waiter(pool), Waiter(pool)]
    assert all(old.try_wait(w) for w in waiters)  # type: ignore[arg-type]
    removed = registry.configure("reviews", None, None, (pool,), 20, 10)  # type: ignore[arg-type]
    assert removed.breaker is None
    assert pool.breaker is None and not old.pending
    assert [w.woken for w in waiters] == [[None], [None]]
