"""A DestinationPolicy's connectionPool tcpKeepalive, maxConnectionDuration and maxRetries, and
outlierDetection's splitExternalLocalOriginErrors, through a real proxy to real backends."""

from __future__ import annotations

import asyncio
import gc
import json
import signal
import time
import weakref
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import uvloop
import yaml

from meshctl.api.policy import TcpKeepalive
from proxy.config import Address
from proxy.keepalive import set_keepalive
from proxy.pools import EndpointPool
from proxy.upstream import UpstreamConnection
from tests.h2app import H2Server
from tests.proxyharness import (
    Backends,
    RawBackend,
    eventually,
    keepalive_timers,
    read_request,
)
from tests.traffic_backends import (
    TrafficBackend,
    TrafficProxy,
    call,
    close_backends,
    endpoints,
    start_backend,
    started,
)

pytestmark = pytest.mark.timeout(120)

SPLIT_OUTLIER = {"consecutive5xxErrors": 1, "splitExternalLocalOriginErrors": True,
                 "consecutiveLocalOriginFailures": 3, "interval": "1s",
                 "baseEjectionTime": "1m", "maxEjectionPercent": 100}


@pytest.fixture(scope="module")
def env(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    hub = Backends()
    b: dict[str, TrafficBackend] = {
        "ka": start_backend(hub),
        "noka": start_backend(hub),
        "age": start_backend(hub),
        "ageidle": start_backend(hub),
        "ageslow": start_backend(hub, delay=2.0),
        "reset": start_backend(hub, version="reset", reset_first=1_000_000),
        "reset-good": start_backend(hub, version="good"),
        "fail": start_backend(hub, version="fail", status=503),
        "fail-good": start_backend(hub, version="good"),
    }
    hold = RetryHold(hub)
    scripted = Scripted(hub)
    svc: dict[str, dict[str, Any]] = {name: {"endpoints": endpoints(b[name])}
                                      for name in ("ka", "noka", "age", "ageidle", "ageslow")}
    svc["mr"] = {"endpoints": [{"address": f"127.0.0.1:{hold.raw.port}",
                                "labels": {"version": "v1"}}]}
    # Istio's spelling, as a DestinationRule has it
    svc["ka"]["policy"] = {"connectionPool": {"tcp": {
        "tcpKeepalive": {"time": "7s", "interval": "3s", "probes": 4}}}}
    svc["age"]["policy"] = {"connectionPool": {"maxConnectionDuration": "1s"}}
    svc["ageidle"]["policy"] = {"connectionPool": {"maxConnectionDuration": "1s",
                                                   "idleTimeout": "5m"}}
    svc["ageslow"]["policy"] = {"connectionPool": {"maxConnectionDuration": "1s"}}
    svc["mr"]["policy"] = {"connectionPool": {"http": {"maxRetries": 1}}}
    svc["mrs"] = {"endpoints": [{"address": f"127.0.0.1:{scripted.raw.port}",
                                 "labels": {"version": "v1"}}],
                  "policy": {"connectionPool": {"maxRetries": 1}}}
    for name in ("reset", "fail"):
        svc[name] = {"endpoints": endpoints(b[name], b[f"{name}-good"]), "policy": {
            "loadBalancer": "ROUND_ROBIN", "outlierDetection": SPLIT_OUTLIER}}
    routes = [{"host": name, "rules": [{"backends": [{}]}]} for name in svc
              if name not in ("mr", "mrs")]
    routes += [{"host": name, "rules": [{"backends": [{}], "timeout": "30s", "retries": {
        "attempts": 1, "retryOn": ["5xx"]}}]} for name in ("mr", "mrs")]
    proxy = TrafficProxy(tmp_path_factory.mktemp("pool"), svc, routes)
    for p in started(proxy, hub):
        yield {"proxy": p, "hub": hub, "mr": hold, "mrs": scripted, **b}


async def test_tcp_keepalive_probes_the_connections_to_the_destination(
        env: dict[str, Any], session: aiohttp.ClientSession) -> None:
    """tcpKeepalive arms the kernel's keepalive timer on the proxy's connection to the
    endpoint, due within `time`; a destination without it has no timer on its connection."""
    proxy: TrafficProxy = env["proxy"]
    assert proxy.proc is not None
    for host in ("ka", "noka"):
        assert (await call(session, proxy, host)).status == 200
    ka = keepalive_timers(proxy.proc.pid, env["ka"].port)
    noka = keepalive_timers(proxy.proc.pid, env["noka"].port)
    assert len(ka) == 1 and ka[0][0] == 2 and 0 < ka[0][1] <= 7.0, ka
    assert noka == [(0, 0.0)], noka


async def test_set_keepalive_sets_every_option_given() -> None:
    """On a real connection: SO_KEEPALIVE on, and each of time, interval and probes as given
    (a field left out keeps the system's value)."""
    import socket

    server = await asyncio.start_server(lambda r, w: w.close(), "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    loop = asyncio.get_running_loop()
    transport, _ = await loop.create_connection(asyncio.Protocol, "127.0.0.1", port)
    try:
        sock = transport.get_extra_info("socket")
        system_count = sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPCNT)
        set_keepalive(transport, TcpKeepalive(time=42.0, interval=5.0))
        assert sock.getsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE) == 1
        assert sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPIDLE) == 42
        assert sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPINTVL) == 5
        assert sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPCNT) == system_count
        set_keepalive(transport, TcpKeepalive(probes=3))
        assert sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPCNT) == 3
    finally:
        transport.close()
        server.close()


