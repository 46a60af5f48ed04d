"""Fault injection, mirroring and the Bookinfo scenario mechanisms through a real proxy process."""

from __future__ import annotations

import asyncio
import math
import time
from collections import Counter
from collections.abc import Iterator
from typing import Any

import aiohttp
import pytest

from tests.proxyharness import (
    Backends,
    RawBackend,
    eventually,
    get,
    read_request,
    roundtrip,
)
from tests.traffic_backends import (
    TrafficBackend,
    TrafficProxy,
    call,
    call_many,
    dead_endpoint,
    endpoints,
    method_of,
    start_backend,
    started,
)

JASON = {"headers": {"end-user": {"exact": "jason"}}}


def _jason_rule(host: str, service: str, fault: dict[str, Any]) -> dict[str, Any]:
    return {"host": host, "rules": [
        {"name": "jason", "matches": [JASON], "backends": [{"service": service}], "fault": fault},
        {"backends": [{"service": service}]},
    ]}


async def _answers_with_stray_bytes(backend: RawBackend, reader: asyncio.StreamReader,
                                    writer: asyncio.StreamWriter) -> None:
    """A shadow breaking HTTP/1.1: bytes nobody asked for after each complete answer."""
    while await read_request(reader) is not None:
        backend.requests.append(None)  # type: ignore[arg-type]  # counted, not read
        writer.write(b"HTTP/1.1 204 No Content\r\n\r\nSTRAY")
        await writer.drain()


