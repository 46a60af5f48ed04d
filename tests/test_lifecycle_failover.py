"""An endpoint that refuses connections (its sidecar was stopped or killed, the config not yet
updated) costs the caller nothing: nothing was sent, so the request goes to another endpoint."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import aiohttp
import pytest

from tests.proxyharness import Backends
from tests.traffic_backends import (
    TrafficProxy,
    call,
    dead_endpoint,
    endpoints,
    start_backend,
    started,
)


@pytest.fixture(scope="module")
def env(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    hub = Backends()
    live = start_backend(hub, version="live")
    alone = start_backend(hub, version="alone")
    services = {
        # No retries declared anywhere: the failover is not a retry.
        "two": {"endpoints": [dead_endpoint("dead"), *endpoints(live)],
                "policy": {"loadBalancer": "ROUND_ROBIN"}},
        "alldead": {"endpoints": [dead_endpoint(), dead_endpoint()]},
        "single": {"endpoints": [dead_endpoint()]},
        "alone": {"endpoints": endpoints(alone)},
    }
    proxy = TrafficProxy(tmp_path_factory.mktemp("failover"), services, [])
    for p in started(proxy, hub):
        yield {"proxy": p, "live": live}


@pytest.mark.parametrize(("method", "data"), [("GET", None), ("POST", b"order=7"),
                                              ("POST", b"x" * 200_000)])
async def test_a_refused_connection_goes_to_another_endpoint(
        env: dict[str, Any], session: aiohttp.ClientSession, method: str,
        data: bytes | None) -> None:
    """Round robin over a dead and a live endpoint: every request, of every method and with a
    body, is answered by the live one, once; the failures show as connect failures, not retries."""
    proxy: TrafficProxy = env["proxy"]
    live = env["live"]
    before = len(live.requests)
    replies = [await call(session, proxy, "two", method=method, data=data) for _ in range(6)]
    assert [(r.status, r.version) for r in replies] == [(200, "live")] * 6, replies
    got = live.requests[before:]
    assert len(got) == 6
    assert all(r.first.startswith(method) and r.body == (data or b"") for r in got)
    assert await proxy.metric("ami_upstream_connect_failures_total",
                              destination_service="two") >= 3
    assert await proxy.metric("ami_retries_total", destination_service="two") == 0


@pytest.mark.parametrize("host", ["alldead", "single"])
async def test_with_no_endpoint_left_the_answer_is_upstream_connect_failure(
        env: dict[str, Any], session: aiohttp.ClientSession, host: str) -> None:
    """Every endpoint refusing: 503 upstream_connect_failure after at most one other try."""
    proxy: TrafficProxy = env["proxy"]
    reply = await call(session, proxy, host)
    assert (reply.status, reply.reason) == (503, "upstream_connect_failure")
    tries = 2 if host == "alldead" else 1
    assert await proxy.metric("ami_upstream_connect_failures_total",
                              destination_service=host) == tries