async def test_a_busy_connection_is_replaced_after_max_connection_duration(
        env: dict[str, Any], session: aiohttp.ClientSession) -> None:
    """Requests one after the other keep a pooled connection busy (never idle long enough for
    its idle timeout): past maxConnectionDuration it is closed after its request and the next
    one opens a new connection; no request fails on the way."""
    proxy: TrafficProxy = env["proxy"]
    backend: TrafficBackend = env["age"]
    replies = []

    async def step() -> bool:
        replies.append(await call(session, proxy, "age"))
        return backend.connections >= 2

    end = asyncio.get_running_loop().time() + 30
    while not await step():
        assert asyncio.get_running_loop().time() < end, "the first connection was never closed"
    assert {r.status for r in replies} == {200}
    assert len(replies) == len(backend.requests)


async def test_an_idle_connection_closes_at_max_connection_duration(
        env: dict[str, Any], session: aiohttp.ClientSession) -> None:
    """An idle pooled connection (idle timeout 5 min) is closed once it is 1 s old."""
    proxy: TrafficProxy = env["proxy"]
    backend: TrafficBackend = env["ageidle"]
    assert (await call(session, proxy, "ageidle")).status == 200
    assert backend.connections == 1
    await eventually(lambda: not backend.writers, 30,
                     what="the proxy closed its idle connection to the backend")


async def test_max_connection_duration_never_cuts_a_request_short(
        env: dict[str, Any], session: aiohttp.ClientSession) -> None:
    """A response that takes longer than the connection may live still arrives whole."""
    reply = await call(session, env["proxy"], "ageslow")
    assert (reply.status, reply.version) == (200, "v1")
    assert isinstance(reply.body, dict) and reply.body["path"] == "/"


class RetryHold:
    """An endpoint that fails each request's first try (503) and holds its retry (the same
    x-request-id again) until the test opens ``gate``."""

    def __init__(self, hub: Backends) -> None:
        self.ids: list[str] = []  # x-request-id of every request received, in order
        self.gate = asyncio.Event()
        self.raw = hub.raw(self._serve)

    async def _serve(self, _raw: RawBackend, reader: asyncio.StreamReader,
                     writer: asyncio.StreamWriter) -> None:
        while (req := await read_request(reader)) is not None:
            rid = req.header("x-request-id") or ""
            retried = rid in self.ids
            self.ids.append(rid)
            if retried:
                await self.gate.wait()
            writer.write(b"HTTP/1.1 %d X\r\ncontent-length: 0\r\n\r\n"
                         % (200 if retried else 503))
            await writer.drain()


