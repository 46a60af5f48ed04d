"""Per-destination state that outlives config pushes: breaker counts, waiters, ejections, budget,
when each endpoint was first seen (slow start).

Keyed by service name, and subset for a subset with policy fields of its own (a destination of
its own, as Envoy's subset cluster), so a new snapshot with the same destination keeps its
in-flight counts, its ejected endpoints and its retry budget.
"""

from __future__ import annotations

import asyncio
import time
from collections import deque
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from proxy.policy.outlier import OutlierDetector
from proxy.policy.retry_budget import RetryBudget
from proxy.policy.slowstart import NEVER

if TYPE_CHECKING:
    from meshctl.api.policy import ConnectionPool, OutlierDetection
    from proxy.config import Address
    from proxy.exchange import Exchange
    from proxy.metrics import RequestStats
    from proxy.pools import EndpointPool


class Breaker:
    """Connection-pool limits of one destination (Envoy's circuit breakers)."""

    __slots__ = ("active", "limits", "pending", "pools", "retrying", "starting")

    def __init__(self, limits: ConnectionPool) -> None:
        self.limits = limits
        self.active = 0
        self.retrying = 0  # requests being retried (maxRetries)
        self.pending: deque[Exchange] = deque()
        self.pools: tuple[EndpointPool, ...] = ()
        # Connect tasks created but not yet running (EndpointPool.connections counts the rest).
        self.starting: set[asyncio.Task[Any]] = set()

    def try_start(self) -> bool:
        if self.active >= self.limits.max_concurrent_requests:
            return False
        self.active += 1
        return True

    def finish(self) -> None:
        self.active -= 1

    def retries_full(self, ex: Exchange) -> bool:
        """Whether ``ex`` may not be retried now: maxRetries (Envoy's max_retries: requests
        being retried at once to the destination) are all taken by other requests."""
        limit = self.limits.max_retries
        return bool(limit) and ex._retry_slot is None and self.retrying >= limit

    def retry_started(self, ex: Exchange) -> None:
        """``ex`` is being retried: it holds a retry slot until a retry of it is answered
        (its response head taken) or it ends (one however many times it is retried)."""
        if self.limits.max_retries and ex._retry_slot is None:
            self.retrying += 1
            ex._retry_slot = self

    def retry_finished(self, ex: Exchange) -> None:
        ex._retry_slot = None
        self.retrying -= 1

    def connections_full(self) -> bool:
        opened = sum(p.connections for p in self.pools) + len(self.starting)
        return opened >= self.limits.max_connections

    def opening(self, task: asyncio.Task[Any]) -> None:
        """Count a connect task from its creation (also if it is cancelled before it runs)."""
        self.starting.add(task)
        task.add_done_callback(self.starting.discard)

    def started(self, task: asyncio.Task[Any] | None) -> None:
        """The task runs: from now on its pool's connection count includes it."""
        if task is not None:
            self.starting.discard(task)

    def try_wait(self, ex: Exchange) -> bool:
        """Queue a request for the next free connection, unless the queue is full."""
        if len(self.pending) >= self.limits.max_pending_requests:
            return False
        self.pending.append(ex)
        return True

    def cancel_wait(self, ex: Exchange) -> None:
        try:
            self.pending.remove(ex)
        except ValueError:
            pass

    def next_waiter(self) -> Exchange | None:
        return self.pending.popleft() if self.pending else None

    def waiter_for(self, pool: EndpointPool, http2: bool = False) -> Exchange | None:
        """The first queued request that may use a connection to ``pool`` (an endpoint of its
        backend, not ejected) of its protocol (``http2``: a stream on an HTTP/2 connection),
        taken off the queue; None if no queued request may."""
        for ex in self.pending:
            backend = ex.backend
            if ex.upstream_h2 is http2 and backend is not None and backend.serves(pool):
                self.pending.remove(ex)
                return ex
        return None

    def wake(self) -> None:
        """Limits raised: queued requests that fit now open their connection."""
        while self.pending and not self.connections_full():
            waiter = self.pending.popleft()
            waiter.take_connection(None)

    def retire(self) -> None:
        """Limits removed: the pools go without, and every queued request goes now."""
        for pool in self.pools:
            if pool.breaker is self:
                pool.breaker = None
        while self.pending:
            self.pending.popleft().take_connection(None)

    def close_idle(self) -> bool:
        """Close one idle connection of this destination to make room for a new one (to
        another endpoint); True if that left a free slot for the caller."""
        for pool in self.pools:
            if pool.idle:
                pool.idle.popleft().close()  # the coldest; its slot may go to an earlier waiter
                return not self.connections_full()
        return False


