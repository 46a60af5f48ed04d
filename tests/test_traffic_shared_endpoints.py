"""An endpoint address listed under several services (or ExternalService hosts), with a real proxy.

Each destination (a service, a subset with a policy of its own, an ExternalService host) has
pools of its own, as Envoy's clusters have: its circuit breaker, its queue and its connection
count are its own, and so is the version label of its endpoints, whatever other destination
lists the same address. Connections are still reused within a destination.
"""

from __future__ import annotations

import asyncio
import signal
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import yaml

from tests.proxyharness import Backends, RawBackend, eventually, metric_value, read_request
from tests.traffic_backends import TrafficProxy, call, close_backends

LIMITED = {"connectionPool": {"maxConnections": 1, "maxPendingRequests": 1}}


class Shared:
    """One raw backend: `/hold` waits for ``release()``, `/slow` answers after 0.3 s, anything
    else at once; every answer says `x-version: shared`."""

    def __init__(self, hub: Backends) -> None:
        self.hub = hub
        self.gate = hub.call(self._event())
        self.active = 0
        self.closed = 0  # connections the proxy closed
        self.raw = hub.raw(self._handle)

    @staticmethod
    async def _event() -> asyncio.Event:
        return asyncio.Event()

    async def _handle(self, raw: RawBackend, reader: asyncio.StreamReader,
                      writer: asyncio.StreamWriter) -> None:
        while (req := await read_request(reader)) is not None:
            raw.requests.append(req)
            self.active += 1
            try:
                if req.target.startswith("/hold"):
                    await self.gate.wait()
                elif req.target.startswith("/slow"):
                    await asyncio.sleep(0.3)
            finally:
                self.active -= 1
            writer.write(b"HTTP/1.1 200 OK\r\nx-version: shared\r\nContent-Length: 2\r\n\r\nok")
            await writer.drain()
        self.closed += 1

    def arm(self) -> None:
        """From now on `/hold` requests wait for the next ``release()``."""
        self.gate = self.hub.call(self._event())

    def release(self) -> None:
        self.hub.loop.call_soon_threadsafe(self.gate.set)

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.raw.port}"

    @property
    def connections(self) -> int:
        return self.raw.accepted


def _services(shared: Shared) -> dict[str, Any]:
    """`cb` (one connection, a queue of one) first; the others, listing the same address with
    other versions, come after it and two of them have limits of their own."""
    def service(version: str, **policy: Any) -> dict[str, Any]:
        svc: dict[str, Any] = {"endpoints": [{"address": shared.address,
                                              "labels": {"version": version}}]}
        if policy:
            svc["policy"] = policy
        return svc

    return {
        "cb": service("v1", **LIMITED),
        "cbc": service("v2"),
        "cbo": service("v3", connectionPool={"maxConnections": 50, "maxPendingRequests": 50}),
        "cb2": service("v4", connectionPool={"maxConnections": 20, "maxPendingRequests": 20}),
    }