async def test_max_retries_caps_requests_being_retried_at_once(
        env: dict[str, Any], session: aiohttp.ClientSession) -> None:
    """maxRetries 1: while one request is being retried, another whose try failed is not
    retried (its 503 answered at once, `ami_retry_overflow_total`); once the first ends the
    slot is free again (the second round proves it was given back)."""
    proxy: TrafficProxy = env["proxy"]
    hold: RetryHold = env["mr"]
    hub: Backends = env["hub"]
    for round_ in (1, 2):
        hold.gate = hub.call(_new_event())
        seen = len(hold.ids)
        first = asyncio.create_task(call(session, proxy, "mr", timeout=30))
        # its try failed and its retry is held at the endpoint: it holds the retry slot
        await eventually(lambda seen=seen: len(hold.ids) == seen + 2, 20,
                         what="the first request's retry reached the endpoint")
        second = await call(session, proxy, "mr", timeout=30)
        assert second.status == 503
        assert len(hold.ids) == seen + 3 and len(set(hold.ids[seen:])) == 2  # tried once
        assert await proxy.metric("ami_retry_overflow_total",
                                  destination_service="mr") == round_
        hub.loop.call_soon_threadsafe(hold.gate.set)
        assert (await first).status == 200
    assert await proxy.metric("ami_retries_total", destination_service="mr") == 2


async def _new_event() -> asyncio.Event:
    return asyncio.Event()


# path -> (first try, retry (the same x-request-id again)): (gate, status, streamed body)
_SCRIPT: dict[str, tuple[tuple[str | None, int, bool], tuple[str | None, int, bool]]] = {
    "/stream": ((None, 503, False), ("stream", 200, True)),
    "/quick": ((None, 503, False), (None, 200, False)),
    "/a": (("a", 503, False), (None, 200, False)),
    "/b": (("b", 200, False), (None, 200, False)),
    "/c": ((None, 503, False), (None, 200, False)),
}


class Scripted:
    """An endpoint answering each path's first try and its retry as `_SCRIPT` says: a gate
    holds the answer (or, streamed, the rest of its body after a first chunk) until the test
    opens it."""

    def __init__(self, hub: Backends) -> None:
        self.hub = hub
        self.seen: list[tuple[str, str]] = []  # (path, x-request-id) of every try, in order
        self.gates: dict[str, asyncio.Event] = {}
        self.raw = hub.raw(self._serve)

    def close_gate(self, name: str) -> None:
        self.gates[name] = self.hub.call(_new_event())

    def open_gate(self, name: str) -> None:
        self.hub.loop.call_soon_threadsafe(self.gates[name].set)

    def tries(self, path: str) -> int:
        return sum(1 for p, _ in self.seen if p == path)

    async def _serve(self, _raw: RawBackend, reader: asyncio.StreamReader,
                     writer: asyncio.StreamWriter) -> None:
        while (req := await read_request(reader)) is not None:
            key = (req.target, req.header("x-request-id") or "")
            retried = key in self.seen
            self.seen.append(key)
            gate, status, streamed = _SCRIPT[req.target][retried]
            if not streamed:
                if gate is not None:
                    await self.gates[gate].wait()
                writer.write(b"HTTP/1.1 %d X\r\ncontent-length: 0\r\n\r\n" % status)
                await writer.drain()
                continue
            writer.write(b"HTTP/1.1 %d X\r\ntransfer-encoding: chunked\r\n\r\n1\r\na\r\n"
                         % status)
            await writer.drain()
            assert gate is not None
            await self.gates[gate].wait()
            writer.write(b"1\r\nb\r\n0\r\n\r\n")
            await writer.drain()


