"""Inbound admission through a real proxy: authorization policies and the local rate limit."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from dataclasses import dataclass
from typing import Any

import aiohttp
import pytest

from proxy.config import Snapshot
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


@contextlib.asynccontextmanager
async def inbound_sidecar(first: Callable[[str], Snapshot]) -> AsyncIterator[InboundRun]:
    """An in-process sidecar's inbound listener in front of a recording app, ``first(app's
    address)`` applied; ``status()`` sends one GET for ratings through it."""
    from proxy.config import Address
    from proxy.server import ProxyOptions, ProxyServer
    from tests.traffic_backends import close_backends

    hub = Backends()
    app = start_backend(hub)
    server = ProxyServer(ProxyOptions(listeners={"inbound": Address("127.0.0.1", 0)}))
    try:
        server.apply(first(app.address))
        await server.start_listeners()
        url = f"http://127.0.0.1:{server.bound_address('inbound').port}/r"
        async with aiohttp.ClientSession() as session:

            async def status() -> int:
                async with session.get(url, headers={"Host": "ratings"}) as resp:
                    await resp.read()
                    return resp.status

            yield InboundRun(server, app, status)
    finally:
        await server.shutdown(deadline=1.0)
        close_backends(hub, [app])


@dataclass
class InboundRun:
    server: Any  # proxy.server.ProxyServer
    app: Any  # the recording backend
    status: Callable[[], Awaitable[int]]


def _limited(version: str, app: str, burst: int, node: dict[str, str] | None = None
             ) -> Snapshot:
    return Snapshot.from_dict({
        "version": version, "app": app, "mesh": {"mtls": "DISABLE"},
        "node": node or {"service": "ratings"},
        "inbound": {"rateLimit": {"requestsPerSecond": 0.01, "burst": burst}}})


async def test_rate_limit_bucket_survives_a_config_push() -> None:
    """A push (here: a new snapshot version with the same rate limit) does not refill the
    bucket: a drained limit stays drained, as a caller cannot be allowed a new burst each
    time something anywhere in the mesh changes."""
    async with inbound_sidecar(lambda app: _limited("rl-1", app, 2)) as run:
        address = run.app.address
        assert [await run.status() for _ in range(3)] == [200, 200, 429]
        run.server.apply(_limited("rl-2", address, 2))
        assert await run.status() == 429
        run.server.apply(_limited("rl-3", address, 1))  # a changed limit is a new bucket
        assert [await run.status() for _ in range(2)] == [200, 429]
        assert len(run.app.requests) == 3


async def test_rate_limit_bucket_survives_a_new_metrics_name() -> None:
    """A second namespace deploying a service of the same name renames this one's metrics
    (`ratings` -> `ratings.a`, the snapshot's node.metricsName): its rate limit is the same,
    so its drained bucket stays drained, as for any push that leaves the limit alone."""
    def node(metrics_name: str) -> dict[str, str]:
        return {"service": "ratings", "namespace": "a", "metricsName": metrics_name}

    async with inbound_sidecar(lambda app: _limited("rl-1", app, 2, node(""))) as run:
        assert [await run.status() for _ in range(3)] == [200, 200, 429]
        run.server.apply(_limited("rl-2", run.app.address, 2, node("ratings.a")))
        assert await run.status() == 429
        assert len(run.app.requests) == 2
        # counted under the new name
        assert run.server.stats.counters[
            ("ami_rate_limited", (("destination_service", "ratings.a"),))] == 1