@pytest.fixture(scope="module")
def env(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    hub = Backends()
    shared = Shared(hub)
    tmp = Path(tmp_path_factory.mktemp("shared"))
    proxy = TrafficProxy(tmp, _services(shared), [])
    config = yaml.safe_load(proxy.config.read_text())
    # Two ExternalService hosts with the same endpoint; `one.example.test` allows one
    # connection and no queue.
    port = {"number": shared.raw.port, "protocol": "HTTP"}
    config["external"] = {
        "one.example.test": {"ports": [port], "endpoints": ["127.0.0.1"],
                             "policy": {"connectionPool": {"maxConnections": 1,
                                                           "maxPendingRequests": 0}}},
        "many.example.test": {"ports": [port], "endpoints": ["127.0.0.1"],
                              "policy": {"connectionPool": {"maxConnections": 10,
                                                            "maxPendingRequests": 10}}},
    }
    proxy.config.write_text(yaml.safe_dump(config))
    try:
        proxy.start()
        yield {"proxy": proxy, "shared": shared}
    finally:
        proxy.stop()
        shared.release()
        close_backends(hub, [])


async def test_a_request_queued_by_one_service_is_answered(
        env: dict[str, Any], session: aiohttp.ClientSession) -> None:
    """Two concurrent requests to `cb` (one connection, a queue of one): the second waits for
    the first's connection and is answered on it, although services configured after `cb` list
    the same endpoint with breakers of their own."""
    proxy: TrafficProxy = env["proxy"]
    replies = await asyncio.gather(*(call(session, proxy, "cb", "/slow", timeout=5)
                                     for _ in range(2)))
    assert [r.status for r in replies] == [200, 200]
    stats = await proxy.stats()
    mine = [p for p in stats["upstream_pools"] if p.get("service") == "cb"]
    assert [(p["connections"], p["active_requests"]) for p in mine] == [(1, 0)]


async def test_each_service_shows_its_own_version_for_a_shared_address(
        env: dict[str, Any], session: aiohttp.ClientSession) -> None:
    """/stats lists a pool per service for the one address, each with its service's version,
    and the requests' `destination_version` is the version the called service gives it."""
    proxy: TrafficProxy = env["proxy"]
    shared: Shared = env["shared"]
    for host in ("cb", "cbc", "cbo", "cb2"):
        assert (await call(session, proxy, host)).status == 200
    pools = {p["service"]: p for p in (await proxy.stats())["upstream_pools"]
             if p["address"] == shared.address}
    assert {name: p["version"] for name, p in pools.items()} == {
        "cb": "v1", "cbc": "v2", "cbo": "v3", "cb2": "v4",
        "one.example.test": "unknown", "many.example.test": "unknown"}
    text = await proxy.metrics()
    for host, version in (("cb", "v1"), ("cbc", "v2"), ("cbo", "v3"), ("cb2", "v4")):
        assert metric_value(text, "ami_requests_total", destination_service=host,
                            destination_version=version) >= 1, host
        for other in {"v1", "v2", "v3", "v4"} - {version}:
            assert metric_value(text, "ami_requests_total", destination_service=host,
                                destination_version=other) == 0, (host, other)


async def test_a_breaker_counts_only_its_own_services_connections(
        env: dict[str, Any], session: aiohttp.ClientSession) -> None:
    """Connections of `cbc` busy on the shared address do not count against `cb`'s one
    connection: a request to `cb` goes out at once instead of queueing behind them; and `cb`
    saturated (one busy, one queued) does not stop `cbo`."""
    proxy: TrafficProxy = env["proxy"]
    shared: Shared = env["shared"]
    shared.arm()
    held = [asyncio.create_task(call(session, proxy, "cbc", "/hold", timeout=10))
            for _ in range(2)]
    try:
        await eventually(lambda: shared.active == 2)
        reply = await call(session, proxy, "cb", "/", timeout=3)
        assert reply.status == 200
        # `cb` full: one request held on its only connection, one waiting for it; `cbo`'s own
        # limits (50) let its requests through all the same
        cb_held = asyncio.create_task(call(session, proxy, "cb", "/hold", timeout=10))
        await eventually(lambda: shared.active == 3)
        cb_queued = asyncio.create_task(call(session, proxy, "cb", "/", timeout=10))
        await _cb_requests(proxy, 2)  # the second waits in cb's queue
        overflow = await call(session, proxy, "cb", "/", timeout=3)
        assert (overflow.status, overflow.reason) == (503, "overflow")
        others = await asyncio.gather(*(call(session, proxy, "cbo", "/", timeout=3)
                                         for _ in range(3)))
        assert [r.status for r in others] == [200, 200, 200]
    finally:
        shared.release()
    assert [(await t).status for t in (*held, cb_held, cb_queued)] == [200] * 4


async def _cb_requests(proxy: TrafficProxy, count: int) -> None:
    """Wait until `cb`'s pool has ``count`` requests (sent, or queued for its connection)."""
    end = time.monotonic() + 5
    while True:
        pools = [p for p in (await proxy.stats())["upstream_pools"] if p["service"] == "cb"]
        if sum(p["active_requests"] for p in pools) == count:
            return
        assert time.monotonic() < end, pools
        await asyncio.sleep(0.02)  # poll interval of a deadline-bounded wait


async def test_connections_are_reused_within_a_service(
        env: dict[str, Any], session: aiohttp.ClientSession) -> None:
    """Sequential requests to one service reuse its keep-alive connection."""
    proxy: TrafficProxy = env["proxy"]
    shared: Shared = env["shared"]
    assert (await call(session, proxy, "cbc")).status == 200
    before = shared.connections
    for _ in range(5):
        assert (await call(session, proxy, "cbc")).status == 200
    assert shared.connections == before


async def test_external_hosts_sharing_an_endpoint_keep_their_own_limits(
        env: dict[str, Any], session: aiohttp.ClientSession) -> None:
    """`one.example.test` (one connection, no queue) is not limited by the connections of
    `many.example.test`, declared after it with the same endpoint; once its own connection is
    busy its next request overflows, while `many`'s requests still go through."""
    proxy: TrafficProxy = env["proxy"]
    shared: Shared = env["shared"]
    port = shared.raw.port
    one, many = f"one.example.test:{port}", f"many.example.test:{port}"
    shared.arm()
    busy = shared.active
    held = [asyncio.create_task(call(session, proxy, many, "/hold")) for _ in range(2)]
    try:
        await eventually(lambda: shared.active == busy + 2)
        assert (await call(session, proxy, one, "/", timeout=3)).status == 200
        held.append(asyncio.create_task(call(session, proxy, one, "/hold")))
        await eventually(lambda: shared.active == busy + 3)
        refused = await call(session, proxy, one, "/", timeout=3)
        assert (refused.status, refused.reason) == (503, "overflow")
        others = await asyncio.gather(*(call(session, proxy, many, "/", timeout=3)
                                        for _ in range(3)))
        assert [r.status for r in others] == [200, 200, 200]
    finally:
        shared.release()
    assert [(await t).status for t in held] == [200] * 3


def test_sigterm_does_not_wait_for_a_lost_request(tmp_path: Path) -> None:
    """The audit's case end to end in a process of its own: after two concurrent requests to
    `cb` both answered, SIGTERM finds nothing in flight and the proxy exits at once."""
    hub = Backends()
    shared = Shared(hub)
    proxy = TrafficProxy(tmp_path, _services(shared), [])
    try:
        proxy.start()

        async def both() -> list[int]:
            async with aiohttp.ClientSession() as session:
                replies = await asyncio.gather(*(call(session, proxy, "cb", "/slow", timeout=5)
                                                 for _ in range(2)))
            return [r.status for r in replies]

        assert asyncio.run(both()) == [200, 200]
        # A request it thought in flight would hold the drain for --drain-timeout (20 s by
        # default): stop() kills a proxy still running after 15 s (-9), so exit 0 is the proof,
        # with no bound on time a loaded machine could break.
        assert proxy.stop(timeout=15) == 0
    finally:
        proxy.stop()
        close_backends(hub, [])


async def test_a_push_keeps_each_services_pool_and_retires_a_removed_ones(
        tmp_path: Path, session: aiohttp.ClientSession) -> None:
    """A reload that keeps `cbc` and drops `cbo` (same address) keeps `cbc`'s keep-alive
    connection, reused after the push with its new version label, and retires `cbo`'s pool
    alone: its idle connection is closed, `cbc`'s stays."""
    hub = Backends()
    shared = Shared(hub)
    proxy = TrafficProxy(tmp_path, _services(shared), [])
    try:
        proxy.start()
        for host in ("cbc", "cbo"):
            assert (await call(session, proxy, host)).status == 200
        assert (shared.connections, shared.closed) == (2, 0)
        config = yaml.safe_load(proxy.config.read_text())
        del config["services"]["cbo"]
        config["services"]["cbc"]["endpoints"][0]["labels"]["version"] = "v2b"
        config["version"] = "traffic-2"
        proxy.config.write_text(yaml.safe_dump(config))
        assert proxy.proc is not None
        proxy.proc.send_signal(signal.SIGHUP)

        async def pushed() -> bool:
            return (await proxy.stats())["config_version"] == "traffic-2"

        end = time.monotonic() + 10
        while not await pushed():
            assert time.monotonic() < end, proxy.stderr()
            await asyncio.sleep(0.05)  # poll interval of a deadline-bounded wait
        await eventually(lambda: shared.closed == 1)  # cbo's idle connection
        assert (await call(session, proxy, "cbc")).status == 200
        assert shared.connections == 2  # cbc's connection, from before the push
        pools = [(p["service"], p["version"]) for p in (await proxy.stats())["upstream_pools"]]
        assert ("cbc", "v2b") in pools and not any(s == "cbo" for s, _ in pools)
        assert metric_value(await proxy.metrics(), "ami_requests_total",
                            destination_service="cbc", destination_version="v2b") == 1
    finally:
        proxy.stop()
        close_backends(hub, [])