class DestinationState:
    """Everything stateful about one destination: a service, or a subset with its own policy."""

    __slots__ = ("arrivals", "breaker", "budget", "name", "outlier", "subset", "tcp_connections")

    def __init__(self, name: str, subset: str | None = None) -> None:
        self.name = name
        self.subset = subset
        self.breaker: Breaker | None = None
        self.outlier: OutlierDetector | None = None
        self.budget: RetryBudget | None = None
        # A TCP service's connections from this proxy, opening or open: what its
        # maxConnections caps (here, not on the Breaker, which a new limit replaces).
        self.tcp_connections = 0
        # When this proxy first saw each endpoint (the registry's clock); NEVER for those
        # there when the destination was first configured or had none (None: not yet
        # configured). Slow start (DestinationPolicy warmup) ramps the others.
        self.arrivals: dict[Address, float] | None = None

    def note_endpoints(self, addresses: set[Address], now: float) -> None:
        """The destination's endpoints in a new snapshot: a new one arrives ``now`` (unless the
        destination had none, when the first ones take every request anyway); one gone
        is forgotten, so if it comes back (its sidecar restarted, or ready again) it is new
        again, as Envoy's host that joins the cluster anew or passes its active health check.
        A return from an outlier ejection is no arrival: the endpoint never left the config."""
        arrivals = self.arrivals
        if not arrivals:  # new to this proxy, or it had no endpoint: nothing to ramp against
            self.arrivals = dict.fromkeys(addresses, NEVER)
            return
        for address in addresses:
            arrivals.setdefault(address, now)
        if len(arrivals) != len(addresses):
            for address in [a for a in arrivals if a not in addresses]:
                del arrivals[address]


class DestinationRegistry:
    """Holds DestinationState per service across snapshots and applies new settings to it."""

    def __init__(self, stats: RequestStats, clock: Callable[[], float] = time.monotonic) -> None:
        self.stats = stats
        self.clock = clock
        self._states: dict[tuple[str, str | None], DestinationState] = {}
        # The backends (service, route subset) in panic (minHealthPercent) as last computed:
        # across snapshots, so that a push during a panic does not count it again.
        self._panicking: set[tuple[str, str | None]] = set()
        # Each service's destination_service label where it is not its name: the snapshot
        # keys another namespace's `api` as `api` or `api.b`, its requests' label may be `api.a`
        self._labels: dict[str, str] = {}

    def panicked(self, name: str, subset: str | None, now: bool) -> None:
        """A backend's panic state as just computed: counts an entry into panic."""
        key = (name, subset)
        if not now:
            self._panicking.discard(key)
        elif key not in self._panicking:
            self._panicking.add(key)
            self.stats.inc("ami_outlier_panics",
                           (("destination_service", self._labels.get(name, name)),))

    def get(self, name: str, subset: str | None = None) -> DestinationState:
        """The state of service ``name``, or of its ``subset`` that is a destination of its
        own (the service's is apart)."""
        state = self._states.get((name, subset))
        if state is None:
            state = self._states[(name, subset)] = DestinationState(name, subset)
        return state

    def configure(self, name: str, pool_settings: ConnectionPool | None,
                  outlier: OutlierDetection | None, pools: tuple[EndpointPool, ...],
                  budget_percent: float, budget_min_per_second: float,
                  subset: str | None = None, label: str | None = None) -> DestinationState:
        """``label``: the service's destination_service label, when not ``name``."""
        if label is not None and label != name:
            self._labels[name] = label
        else:
            self._labels.pop(name, None)
        state = self.get(name, subset)
        state.note_endpoints({p.address for p in pools}, self.clock())
        breaker = state.breaker
        if pool_settings is None:
            if breaker is not None:
                state.breaker = None
                breaker.retire()
        else:
            if breaker is None:
                breaker = state.breaker = Breaker(pool_settings)
            breaker.pools = pools
            for pool in pools:
                pool.breaker = breaker
            if breaker.limits != pool_settings:
                # The same breaker, new limits: its in-flight counts and queue carry on (each
                # request gives its slot back to the breaker it took it from).
                breaker.limits = pool_settings
                breaker.wake()
        if outlier is None or not outlier.detects:
            state.outlier = None
        else:
            if state.outlier is None or getattr(state.outlier, "settings", None) != outlier:
                state.outlier = self._detector(name, outlier)
            state.outlier.set_endpoints(pools)
        # One retry budget per service, its subsets' own destinations included: a rule's
        # retries draw on its first backend's, which a split must not make depend on order.
        service = self.get(name)
        if not isinstance(service.budget, _Budget) or service.budget.settings != (
                budget_percent, budget_min_per_second):
            service.budget = _Budget(budget_percent, budget_min_per_second, self.clock)
        state.budget = service.budget
        return state

    def _detector(self, name: str, s: OutlierDetection) -> OutlierDetector:
        def ejected(pool: Any) -> None:
            # the endpoint's version: which side of a canary is being ejected
            self.stats.inc("ami_outlier_ejections",
                           (("destination_service", self._labels.get(name, name)),
                            ("destination_version", pool.version)))

        detector = _Detector(
            s.consecutive_5xx_errors, s.consecutive_gateway_errors, s.interval,
            s.base_ejection_time,
            s.max_ejection_percent, self.clock,
            consecutive_local_origin=(s.consecutive_local_origin_failures
                                      if s.split_external_local_origin_errors else None),
            on_ejection=ejected,
        )
        detector.settings = s
        return detector

    def ejected(self) -> dict[str, int]:
        """Ejected endpoints per destination: `reviews`, or `reviews/v2` for a subset's own."""
        return {n if sub is None else f"{n}/{sub}": s.outlier.ejected_count
                for (n, sub), s in self._states.items() if s.outlier}


class _Budget(RetryBudget):
    """A RetryBudget that remembers the settings it was built with."""

    def __init__(self, percent: float, min_per_second: float, clock: Callable[[], float]) -> None:
        super().__init__(percent=percent, min_per_second=min_per_second, clock=clock)
        self.settings: Any = (percent, min_per_second)


class _Detector(OutlierDetector):
    """An OutlierDetector that remembers the settings it was built with."""

    settings: Any = None
