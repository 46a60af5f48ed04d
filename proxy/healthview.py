"""Each destination's endpoints as they stand now (ejections, panic, warming, activity):
/config_dump."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable
from typing import Any

from proxy.policy.slowstart import NEVER, slow_start_factor


def health_view(backends: Iterable[Any],
                clock: Callable[[], float] = time.monotonic) -> dict[str, Any]:
    """Per destination (`reviews`, or `reviews/v2` for a subset with a policy of its own,
    whose ejections are its own): each endpoint its routes reach, with its `status`
    (HEALTHY or EJECTED), for an ejected one the seconds left and whether a panic threshold
    sends traffic to it all the same, for one in slow start (warmup) the seconds left and its
    weight now (percent), and its pool's in-flight requests and connections. Computed on
    read from the detectors and pools the requests use: nothing per request. ``clock``: the
    one the destinations' arrivals are on."""
    grouped: dict[str, list[Any]] = {}
    for backend in backends:
        state = backend.state
        if state is None:  # an outside host's: no destination state, no ejections
            continue
        name = state.name if state.subset is None else f"{state.name}/{state.subset}"
        grouped.setdefault(name, []).append(backend)
    view: dict[str, Any] = {}
    for name, members in sorted(grouped.items()):
        outlier = members[0].outlier
        pools: dict[str, Any] = {}
        for backend in members:  # a subset without a policy of its own: the service's state
            for pool in backend.pools:
                pools.setdefault(str(pool.address), pool)
        warmup = members[0].warmup
        if len(pools) < 2 or all(b.single is not None for b in members):
            warmup = None  # one endpoint takes every request: nothing to ramp, nothing to show
        arrivals = (members[0].state.arrivals or {}) if warmup is not None else {}
        now = clock()
        endpoints = []
        for address, pool in sorted(pools.items()):
            entry = _endpoint(address, pool, outlier, members)
            age = now - arrivals.get(pool.address, NEVER)
            if warmup is not None and age < warmup.duration:
                entry["warmingSeconds"] = round(warmup.duration - age, 1)
                entry["weightPercent"] = round(100 * slow_start_factor(
                    age, warmup.duration, warmup.minimum_percent, warmup.aggression), 1)
            endpoints.append(entry)
        view[name] = {"outlierDetection": outlier is not None, "endpoints": endpoints}
    return view


def _endpoint(address: str, pool: Any, outlier: Any, members: list[Any]) -> dict[str, Any]:
    entry: dict[str, Any] = {"address": address, "version": pool.version, "status": "HEALTHY"}
    left = outlier.ejection_left(pool) if outlier is not None else 0.0
    if left > 0:
        entry["status"] = "EJECTED"
        entry["ejectedSeconds"] = round(left, 1)
        # minHealthPercent: a priority level in panic balances over its ejected endpoints too
        entry["panic"] = any(b.panic is not None and pool in b.pools and b.panic.available(pool)
                             for b in members)
    entry["activeRequests"] = pool.active_requests
    entry["connections"] = pool.connections
    return entry
