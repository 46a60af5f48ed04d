"""Inbound admission through a real proxy: authorization policies and the local rate limit."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from typing import Any

import aiohttp
import pytest

from tests.proxyharness import Backends
from tests.traffic_backends import (
    Reply,
    TrafficBackend,
    TrafficProxy,
    call,
    start_backend,
    started,
)

AUTHZ = [{"action": "ALLOW", "rules": [{"to": [{"paths": ["/public/*"], "methods": ["GET"]}]}]}]


@pytest.fixture(scope="module")
def env(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    hub = Backends()
    app = start_backend(hub)
    proxy = TrafficProxy(tmp_path_factory.mktemp("inbound"), {}, [], app=app.address,
                         node={"service": "ratings", "labels": {"version": "v1"}},
                         inbound={"authorization": AUTHZ,
                                  "rateLimit": {"requestsPerSecond": 0.5, "burst": 3}})
    for p in started(proxy, hub):
        yield {"proxy": p, "app": app}


@pytest.fixture(scope="module")
def slow_limit(tmp_path_factory: pytest.TempPathFactory) -> Iterator[TrafficProxy]:
    """A proxy whose inbound bucket holds 3 and refills one token per 100 s."""
    hub = Backends()
    app = start_backend(hub)
    proxy = TrafficProxy(tmp_path_factory.mktemp("slow-limit"), {}, [], app=app.address,
                         node={"service": "ratings", "labels": {"version": "v1"}},
                         inbound={"rateLimit": {"requestsPerSecond": 0.01, "burst": 3}})
    yield from started(proxy, hub)


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


async def test_rate_limit_answers_429_with_retry_after(slow_limit: TrafficProxy,
                                                       session: aiohttp.ClientSession) -> None:
    """Past the burst of 3, requests get 429 `rate_limited` + retry-after. The bucket refills
    once per 100 s, so no run is slow enough to see a refill: the counts are exact."""
    replies = [await call(session, slow_limit, "ratings", "/public/r", listener="inbound")
               for _ in range(10)]
    assert [r.status for r in replies] == [200] * 3 + [429] * 7
    limited = replies[3:]
    # retry-after: whole seconds until the next token, at least 1, at most one refill (100 s).
    assert all(r.reason == "rate_limited" and 1 <= int(r.headers["retry-after"]) <= 100
               for r in limited), [r.headers for r in limited]
    assert await slow_limit.metric("ami_rate_limited_total", destination_service="ratings") == 7


async def test_rate_limit_retry_after_is_honest(env: dict[str, Any],
                                                session: aiohttp.ClientSession) -> None:
    """A client that honours retry-after gets through then: its value is honest (a token per
    2 s makes it 1 or 2 s, so a halved value is caught). Rounds of 10 concurrent requests
    drain the bucket (burst 3); the request after a round, refused, says how long to wait
    (nothing admitted after it moves the next token further away). Waiting longer than told,
    as a loaded machine may, only refills more: no bound on any time."""
    proxy: TrafficProxy = env["proxy"]
    before = await proxy.metric("ami_rate_limited_total", destination_service="ratings")
    limited: list[Reply] = []
    for _ in range(20):  # a deadline in rounds: a round refuses unless it takes 6 s
        drained = await asyncio.gather(*(
            call(session, proxy, "ratings", "/public/r", listener="inbound")
            for _ in range(10)))
        probe = await call(session, proxy, "ratings", "/public/r", listener="inbound")
        replies = [*drained, probe]
        assert {r.status for r in replies} <= {200, 429}, [r.status for r in replies]
        limited += [r for r in replies if r.status == 429]
        if probe.status == 429:
            break
    assert probe.status == 429, "the bucket refilled after every round"
    assert all(r.reason == "rate_limited" and int(r.headers["retry-after"]) >= 1
               for r in limited)
    await asyncio.sleep(int(probe.headers["retry-after"]))  # the client's pace, as told
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


async def test_rate_limit_bucket_survives_a_new_metrics_name() -> None:
    """A second namespace deploying a service of the same name renames this one's metrics
    (`ratings` -> `ratings.a`, the snapshot's node.metricsName): its rate limit is the same,
    so its drained bucket stays drained, as for any push that leaves the limit alone."""
    from proxy.config import Address, Snapshot
    from proxy.server import ProxyOptions, ProxyServer
    from tests.traffic_backends import close_backends

    hub = Backends()
    app = start_backend(hub)

    def snapshot(version: int, metrics_name: str) -> Snapshot:
        return Snapshot.from_dict({
            "version": f"rl-{version}", "app": app.address, "mesh": {"mtls": "DISABLE"},
            "node": {"service": "ratings", "namespace": "a", "metricsName": metrics_name},
            "inbound": {"rateLimit": {"requestsPerSecond": 0.01, "burst": 2}}})

    server = ProxyServer(ProxyOptions(listeners={"inbound": Address("127.0.0.1", 0)}))
    try:
        server.apply(snapshot(1, ""))
        await server.start_listeners()
        url = f"http://127.0.0.1:{server.bound_address('inbound').port}/r"
        async with aiohttp.ClientSession() as session:

            async def status() -> int:
                async with session.get(url, headers={"Host": "ratings"}) as resp:
                    await resp.read()
                    return resp.status

            assert [await status() for _ in range(3)] == [200, 200, 429]
            server.apply(snapshot(2, "ratings.a"))
            assert await status() == 429
        assert len(app.requests) == 2
        # counted under the new name
        assert server.stats.counters[
            ("ami_rate_limited", (("destination_service", "ratings.a"),))] == 1
    finally:
        await server.shutdown(deadline=1.0)
        close_backends(hub, [app])