async def test_a_retried_request_whose_answer_streams_holds_no_retry_slot(
        env: dict[str, Any], session: aiohttp.ClientSession) -> None:
    """maxRetries 1 (Envoy's max_retries: retries outstanding): a retry is outstanding until
    its try is answered. A retried request whose answer's body is still streaming holds no
    slot, so another request's failed try is retried meanwhile."""
    proxy: TrafficProxy = env["proxy"]
    endpoint: Scripted = env["mrs"]
    endpoint.close_gate("stream")
    async with session.get(proxy.url("/stream"), headers={"Host": "mrs"},
                           timeout=aiohttp.ClientTimeout(total=30)) as streaming:
        assert streaming.status == 200  # its retry answered; the body is still coming
        assert endpoint.tries("/stream") == 2
        other = await call(session, proxy, "mrs", "/quick", timeout=30)
        assert (other.status, endpoint.tries("/quick")) == (200, 2)
        assert await proxy.metric("ami_retry_overflow_total", destination_service="mrs") == 0
        endpoint.open_gate("stream")
        assert await streaming.read() == b"ab"


async def test_a_retry_slot_taken_after_a_pool_was_declared_mid_request_is_given_back(
        tmp_path: Path, session: aiohttp.ClientSession) -> None:
    """A request dispatched before its destination had a connectionPool, retried after one
    with maxRetries was pushed, takes a retry slot; when its retry then ends otherwise than
    on a connection (here the `overflow` of maxConcurrentRequests) the slot is given back:
    the next request's failed try is retried."""
    hub = Backends()
    endpoint = Scripted(hub)
    services = {"late": {"endpoints": [{"address": f"127.0.0.1:{endpoint.raw.port}",
                                        "labels": {"version": "v1"}}]}}
    routes = [{"host": "late", "rules": [{"backends": [{}], "timeout": "30s", "retries": {
        "attempts": 1, "retryOn": ["5xx"]}}]}]
    proxy = TrafficProxy(tmp_path, services, routes)
    try:
        proxy.start()
        endpoint.close_gate("a")
        endpoint.close_gate("b")
        first = asyncio.create_task(call(session, proxy, "late", "/a", timeout=30))
        await eventually(lambda: endpoint.tries("/a") == 1, 20, what="/a reached the endpoint")
        config = yaml.safe_load(proxy.config.read_text())
        config["services"]["late"]["policy"] = {"connectionPool": {
            "maxConcurrentRequests": 1, "maxRetries": 1}}
        config["version"] = "traffic-2"
        proxy.config.write_text(yaml.safe_dump(config))
        assert proxy.proc is not None
        proxy.proc.send_signal(signal.SIGHUP)
        end = asyncio.get_running_loop().time() + 10
        while (await proxy.stats())["config_version"] != "traffic-2":
            assert asyncio.get_running_loop().time() < end, proxy.stderr()
            await asyncio.sleep(0.05)  # poll interval of a deadline-bounded wait
        second = asyncio.create_task(call(session, proxy, "late", "/b", timeout=30))
        await eventually(lambda: endpoint.tries("/b") == 1, 20, what="/b reached the endpoint")
        endpoint.open_gate("a")  # its 503 is retried: the retry finds the one request slot taken
        assert (await first).reason == "overflow"
        endpoint.open_gate("b")
        assert (await second).status == 200
        third = await call(session, proxy, "late", "/c", timeout=30)
        assert (third.status, endpoint.tries("/c")) == (200, 2)
        assert await proxy.metric("ami_retry_overflow_total", destination_service="late") == 0
    finally:
        proxy.stop()
        close_backends(hub, [])


async def _status(proxy: TrafficProxy, service: str, address: str) -> str:
    health = json.loads((await proxy.aget("/config_dump"))[1])["endpointHealth"][service]
    [endpoint] = [e for e in health["endpoints"] if e["address"] == address]
    return str(endpoint["status"])


