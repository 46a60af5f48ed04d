"""A subset's own policy (DestinationPolicy subsets[] with policy fields) in a real proxy: its
own breaker, its own outlier detection and its own load balancer, apart from the service's."""

from __future__ import annotations

import asyncio
from collections import Counter
from collections.abc import Iterator
from typing import Any

import aiohttp
import pytest

from tests.proxyharness import Backends, eventually
from tests.traffic_backends import (
    TrafficBackend,
    TrafficProxy,
    call,
    endpoints,
    start_backend,
    started,
)

OWN_BREAKER = {"connectionPool": {"maxConnections": 1, "maxPendingRequests": 0}}
OWN_OUTLIERS = {"outlierDetection": {"consecutive5xxErrors": 1, "interval": "1s",
                                     "baseEjectionTime": "1m", "maxEjectionPercent": 50}}


def _subsets(**v2_policy: Any) -> list[dict[str, Any]]:
    return [{"name": "v1", "labels": {"version": "v1"}},
            {"name": "v2", "labels": {"version": "v2"}, "policy": v2_policy}]


def _split(host: str, service: str | None = None) -> dict[str, Any]:
    """A route sending half of the requests to subset v1, half to v2."""
    extra = {"service": service} if service else {}
    return {"host": host, "rules": [{"backends": [{"subset": "v1", "weight": 50, **extra},
                                                  {"subset": "v2", "weight": 50, **extra}]}]}


