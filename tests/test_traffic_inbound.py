"""Inbound admission through a real proxy: authorization policies and the local rate limit."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Iterator
from typing import Any

import aiohttp
import pytest

from tests.proxyharness import Backends
from tests.traffic_backends import TrafficBackend, TrafficProxy, call, start_backend, started

AUTHZ = [{"action": "ALLOW", "rules": [{"to": [{"paths": ["/public/*"], "methods": ["GET"]}]}]}]


@pytest.fixture(scope="module")
def env(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    hub = Backends()
    app = start_backend(hub)
    proxy = TrafficProxy(tmp_path_factory.mktemp("inbound"), {}, [], app=app.address,
                         node={"service": "ratings", "labels": {"version": "v1"}},
                         inbound={"authorization": AUTHZ,
                                  "rateLimit": {"requestsPerSecond": 2, "burst": 3}})
    for p in started(proxy, hub):
        yield {"proxy": p, "app": app}


@pytest.fixture
async def session() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as s:
        yield s


async def test_authorization_denies_with_403(env: dict[str, Any],
                                             session: aiohttp.ClientSession) -> None:
    """Only what an ALLOW rule matches reaches the app; the rest gets 403 `not_authorized`."""
    proxy: TrafficProxy = env["proxy"]
    app: TrafficBackend = env["app"]
    denied = await call(session, proxy, "ratings", "/private", listener="inbound")
    assert (denied.status, denied.reason) == (403, "not_authorized")
    wrong_method = await call(session, proxy, "ratings", "/public/a", method="DELETE",
                              listener="inbound")
    assert wrong_method.status == 403
    assert app.requests == []
    allowed = await call(session, proxy, "ratings", "/public/a", listener="inbound")
    assert allowed.status == 200 and len(app.requests) == 1
    assert await proxy.metric("ami_authorization_denied_total",
                              destination_service="ratings") == 2


async def test_rate_limit_answers_429_with_retry_after(env: dict[str, Any],
                                                       session: aiohttp.ClientSession) -> None:
    """Past the burst of 3 at 2/s, requests get 429 `rate_limited` + retry-after, then recover."""
    proxy: TrafficProxy = env["proxy"]
    before = await proxy.metric("ami_rate_limited_total", destination_service="ratings")
    replies = [await call(session, proxy, "ratings", "/public/r", listener="inbound")
               for _ in range(10)]
    statuses = [r.status for r in replies]
    limited = [r for r in replies if r.status == 429]
    assert statuses.count(200) <= 4 and len(limited) >= 6, statuses
    assert all(r.reason == "rate_limited" and int(r.headers["retry-after"]) >= 1
               for r in limited)
    # A client that honours retry-after gets through then: its value is honest. (Waiting
    # longer, as a loaded machine may, only refills more: no upper bound on any time.)
    await asyncio.sleep(int(limited[-1].headers["retry-after"]))  # the client's pace, as told
    assert (await call(session, proxy, "ratings", "/public/r", listener="inbound")).status == 200
    assert await proxy.metric("ami_rate_limited_total", destination_service="ratings") == (
        before + len(limited))


async def test_rate_limit_bucket_survives_a_config_push() -> None:
    """A push (here: a new snapshot version with the same rate limit) does not refill the
    bucket: a drained limit stays drained, as a caller cannot be allowed a new burst each
    time something anywhere in the mesh changes."""
    from proxy.config import Address, Snapshot
    from proxy.server import ProxyOptions, ProxyServer
    from tests.traffic_backends import close_backends

    hub = Backends()
    app = start_backend(hub)

    def snapshot(version: int) -> Snapshot:
        return Snapshot.from_dict({
            "version": f"rl-{version}", "node": {"service": "ratings"}, "app": app.address,
            "mesh": {"mtls": "DISABLE"},
            "inbound": {"rateLimit": {"requestsPerSecond": 0.01, "burst": 2}}})

    server = ProxyServer(ProxyOptions(listeners={"inbound": Address("127.0.0.1", 0)}))
    try:
        server.apply(snapshot(1))
        await server.start_listeners()
        url = f"http://127.0.0.1:{server.bound_address('inbound').port}/r"
        async with aiohttp.ClientSession() as session:

            async def status() -> int:
                async with session.get(url, headers={"Host": "ratings"}) as resp:
                    await resp.read()
                    return resp.status

            assert [await status() for _ in range(3)] == [200, 200, 429]
            server.apply(snapshot(2))
            assert await status() == 429
            server.apply(Snapshot.from_dict({  # a changed limit is a new bucket
                "version": "rl-3", "node": {"service": "ratings"}, "app": app.address,
                "mesh": {"mtls": "DISABLE"},
                "inbound": {"rateLimit": {"requestsPerSecond": 0.01, "burst": 1}}}))
            assert [await status() for _ in range(2)] == [200, 429]
        assert len(app.requests) == 3
    finally:
        await server.shutdown(deadline=1.0)
        close_backends(hub, [app])