async def test_split_local_origin_failures_eject_at_their_own_threshold(
        env: dict[str, Any], session: aiohttp.ClientSession) -> None:
    """splitExternalLocalOriginErrors with consecutive5xxErrors 1: an endpoint that resets
    every connection is not ejected by its first resets (they are the proxy's own failures,
    counted apart), only at consecutiveLocalOriginFailures (3)."""
    proxy: TrafficProxy = env["proxy"]
    bad: TrafficBackend = env["reset"]
    statuses = []
    end = asyncio.get_running_loop().time() + 30
    while len(bad.requests) < 3:
        assert asyncio.get_running_loop().time() < end, "the resetting endpoint got no traffic"
        before = len(bad.requests)
        reply = await call(session, proxy, "reset")
        if len(bad.requests) > before:
            assert reply.reason == "upstream_reset", reply
            statuses.append(await _status(proxy, "reset", bad.address))
    assert statuses[:2] == ["HEALTHY", "HEALTHY"] and statuses[2] == "EJECTED", statuses
    assert await proxy.metric("ami_outlier_ejections_total", destination_service="reset") == 1


async def test_split_mode_still_ejects_on_the_endpoints_own_5xx(
        env: dict[str, Any], session: aiohttp.ClientSession) -> None:
    """In the same split mode a 503 answered by the endpoint is an external error: the first
    one ejects it (consecutive5xxErrors 1)."""
    proxy: TrafficProxy = env["proxy"]
    bad: TrafficBackend = env["fail"]
    end = asyncio.get_running_loop().time() + 30
    while not bad.requests:
        assert asyncio.get_running_loop().time() < end, "the failing endpoint got no traffic"
        await call(session, proxy, "fail")
    assert await _status(proxy, "fail", bad.address) == "EJECTED"


@pytest.mark.parametrize("new_loop", [uvloop.new_event_loop, asyncio.new_event_loop],
                         ids=["uvloop", "asyncio"])
@pytest.mark.parametrize("http2", [False, True], ids=["http1", "http2"])
def test_a_closed_connection_is_not_kept_by_its_max_connection_duration_timer(
        new_loop: Callable[[], asyncio.AbstractEventLoop], http2: bool,
        monkeypatch: pytest.MonkeyPatch) -> None:
    """A connection closed long before its maxConnectionDuration (idle timeout, an answer with
    `connection: close`, maxRequestsPerConnection...) is freed at once: its age timer, which
    would hold it (and its parser or HTTP/2 state) for the rest of the hour, is cancelled."""
    monkeypatch.setattr("proxy.pools.UpstreamConnection", _WeaklyReferenced)
    loop = new_loop()
    try:
        loop.run_until_complete(_open_and_close(http2))
    finally:
        loop.close()


class _WeaklyReferenced(UpstreamConnection):
    __slots__ = ("__weakref__",)


async def _open_and_close(http2: bool) -> None:
    loop = asyncio.get_running_loop()
    server = await H2Server("age").start() if http2 else None
    plain = None if http2 else await asyncio.start_server(
        lambda r, w: r.read(), "127.0.0.1", 0)
    try:
        port = server.port if server is not None else (
            plain.sockets[0].getsockname()[1])  # type: ignore[union-attr]
        pool = EndpointPool(loop, Address("127.0.0.1", port))
        pool.max_connection_duration = 3600.0
        conn: Any = await (pool.connect_h2() if http2 else pool.connect())
        ref = weakref.ref(conn)
        conn.close()
        del conn
        end = time.monotonic() + 5.0
        while pool.connections and time.monotonic() < end:
            await asyncio.sleep(0.01)  # lets the loop run the close callbacks
        await asyncio.sleep(0.05)
        gc.collect()
        assert ref() is None, "the closed connection is still referenced (its age timer)"
    finally:
        if server is not None:
            await server.stop()
        if plain is not None:
            plain.close()