@pytest.fixture(scope="module")
def env(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    hub = Backends()
    gate = hub.call(_event())
    b: dict[str, TrafficBackend] = {
        "cb-v1": start_backend(hub, version="v1"),
        "cb-v2": start_backend(hub, version="v2", gate=gate),  # holds requests until told
        "ol-v1": start_backend(hub, version="v1", status=500),
        "ol-v2bad": start_backend(hub, version="v2", status=500),
        "ol-v2good": start_backend(hub, version="v2"),
        **{f"lb-{n}": start_backend(hub, version=n[:2]) for n in ("v1a", "v1b", "v2a", "v2b")},
    }
    services = {
        # The service's own limits: one connection, a long queue. v2's: one connection, no queue.
        "canary": {"endpoints": endpoints(b["cb-v1"], b["cb-v2"]),
                   "policy": {"connectionPool": {"maxConnections": 1,
                                                 "maxPendingRequests": 100}},
                   "subsets": _subsets(**OWN_BREAKER)},
        # No outlier detection for the service; v2 ejects after one 5xx.
        "olc": {"endpoints": endpoints(b["ol-v1"], b["ol-v2bad"], b["ol-v2good"]),
                "policy": {"loadBalancer": "ROUND_ROBIN"},
                "subsets": _subsets(**OWN_OUTLIERS)},
        # Sticky by user for the service; v2 round robin.
        "lb": {"endpoints": endpoints(*(b[f"lb-{n}"] for n in ("v1a", "v1b", "v2a", "v2b"))),
               "policy": {"loadBalancer": "CONSISTENT_HASH",
                          "consistentHash": {"header": "x-user"}},
               "subsets": _subsets(loadBalancer="ROUND_ROBIN")},
    }
    routes = [
        _split("canary"),
        _split("olc"),
        {"host": "olc-all", "rules": [{"backends": [{"service": "olc"}]}]},  # by no subset
        {"host": "lb", "rules": [
            {"matches": [{"headers": {"x-canary": {"exact": "1"}}}],
             "backends": [{"subset": "v2"}]},
            {"backends": [{"subset": "v1"}]}]},
    ]
    proxy = TrafficProxy(tmp_path_factory.mktemp("subset-policy"), services, routes)
    for p in started(proxy, hub):
        yield {"proxy": p, "hub": hub, "gate": gate, **b}


async def _event() -> asyncio.Event:
    return asyncio.Event()


async def test_canary_subset_overflows_on_its_own_breaker(
        env: dict[str, Any], session: aiohttp.ClientSession) -> None:
    """Half of 40 concurrent requests go to v2 (maxConnections 1, maxPendingRequests 0): one
    is served, the others get 503 `overflow` at once. v1's requests, under the service's
    limits (one connection, a long queue), are all served meanwhile: v2's held connection is
    not the service's."""
    proxy: TrafficProxy = env["proxy"]
    v1, v2 = env["cb-v1"], env["cb-v2"]
    n = 40
    tasks = [asyncio.create_task(call(session, proxy, "canary")) for _ in range(n)]
    try:  # every request answered but the one v2 holds
        await eventually(lambda: sum(t.done() for t in tasks) == n - 1 and v2.active == 1, 15)
    finally:
        env["hub"].loop.call_soon_threadsafe(env["gate"].set)
    replies = Counter((r.status, r.reason, r.version) for r in await asyncio.gather(*tasks))
    served_v1 = replies.pop((200, None, "v1"), 0)
    overflows = replies.pop((503, "overflow", None), 0)
    assert replies == {(200, None, "v2"): 1}
    assert overflows >= 1 and served_v1 + overflows == n - 1
    assert len(v1.requests) == served_v1 and (v2.connections, v2.max_active) == (1, 1)
    assert await proxy.metric("ami_circuit_breaker_overflow_total",
                              destination_service="canary") == overflows
    assert await proxy.metric("ami_requests_total", destination_service="canary",
                              destination_version="v2", response_flags="overflow") == overflows
    assert await proxy.metric("ami_requests_total", destination_service="canary",
                              destination_version="v1", response_flags="overflow") == 0


async def test_canary_subset_ejects_only_its_own_endpoints(
        env: dict[str, Any], session: aiohttp.ClientSession) -> None:
    """v2's outlier detection (one 5xx) ejects its failing endpoint for v2's traffic; v1's
    failing endpoint, under the service's policy (no outlier detection), keeps its traffic,
    and so does v2's failing endpoint for requests routed by no subset."""
    proxy: TrafficProxy = env["proxy"]
    v1, bad, good = env["ol-v1"], env["ol-v2bad"], env["ol-v2good"]
    replies = []
    while not bad.requests:  # v2 is round robin: its failing endpoint within 2 of its requests
        assert len(replies) < 100, "no request reached v2's failing endpoint"
        replies.append(await call(session, proxy, "olc"))
    after = [await call(session, proxy, "olc") for _ in range(30)]
    assert len(bad.requests) == 1, "v2's failing endpoint was not ejected"
    assert {(r.status, r.version) for r in after} <= {(500, "v1"), (200, "v2")}
    to_v1 = sum(r.version == "v1" for r in replies + after)
    assert to_v1 >= 1 and len(v1.requests) == to_v1  # never ejected
    assert len(good.requests) == sum(r.version == "v2" for r in replies + after) - 1
    assert await proxy.metric("ami_outlier_ejections_total", destination_service="olc",
                              destination_version="v2") == 1
    assert await proxy.metric("ami_outlier_ejections_total", destination_service="olc",
                              destination_version="v1") == 0
    # The service's own destination (round robin over all three) has ejected nothing.
    unrouted = [await call(session, proxy, "olc-all") for _ in range(3)]
    assert sorted((r.status, r.version) for r in unrouted) == [
        (200, "v2"), (500, "v1"), (500, "v2")]
    assert len(bad.requests) == 2


async def test_canary_subset_has_its_own_load_balancer(
        env: dict[str, Any], session: aiohttp.ClientSession) -> None:
    """The service hashes by `x-user` (one user, one endpoint); subset v2 sets ROUND_ROBIN, so
    the same user's requests routed to v2 alternate between its two endpoints."""
    proxy: TrafficProxy = env["proxy"]
    for _ in range(10):
        assert (await call(session, proxy, "lb", headers={"x-user": "alice"})).version == "v1"
        assert (await call(session, proxy, "lb", headers={"x-user": "alice",
                                                          "x-canary": "1"})).version == "v2"
    assert sorted(len(env[f"lb-{n}"].requests) for n in ("v1a", "v1b")) == [0, 10]
    assert [len(env[f"lb-{n}"].requests) for n in ("v2a", "v2b")] == [5, 5]