@pytest.fixture(scope="module")
def env(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    hub = Backends()
    b: dict[str, TrafficBackend] = {
        "ratings": start_backend(hub),
        "reviews-v1": start_backend(hub, version="v1"),
        "reviews-v2": start_backend(hub, version="v2"),
        "slowreviews": start_backend(hub, delay=2.0),
        "cb": start_backend(hub, delay=0.1),
        "web": start_backend(hub, version="v1"),
        "web-shadow": start_backend(hub, version="shadow"),
        # Never answers while the module runs: a primary that waited for it would not return.
        "slow-shadow": start_backend(hub, version="shadow", delay=30.0),
        "hung-shadow": start_backend(hub, version="shadow", delay=30.0),
    }
    stray = hub.raw(_answers_with_stray_bytes)
    services = {
        "ratings": {"endpoints": endpoints(b["ratings"])},
        "reviews": {"endpoints": endpoints(b["reviews-v1"], b["reviews-v2"])},
        "slowreviews": {"endpoints": endpoints(b["slowreviews"])},
        "cb": {"endpoints": endpoints(b["cb"]), "policy": {
            "connectionPool": {"maxConnections": 1, "maxPendingRequests": 1},
            "outlierDetection": {"consecutive5xxErrors": 1}}},
        "web": {"endpoints": endpoints(b["web"], b["web-shadow"])},
        "webdown": {"endpoints": [*endpoints(b["web"]), dead_endpoint("shadow")]},
        "webgone": {"endpoints": [*endpoints(b["web"]), dead_endpoint("shadow")]},
        "webslow": {"endpoints": endpoints(b["web"], b["slow-shadow"])},
        "webhung": {"endpoints": endpoints(b["web"], b["hung-shadow"])},
        "webstray": {"endpoints": [*endpoints(b["web"]), {
            "address": f"127.0.0.1:{stray.port}", "labels": {"version": "shadow"}}]},
    }
    routes = [
        _jason_rule("ratings", "ratings", {"delay": {"fixedDelay": "700ms"}}),
        _jason_rule("ratings-abort", "ratings", {"abort": {"httpStatus": 500}}),
        {"host": "ratings-half", "rules": [{"backends": [{"service": "ratings"}],
                                            "fault": {"abort": {"httpStatus": 503,
                                                                "percent": 50}}}]},
        {"host": "reviews", "rules": [
            {"matches": [JASON], "backends": [{"subset": "v2"}]},
            {"backends": [{"subset": "v1"}]}]},
        {"host": "reviews-timeout", "rules": [{"backends": [{"service": "slowreviews"}],
                                               "timeout": "500ms"}]},
        *({"host": host, "rules": [{"backends": [{"subset": "v1"}],
                                    "mirror": {"subset": "shadow"}}]}
          for host in ("web", "webdown", "webgone", "webslow", "webstray")),
        {"host": "webhung", "rules": [{"backends": [{"subset": "v1"}], "timeout": "300ms",
                                       "mirror": {"subset": "shadow"}}]},
    ]
    proxy = TrafficProxy(tmp_path_factory.mktemp("faults"), services, routes)
    for p in started(proxy, hub):
        yield {"proxy": p, **b}


async def test_fault_delay_only_for_jason(env: dict[str, Any],
                                          session: aiohttp.ClientSession) -> None:
    """A 700 ms delay applies to `end-user: jason` only, and is counted as an injected delay."""
    proxy: TrafficProxy = env["proxy"]
    before = await proxy.metric("ami_faults_injected_total", destination_service="ratings",
                                kind="delay")
    other = await call(session, proxy, "ratings", headers={"end-user": "ann"})
    jason = await call(session, proxy, "ratings", headers={"end-user": "jason"})
    assert other.status == jason.status == 200
    assert jason.elapsed >= 0.65, jason.elapsed  # the delay happened (a lower bound only)
    # Only jason's request was delayed: the counter says one, not two.
    assert await proxy.metric("ami_faults_injected_total", destination_service="ratings",
                              kind="delay") == before + 1


async def test_fault_abort_only_for_jason(env: dict[str, Any],
                                          session: aiohttp.ClientSession) -> None:
    """jason gets an immediate 500 `fault_injected` without reaching the backend; others pass."""
    proxy: TrafficProxy = env["proxy"]
    backend: TrafficBackend = env["ratings"]
    before = len(backend.requests)
    jason = await call(session, proxy, "ratings-abort", headers={"end-user": "jason"})
    assert (jason.status, jason.reason) == (500, "fault_injected")
    assert len(backend.requests) == before
    other = await call(session, proxy, "ratings-abort", headers={"end-user": "ann"})
    assert other.status == 200 and len(backend.requests) == before + 1
    assert await proxy.metric("ami_faults_injected_total", kind="abort") >= 1
    assert await proxy.metric("ami_requests_total", response_code="500",
                              response_flags="fault_injected") >= 1


async def test_fault_percent_is_a_share(env: dict[str, Any],
                                        session: aiohttp.ClientSession) -> None:
    """A 50% abort hits about half of 400 requests (binomial 4 sigma), as the counter says."""
    proxy: TrafficProxy = env["proxy"]
    n = 400
    replies = await call_many(session, proxy, "ratings-half", n, concurrency=16)
    aborted = sum(1 for r in replies if r.reason == "fault_injected")
    assert all(r.status == 503 for r in replies if r.reason == "fault_injected")
    assert abs(aborted - n / 2) <= 4 * math.sqrt(n / 4), aborted
    assert await proxy.metric("ami_requests_total", destination_service="ratings",
                              response_flags="fault_injected", response_code="503") == aborted


async def test_mirror_sends_a_shadow_copy(env: dict[str, Any],
                                          session: aiohttp.ClientSession) -> None:
    """The shadow subset gets the request and body with Host `web-shadow`; the primary answers."""
    proxy: TrafficProxy = env["proxy"]
    shadow: TrafficBackend = env["web-shadow"]
    reply = await call(session, proxy, "web", "/buy?x=1", method="POST", data=b"item=42")
    assert (reply.status, reply.version) == (200, "v1")
    await eventually(lambda: len(shadow.requests) == 1)
    copy = shadow.requests[0]
    assert copy.header("host") == "web-shadow"
    assert (method_of(copy), copy.target, copy.body) == ("POST", "/buy?x=1", b"item=42")
    assert await proxy.metric("ami_mirrored_requests_total", destination_service="web") == 1


async def test_mirrored_copies_reuse_their_connection(env: dict[str, Any],
                                                     session: aiohttp.ClientSession) -> None:
    """Each copy's response is read to its end and its connection goes back to the pool, so
    sequential copies share one connection, and nothing in the proxy fails on the way."""
    proxy: TrafficProxy = env["proxy"]
    shadow: TrafficBackend = env["web-shadow"]
    before = shadow.connections

    async def shadow_idle() -> int:
        pools = (await proxy.stats())["upstream_pools"]
        return sum(p["idle"] for p in pools if p["address"] == shadow.address)

    for i in range(4):
        assert (await call(session, proxy, "web", f"/again{i}")).status == 200
        end = time.monotonic() + 5.0
        while await shadow_idle() != 1:  # the copy's answer read, its connection pooled
            assert time.monotonic() < end, "the copy's connection never went back to the pool"
    assert shadow.connections - before <= 1
    assert "internal error" not in proxy.stderr()


async def test_a_shadow_breaking_the_protocol_is_dropped_quietly(
        env: dict[str, Any], session: aiohttp.ClientSession) -> None:
    """A shadow that sends bytes after its answer: the copy ends there, its connection is not
    reused, and the proxy logs no error (the connection once set an attribute the copy lacked)."""
    proxy: TrafficProxy = env["proxy"]
    replies = [await call(session, proxy, "webstray", f"/s{i}") for i in range(3)]
    assert [(r.status, r.version) for r in replies] == [(200, "v1")] * 3
    await eventually(lambda: "Fatal error" in proxy.stderr() or _mirrored(proxy) >= 3)
    assert "Fatal error" not in proxy.stderr() and "Traceback" not in proxy.stderr()


def _mirrored(proxy: TrafficProxy) -> float:
    from tests.proxyharness import metric_value

    _, body = proxy.get("/metrics")
    return metric_value(body.decode(), "ami_mirrored_requests_total",
                        destination_service="webstray")


async def test_a_copy_that_cannot_connect_lets_its_body_go(
        env: dict[str, Any], session: aiohttp.ClientSession) -> None:
    """A shadow that refuses connections: each copy is dropped when its connect fails, with
    the body held for it, not kept (with its timer) until the 300 s stream idle timeout:
    200 uploads of 60 KB leave the proxy's peak memory where a few in flight put it."""
    proxy: TrafficProxy = env["proxy"]
    body = b"b" * 60_000
    for _ in range(10):  # a first few: the allocator's own growth, before measuring
        assert (await call(session, proxy, "webgone", "/up", method="POST", data=body)).status \
            == 200
    before = proxy.vm_hwm_kb()
    replies = await call_many(session, proxy, "webgone", 200, concurrency=4, path="/up",
                              method="POST", data=body)
    assert {r.status for r in replies} == {200}
    # Kept, 200 bodies are 12 MB; dropped, a few in flight at a time are well under 5.
    assert proxy.vm_hwm_kb() - before < 5_000


@pytest.mark.parametrize("host", ["webdown", "webslow"])
async def test_mirror_never_hurts_the_primary(env: dict[str, Any],
                                              session: aiohttp.ClientSession, host: str) -> None:
    """With the mirror down or never answering, primary requests still succeed: the primary
    answers without waiting for the copy (the slow shadow has not answered any copy yet)."""
    proxy: TrafficProxy = env["proxy"]
    replies = [await call(session, proxy, host, "/m") for _ in range(5)]
    assert [(r.status, r.version) for r in replies] == [(200, "v1")] * 5
    assert await proxy.metric("ami_mirrored_requests_total", destination_service=host) == 5


async def test_mirror_is_abandoned_at_the_route_timeout(env: dict[str, Any],
                                                      session: aiohttp.ClientSession) -> None:
    """A shadow that never answers does not keep the copy's connection open past the route
    timeout (as Envoy, whose shadow requests use the route's timeout): hung copies cannot
    pile up connections in the sidecar."""
    proxy: TrafficProxy = env["proxy"]
    shadow: TrafficBackend = env["hung-shadow"]
    replies = [await call(session, proxy, "webhung", "/m") for _ in range(3)]
    assert [(r.status, r.version) for r in replies] == [(200, "v1")] * 3
    await eventually(lambda: len(shadow.requests) == 3)

    async def shadow_connections() -> int:
        pools = (await proxy.stats())["upstream_pools"]
        return sum(p["connections"] for p in pools if p["address"] == shadow.address)

    end = time.monotonic() + 5.0
    while await shadow_connections():
        assert time.monotonic() < end, "the copies' connections stayed open"


# --- Bookinfo scenario mechanisms (docs/bookinfo.md), with shorter durations ------------------
async def test_bookinfo_header_route(env: dict[str, Any],
                                     session: aiohttp.ClientSession) -> None:
    """jason-to-v2: `end-user: jason` always reaches reviews v2, everyone else v1."""
    proxy: TrafficProxy = env["proxy"]
    jason = [await call(session, proxy, "reviews", headers={"end-user": "jason"})
             for _ in range(5)]
    others = [await call(session, proxy, "reviews") for _ in range(5)]
    assert {r.version for r in jason} == {"v2"} and {r.version for r in others} == {"v1"}
    assert await proxy.metric("ami_requests_total", destination_service="reviews",
                              destination_version="v2") == 5


async def test_bookinfo_delay_beats_a_two_try_client(env: dict[str, Any],
                                                     session: aiohttp.ClientSession) -> None:
    """A 0.7 s delay defeats a client with 0.3 s x 2 tries; a 1 s client budget gets through."""
    proxy: TrafficProxy = env["proxy"]
    for _ in range(2):  # each try gives up before the delayed answer arrives
        with pytest.raises(asyncio.TimeoutError):
            await call(session, proxy, "ratings", headers={"end-user": "jason"}, timeout=0.3)
    patient = await call(session, proxy, "ratings", headers={"end-user": "jason"}, timeout=1.5)
    assert patient.status == 200 and patient.elapsed >= 0.65


async def test_bookinfo_route_timeout(env: dict[str, Any],
                                      session: aiohttp.ClientSession) -> None:
    """A 0.5 s route timeout over a 2 s upstream: two tries answer 504 `timeout` (the timeout
    fired, the upstream's late 200 is not what came back), each after the 0.5 s it waited."""
    proxy: TrafficProxy = env["proxy"]
    replies = [await call(session, proxy, "reviews-timeout") for _ in range(2)]
    assert [(r.status, r.reason) for r in replies] == [(504, "timeout")] * 2
    assert all(r.elapsed >= 0.45 for r in replies)  # lower bound only: not before its time


async def test_bookinfo_breaker_under_concurrent_clients(env: dict[str, Any],
                                                         session: aiohttp.ClientSession
                                                         ) -> None:
    """1 connection + 1 pending: 3 concurrent clients see some 503 `overflow`, all counted."""
    proxy: TrafficProxy = env["proxy"]

    async def client() -> list[tuple[int, str | None]]:
        return [((r := await call(session, proxy, "cb")).status, r.reason) for _ in range(6)]

    results = Counter(x for batch in await asyncio.gather(*(client() for _ in range(3)))
                      for x in batch)
    assert set(results) == {(200, None), (503, "overflow")}, results
    assert await proxy.metric("ami_circuit_breaker_overflow_total",
                              destination_service="cb") == results[(503, "overflow")]
    assert env["cb"].connections == 1


async def test_a_header_rule_reads_the_value_trimmed(env: dict[str, Any]) -> None:
    """`end-user: jason ` (trailing whitespace, which RFC 9110 5.5 makes no part of the
    value, as the app reads it) matches the rule on `jason`."""
    proxy: TrafficProxy = env["proxy"]
    resp = await roundtrip(proxy.outbound, get("reviews", "/", "end-user: jason \t\r\n"))
    assert (resp.status, resp.header("x-version")) == (200, "v2")
