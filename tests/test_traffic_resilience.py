"""Timeouts, retries, the retry budget, circuit breaking and outlier ejection with a real proxy."""

from __future__ import annotations

import asyncio
import json
import math
import time
from collections.abc import Iterator
from functools import partial
from typing import Any

import aiohttp
import pytest

from tests.proxyharness import Backends, eventually
from tests.traffic_backends import (
    TrafficBackend,
    TrafficProxy,
    call,
    call_many,
    dead_endpoint,
    endpoints,
    start_backend,
    started,
)

RETRY_5XX = {"attempts": 3, "retryOn": ["5xx"]}


def _route(host: str, service: str | None = None, **rule: Any) -> dict[str, Any]:
    backend = {"service": service} if service else {}
    return {"host": host, "rules": [{"backends": [backend], **rule}]}


@pytest.fixture(scope="module")
def env(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    hub = Backends()
    b: dict[str, TrafficBackend] = {
        "slow": start_backend(hub, delay=1.0),
        "pt-slow": start_backend(hub, version="slow", delay=2.0),
        "pt-fast": start_backend(hub, version="fast"),
        "r5xx": start_backend(hub, fail_first=2, fail_status=500),
        "rgw": start_backend(hub, fail_first=1, fail_status=502),
        "rgw500": start_backend(hub, fail_first=1, fail_status=500),
        "rreset": start_backend(hub, reset_first=1),
        "rcodes": start_backend(hub, fail_first=1, fail_status=409),
        "none": start_backend(hub, fail_first=1, fail_status=503),
        "none-reset": start_backend(hub, reset_first=1),
        "post": start_backend(hub, fail_first=1, fail_status=500),
        "post-ok": start_backend(hub, fail_first=1, fail_status=500),
        "cf-good": start_backend(hub, version="good"),
        "budget": start_backend(hub, status=500),
        "cb": start_backend(hub, delay=0.4),
        "ol-good": start_backend(hub, version="good"),
        "ol-bad": start_backend(hub, version="bad", status=500),
        "out-a": start_backend(hub, status=500),
        "out-b": start_backend(hub, status=500),
        "hung": start_backend(hub, version="hung", delay=5.0),
        "hung-ok": start_backend(hub, version="ok"),
        "to-hung": start_backend(hub, version="hung", delay=5.0),
        "to-ok": start_backend(hub, version="ok"),
        "cbs-v1": start_backend(hub, version="v1"),
        "cbs-v2": start_backend(hub, version="v2", delay=0.5),
        "cbi-v1": start_backend(hub, version="v1"),
        "cbi-v2": start_backend(hub, version="v2"),
        "fdpost": start_backend(hub, fail_first=1, fail_status=503),
        "fdpost-shadow": start_backend(hub, version="shadow"),
        "qo": start_backend(hub, delay=0.8),
    }
    svc: dict[str, dict[str, Any]] = {name.replace("-", ""): {"endpoints": endpoints(backend)}
           for name, backend in b.items()}
    svc["pertry"] = {"endpoints": endpoints(b["pt-slow"], b["pt-fast"]),
                     "policy": {"loadBalancer": "ROUND_ROBIN"}}
    svc["cf"] = {"endpoints": [dead_endpoint(), *endpoints(b["cf-good"])],
                 "policy": {"loadBalancer": "ROUND_ROBIN"}}
    svc["cb"]["policy"] = {"connectionPool": {"maxConnections": 1, "maxPendingRequests": 1}}
    svc["ol"] = {"endpoints": endpoints(b["ol-good"], b["ol-bad"]), "policy": {
        "loadBalancer": "ROUND_ROBIN",
        "outlierDetection": {"consecutive5xxErrors": 2, "interval": "1s",
                             "baseEjectionTime": "1s", "maxEjectionPercent": 50}}}
    svc["allout"] = {"endpoints": endpoints(b["out-a"], b["out-b"]), "policy": {
        "outlierDetection": {"consecutive5xxErrors": 1, "interval": "1s",
                             "baseEjectionTime": "1m", "maxEjectionPercent": 100}}}
    svc["hung"] = {"endpoints": endpoints(b["hung"], b["hung-ok"])}  # LEAST_REQUEST
    svc["to"] = {"endpoints": endpoints(b["to-hung"], b["to-ok"]), "policy": {
        "loadBalancer": "ROUND_ROBIN",
        "outlierDetection": {"consecutive5xxErrors": 2, "interval": "1s",
                             "baseEjectionTime": "1m", "maxEjectionPercent": 50}}}
    svc["empty"] = {"endpoints": []}
    svc["fdpost"] = {"endpoints": endpoints(b["fdpost"], b["fdpost-shadow"])}
    svc["qo"]["policy"] = {  # one connection, and an endpoint that may be ejected alone
        "connectionPool": {"maxConnections": 1, "maxPendingRequests": 5},
        "outlierDetection": {"consecutive5xxErrors": 2, "interval": "1s",
                             "baseEjectionTime": "30s", "maxEjectionPercent": 100}}
    subsets = [{"name": v, "labels": {"version": v}} for v in ("v1", "v2")]
    for name in ("cbs", "cbi"):  # one connection for the whole service, two subsets
        svc[name] = {"endpoints": endpoints(b[f"{name}-v1"], b[f"{name}-v2"]),
                     "subsets": subsets, "policy": {"connectionPool": {
                         "maxConnections": 1, "maxPendingRequests": 5, "idleTimeout": "60s"}}}
    routes = [
        _route("slow", timeout="300ms"),
        _route("notimeout", "slow"),
        _route("slowok", "slow", timeout="3s"),  # longer than the backend's 1 s delay
        _route("pertry", timeout="3s", retries={"attempts": 1, "perTryTimeout": "200ms"}),
        _route("hung", timeout="3s", retries={"attempts": 1, "perTryTimeout": "200ms"}),
        _route("to", timeout="200ms"),
        _route("r5xx", retries=RETRY_5XX),
        _route("rgw", retries={"attempts": 2, "retryOn": ["gateway-error"]}),
        _route("rgw500", retries={"attempts": 2, "retryOn": ["gateway-error"]}),
        _route("rreset", retries={"attempts": 2, "retryOn": ["reset"]}),
        _route("rcodes", retries={"attempts": 2, "retryOn": ["retriable-status-codes"],
                                  "retriableStatusCodes": [409]}),
        _route("post", retries=RETRY_5XX),
        _route("postok", retries={**RETRY_5XX, "allowNonIdempotent": True}),
        _route("cf", retries={"attempts": 1, "retryOn": ["connect-failure"]}),
        _route("budget", retries={"attempts": 1, "retryOn": ["5xx"]}),
        {"host": "fdpost", "rules": [{
            "backends": [{"subset": "v1"}], "timeout": "5s", "mirror": {"subset": "shadow"},
            "fault": {"delay": {"fixedDelay": "200ms", "percent": 100}},
            "retries": {"attempts": 1, "retryOn": ["5xx"], "allowNonIdempotent": True}}]},
        {"host": "qo", "rules": [
            {"matches": [{"headers": {"x-hold": {"exact": "1"}}}], "backends": [{}],
             "timeout": "5s"},
            {"backends": [{}], "timeout": "5s",
             "retries": {"attempts": 1, "perTryTimeout": "300ms", "retryOn": ["5xx"]}}]},
        {"host": "nosubset", "rules": [{"backends": [{"service": "cfgood", "subset": "v3"}]}]},
        *({"host": name, "rules": [
            {"matches": [{"headers": {"end-user": {"exact": "jason"}}}],
             "backends": [{"subset": "v2"}]},
            {"backends": [{"subset": "v1"}], "timeout": "3s"}]} for name in ("cbs", "cbi")),
    ]
    proxy = TrafficProxy(tmp_path_factory.mktemp("resilience"), svc, routes,
                         mesh={"retryBudget": {"percent": 20, "minRetriesPerSecond": 1}})
    for p in started(proxy, hub):
        yield {"proxy": p, **b}


async def test_route_timeout_gives_504_timeout(env: dict[str, Any],
                                               session: aiohttp.ClientSession) -> None:
    """A 300 ms route timeout answers 504 `timeout` long before the 1 s backend does."""
    proxy: TrafficProxy = env["proxy"]
    reply = await call(session, proxy, "slow")
    assert (reply.status, reply.reason) == (504, "timeout")  # not the backend's late 200
    assert reply.elapsed >= 0.25  # lower bound only: load can only make it truer
    assert await proxy.metric("ami_requests_total", destination_service="slow",
                              response_code="504", response_flags="timeout") >= 1


@pytest.mark.parametrize(("host", "header_ms", "low"), [
    ("slowok", "100", 0.09),  # tightens the route's 3 s: 504 instead of the backend's 1 s 200
    ("slow", "5000", 0.25),  # cannot loosen the route's 300 ms: 504, not the backend's 200
    ("notimeout", "200", 0.18),  # a route without timeout gets one: 504, not 200
])
async def test_timeout_header_tightens_never_loosens(env: dict[str, Any],
                                                     session: aiohttp.ClientSession, host: str,
                                                     header_ms: str, low: float) -> None:
    """`x-ami-timeout-ms` may shorten the route timeout for one request but never extend it:
    which timeout applied shows in the outcome (a 504 where the 1 s backend would answer 200),
    not in an upper bound on the time taken."""
    reply = await call(session, env["proxy"], host, headers={"x-ami-timeout-ms": header_ms})
    assert (reply.status, reply.reason) == (504, "timeout")
    assert reply.elapsed >= low, reply.elapsed  # no timeout fired early


async def test_per_try_timeout_retries_on_another_endpoint(env: dict[str, Any],
                                                           session: aiohttp.ClientSession
                                                           ) -> None:
    """A try cut by perTryTimeout is retried on the next endpoint, so every request succeeds."""
    proxy: TrafficProxy = env["proxy"]
    slow: TrafficBackend = env["pt-slow"]
    before = await proxy.metric("ami_retries_total", destination_service="pertry")
    tried_slow = len(slow.requests)
    replies = [await call(session, proxy, "pertry") for _ in range(4)]
    assert [r.status for r in replies] == [200] * 4
    assert {r.version for r in replies} == {"fast"}  # the slow endpoint's answer never came back
    # Round robin resumes after the endpoint a retry used, so most requests try slow first;
    # each of those tries was cut and retried on the fast endpoint.
    retried = len(slow.requests) - tried_slow
    assert retried >= 3
    after = await proxy.metric("ami_retries_total", destination_service="pertry")
    assert after == before + retried


async def test_retry_goes_to_an_endpoint_not_tried_yet(env: dict[str, Any],
                                                    session: aiohttp.ClientSession) -> None:
    """With the default balancer, a retry after a hung try goes to the other endpoint (as
    Istio's previous-hosts predicate): perTryTimeout + 1 retry means every request succeeds."""
    proxy: TrafficProxy = env["proxy"]
    # 12 requests: the module's retry budget (20% + 1/s over 10 s) always covers 12 retries,
    # whichever endpoint the balancer tries first (20 ran past it about one run in fifty).
    replies = [await call(session, proxy, "hung") for _ in range(12)]
    assert [(r.status, r.version) for r in replies] == [(200, "ok")] * 12
    retries = await proxy.metric("ami_retries_total", destination_service="hung")
    assert retries == len(env["hung"].requests) >= 1


@pytest.mark.parametrize(("host", "tries"), [
    ("r5xx", 3),  # 500, 500, then 200
    ("rgw", 2),  # 502 is a gateway error
    ("rreset", 2),  # connection reset before any answer
    ("rcodes", 2),  # 409 is listed
])
async def test_retry_conditions(env: dict[str, Any], session: aiohttp.ClientSession, host: str,
                                tries: int) -> None:
    """Each declared retryOn condition turns early failures into a success, counted as retries."""
    proxy: TrafficProxy = env["proxy"]
    reply = await call(session, proxy, host)
    assert reply.status == 200
    assert len(env[host].requests) == tries
    assert await proxy.metric("ami_retries_total", destination_service=host) == tries - 1


async def test_connect_failure_is_retried(env: dict[str, Any],
                                          session: aiohttp.ClientSession) -> None:
    """With retryOn connect-failure, a dead endpoint's failures are retried on the live one."""
    proxy: TrafficProxy = env["proxy"]
    replies = [await call(session, proxy, "cf") for _ in range(4)]
    assert [r.status for r in replies] == [200] * 4
    assert await proxy.metric("ami_retries_total", destination_service="cf") >= 1


async def test_gateway_error_does_not_retry_500(env: dict[str, Any],
                                                session: aiohttp.ClientSession) -> None:
    """retryOn gateway-error retries 502/503/504 only: a 500 reaches the client untouched."""
    reply = await call(session, env["proxy"], "rgw500")
    assert reply.status == 500
    assert len(env["rgw500"].requests) == 1


@pytest.mark.parametrize(("host", "status", "reason"), [
    ("none", 503, None),
    ("nonereset", 502, "upstream_reset"),
])
async def test_no_retries_unless_declared(env: dict[str, Any], session: aiohttp.ClientSession,
                                          host: str, status: int, reason: str | None) -> None:
    """Without a retries block a failed first try is the answer (one request upstream)."""
    proxy: TrafficProxy = env["proxy"]
    reply = await call(session, proxy, host)
    assert (reply.status, reply.reason) == (status, reason)
    assert len(env[host.replace("nonereset", "none-reset")].requests) == 1
    assert await proxy.metric("ami_retries_total", destination_service=host) == 0


async def test_post_is_retried_only_when_allowed(env: dict[str, Any],
                                                 session: aiohttp.ClientSession) -> None:
    """POST is not retried by default; with allowNonIdempotent it is, with its body replayed."""
    proxy: TrafficProxy = env["proxy"]
    plain = await call(session, proxy, "post", method="POST", data=b"order=1")
    assert plain.status == 500 and len(env["post"].requests) == 1
    allowed = await call(session, proxy, "postok", method="POST", data=b"order=2")
    assert allowed.status == 200
    assert [r.body for r in env["post-ok"].requests] == [b"order=2", b"order=2"]
    assert await proxy.metric("ami_retries_total", destination_service="postok") == 1


async def test_retry_budget_exhaustion_is_counted(env: dict[str, Any],
                                                  session: aiohttp.ClientSession) -> None:
    """Past 20% of requests + 1/s x 10 s, retries are refused and counted as budget exhausted."""
    proxy: TrafficProxy = env["proxy"]
    n = 60
    replies = await call_many(session, proxy, "budget", n, concurrency=4)
    assert all(r.status == 500 for r in replies)
    retries = await proxy.metric("ami_retries_total", destination_service="budget")
    exhausted = await proxy.metric("ami_retry_budget_exhausted_total",
                                   destination_service="budget")
    assert len(env["budget"].requests) == n + retries
    assert retries + exhausted == n
    assert 10 <= retries <= 0.2 * n + 10 + 1, retries


async def test_circuit_breaker_overflow(env: dict[str, Any],
                                        session: aiohttp.ClientSession) -> None:
    """maxConnections 1 + maxPendingRequests 1: of 3 concurrent slow requests one overflows."""
    proxy: TrafficProxy = env["proxy"]
    backend: TrafficBackend = env["cb"]
    replies = await asyncio.gather(*(call(session, proxy, "cb") for _ in range(3)))
    statuses = sorted((r.status, r.reason) for r in replies)
    assert statuses == [(200, None), (200, None), (503, "overflow")]
    assert backend.connections == 1 and backend.max_active == 1
    assert await proxy.metric("ami_circuit_breaker_overflow_total",
                              destination_service="cb") == 1
    assert await proxy.metric("ami_requests_total", destination_service="cb",
                              response_flags="overflow") == 1


async def test_breaker_queue_keeps_each_request_in_its_subset(
        env: dict[str, Any], session: aiohttp.ClientSession) -> None:
    """With one connection for the service, a v1 request queued behind a v2 request is not
    handed the v2 connection when it frees up: it still reaches v1."""
    proxy: TrafficProxy = env["proxy"]
    v2: TrafficBackend = env["cbs-v2"]
    jason = asyncio.create_task(call(session, proxy, "cbs", headers={"end-user": "jason"}))
    end = time.monotonic() + 5
    while v2.active == 0:
        assert time.monotonic() < end, "the v2 request never arrived"
        await asyncio.sleep(0.01)  # pacing of a deadline-bounded poll, not a wait
    other = await call(session, proxy, "cbs")  # queued: the only connection is v2's
    assert ((await jason).version, other.version) == ("v2", "v1")
    assert [len(env[f"cbs-{v}"].requests) for v in ("v1", "v2")] == [1, 1]


async def test_idle_connection_to_another_subset_does_not_block(
        env: dict[str, Any], session: aiohttp.ClientSession) -> None:
    """With one connection for the service, the idle keep-alive connection left by a v2
    request gives way to a v1 request instead of making it wait for the idle timeout."""
    proxy: TrafficProxy = env["proxy"]
    first = await call(session, proxy, "cbi", headers={"end-user": "jason"})
    second = await call(session, proxy, "cbi")  # route timeout 3 s, idle timeout 60 s
    assert [(r.status, r.version) for r in (first, second)] == [(200, "v2"), (200, "v1")]


async def test_outlier_is_ejected_until_its_time_is_up(env: dict[str, Any],
                                                       session: aiohttp.ClientSession) -> None:
    """After 2 consecutive 5xx an endpoint gets no traffic for ~1 s, then is tried again."""
    proxy: TrafficProxy = env["proxy"]
    bad: TrafficBackend = env["ol-bad"]
    while len(bad.requests) < 2:  # round robin: at most 4 requests
        ejected_at = time.monotonic()  # before the call that ejects it: the ejection is later
        await call(session, proxy, "ol")
    assert await proxy.metric("ami_outlier_ejections_total", destination_service="ol") == 1
    # The 1 s is the proxy's: a loaded machine may not fit ten calls in it, and a call made
    # after it ended may rightly go to `bad`. So a call counts as made during the ejection when
    # the proxy still shows the endpoint ejected after it answered (the ejection is one span).
    async def still_ejected() -> bool:
        health = json.loads((await proxy.aget("/config_dump"))[1])["endpointHealth"]["ol"]
        [endpoint] = [e for e in health["endpoints"] if e["address"] == bad.address]
        return bool(endpoint["status"] == "EJECTED")

    during = []
    while len(during) < 10:
        reply = await call(session, proxy, "ol")
        if not await still_ejected():
            break  # made (perhaps) after the ejection ended: not evidence either way
        during.append(reply)
        assert len(bad.requests) == 2, "a request reached the ejected endpoint"
    # two are enough to have reached `bad` in turn (round robin) had it not been ejected
    assert len(during) >= 2, "the machine fitted fewer than two calls in the 1 s ejection"
    assert {(r.status, r.version) for r in during} == {(200, "good")}
    deadline = ejected_at + 5.0
    while len(bad.requests) == 2 and time.monotonic() < deadline:
        await call(session, proxy, "ol")
        await asyncio.sleep(0.02)  # pacing of a deadline-bounded poll, not a wait
    back_after = time.monotonic() - ejected_at
    assert len(bad.requests) == 3, "the endpoint never returned from ejection"
    assert back_after > 0.8, back_after  # not before the ejection time (a lower bound only)


async def test_route_timeouts_count_toward_ejection(env: dict[str, Any],
                                                  session: aiohttp.ClientSession) -> None:
    """A route timeout (504 `timeout`) counts as an error of the endpoint that did not answer
    (as Envoy's local-origin timeout): two in a row eject the hung endpoint."""
    proxy: TrafficProxy = env["proxy"]
    hung: TrafficBackend = env["to-hung"]
    replies = []
    while len(hung.requests) < 2:  # round robin: at most 4 requests
        replies.append(await call(session, proxy, "to"))
    assert {(r.status, r.reason) for r in replies} == {(504, "timeout"), (200, None)}
    assert await proxy.metric("ami_outlier_ejections_total", destination_service="to") == 1
    after = [await call(session, proxy, "to") for _ in range(6)]
    assert {(r.status, r.version) for r in after} == {(200, "ok")}
    assert len(hung.requests) == 2


async def test_every_endpoint_ejected_gives_503_no_healthy_upstream(
        env: dict[str, Any], session: aiohttp.ClientSession) -> None:
    """Once outlier detection has ejected both endpoints, requests get 503
    `no_healthy_upstream` from the proxy and no endpoint is contacted."""
    proxy: TrafficProxy = env["proxy"]
    first = [await call(session, proxy, "allout") for _ in range(2)]
    # Each 500 ejects its endpoint at once, so the balancer must pick the other one second.
    assert [(r.status, r.reason) for r in first] == [(500, None), (500, None)]
    assert (len(env["out-a"].requests), len(env["out-b"].requests)) == (1, 1)
    assert await proxy.metric("ami_outlier_ejections_total", destination_service="allout") == 2
    after = [await call(session, proxy, "allout") for _ in range(3)]
    assert [(r.status, r.reason) for r in after] == [(503, "no_healthy_upstream")] * 3
    assert all(str(r.body).startswith("no_healthy_upstream:") for r in after)
    assert (len(env["out-a"].requests), len(env["out-b"].requests)) == (1, 1)
    assert await proxy.metric("ami_requests_total", destination_service="allout",
                              response_code="503", response_flags="no_healthy_upstream") == 3


@pytest.mark.parametrize("host", [
    "empty",  # a service with no endpoints at all
    "nosubset",  # a route to a subset (v3) that no endpoint of the service carries
])
async def test_no_endpoint_gives_503_no_healthy_upstream(env: dict[str, Any],
                                                        session: aiohttp.ClientSession,
                                                        host: str) -> None:
    """A destination without any endpoint answers 503 `no_healthy_upstream` with the metric flag."""
    proxy: TrafficProxy = env["proxy"]
    before = len(env["cf-good"].requests)
    reply = await call(session, proxy, host)
    assert (reply.status, reply.reason) == (503, "no_healthy_upstream")
    assert len(env["cf-good"].requests) == before
    service = "cfgood" if host == "nosubset" else host
    assert await proxy.metric("ami_requests_total", destination_service=service,
                              response_code="503", response_flags="no_healthy_upstream") == 1


def _has_seen(backend: TrafficBackend, n: int) -> bool:
    return len(backend.requests) == n


BUDGET_HOSTS = ("failing-a", "failing-b", "failing-c")  # a budget each: one per service


@pytest.fixture(scope="module")
def default_budget(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    """A proxy whose MeshConfig sets no retryBudget; per service of BUDGET_HOSTS an endpoint
    that holds requests until its gate opens and then fails them, behind a route that retries
    5xx once."""
    hub = Backends()
    failing = {host: start_backend(hub, status=500, gate=hub.call(_events(1))[0])
               for host in BUDGET_HOSTS}
    proxy = TrafficProxy(
        tmp_path_factory.mktemp("default-budget"),
        {host: {"endpoints": endpoints(b)} for host, b in failing.items()},
        [_route(host, retries={"attempts": 1, "retryOn": ["5xx"],
                               "backoff": {"baseInterval": "1ms"}}) for host in failing])
    for p in started(proxy, hub):
        yield {"proxy": p, "hub": hub, "failing": failing}


async def test_default_retry_budget_caps_retries(default_budget: dict[str, Any]) -> None:
    """Without a declared budget the default (20% of requests + 10/s over 10 s) holds: of 150
    failing requests, all counted before any retry, exactly 20% x 150 + 100 = 130 are retried
    and 20 refused.

    The budget counts in 1 s slots of the monotonic clock this process shares with the proxy
    and forgets a slot 10 slots on; the counts are exact when no slot this run filled was
    forgotten, which the clock tells. A run that outlasted that (a loaded machine) proves only
    what holds anyway, and the next service (a fresh budget) is tried."""
    proxy: TrafficProxy = default_budget["proxy"]
    hub: Backends = default_budget["hub"]
    n = 150
    connector = aiohttp.TCPConnector(limit=0)  # all 150 in flight at once
    async with aiohttp.ClientSession(connector=connector) as session:
        for host, failing in default_budget["failing"].items():
            start = time.monotonic()
            in_flight = asyncio.gather(*(call(session, proxy, host, timeout=120)
                                         for _ in range(n)))
            await eventually(partial(_has_seen, failing, n), 60)
            hub.loop.call_soon_threadsafe(failing.gate.set)  # every request counted: fail them
            replies = await in_flight
            end = time.monotonic()
            assert all((r.status, r.reason) == (500, None) for r in replies)
            retries = await proxy.metric("ami_retries_total", destination_service=host)
            exhausted = await proxy.metric("ami_retry_budget_exhausted_total",
                                           destination_service=host)
            assert retries + exhausted == n and len(failing.requests) == n + retries
            if math.floor(end) < math.floor(start) + 10:  # no slot of this run forgotten
                assert (retries, exhausted) == (130, 20)
                return
    pytest.fail(f"every run of {n} requests outlasted the 10 s budget window")


# --- a retry that waits while the rest of a streamed body arrives ----------------------------
@pytest.fixture
def replay_env(tmp_path: Any) -> Iterator[dict[str, Any]]:
    """`rb`: one raw endpoint behind maxConnections 1 that fails the first PUT with 503 once
    told to and holds `GET /block` until told to; every request is mirrored to `rbshadow`."""
    from tests.proxyharness import RawBackend, read_body, read_head

    hub = Backends()
    fail_put, release_block = hub.call(_events(2))
    puts: list[Any] = []

    async def handler(raw: RawBackend, reader: asyncio.StreamReader,
                      writer: asyncio.StreamWriter) -> None:
        while (head := await read_head(reader)) is not None:
            raw.requests.append(head)
            if head.target == "/block":
                await release_block.wait()
            elif not puts:
                puts.append(head)
                await fail_put.wait()  # answer before reading the body, then close
                writer.write(b"HTTP/1.1 503 Service Unavailable\r\ncontent-length: 0\r\n"
                             b"connection: close\r\n\r\n")
                await writer.drain()
                return
            else:
                head.body = await read_body(reader, head, until_close=False)
                puts.append(head)
            writer.write(b"HTTP/1.1 200 OK\r\ncontent-length: 0\r\n\r\n")
            await writer.drain()

    main = hub.raw(handler)
    shadow = start_backend(hub, version="shadow")
    services = {
        "rb": {"endpoints": [{"address": f"127.0.0.1:{main.port}", "labels": {"version": "v1"}}],
               "policy": {"connectionPool": {"maxConnections": 1, "maxPendingRequests": 10}}},
        "rbshadow": {"endpoints": endpoints(shadow)},
    }
    routes = [{"host": "rb", "rules": [{
        "backends": [{}], "mirror": {"service": "rbshadow"},
        "retries": {"attempts": 1, "retryOn": ["5xx"], "backoff": {"baseInterval": "1ms"}}}]}]
    proxy = TrafficProxy(tmp_path, services, routes)
    for p in started(proxy, hub):
        yield {"proxy": p, "hub": hub, "main": main, "shadow": shadow, "puts": puts,
               "fail_put": fail_put, "release_block": release_block}


async def _events(n: int) -> list[asyncio.Event]:
    return [asyncio.Event() for _ in range(n)]


async def test_retry_waiting_for_a_connection_resends_the_whole_streamed_body(
        replay_env: dict[str, Any], session: aiohttp.ClientSession) -> None:
    """A PUT whose first try failed after 40 KiB of its body went out, and whose retry waits
    for a connection while the next 30 KiB arrive (past the 64 KiB replay limit), must reach
    the endpoint whole on the retry: the retry was promised the first 40 KiB."""
    from tests.proxyharness import read_response

    proxy: TrafficProxy = replay_env["proxy"]
    hub: Backends = replay_env["hub"]
    main, shadow, puts = replay_env["main"], replay_env["shadow"], replay_env["puts"]
    first, second = b"a" * 40_000, b"b" * 30_000
    reader, writer = await asyncio.open_connection("127.0.0.1", proxy.outbound)
    try:
        writer.write(b"PUT /upload HTTP/1.1\r\nHost: rb\r\ntransfer-encoding: chunked\r\n\r\n"
                     + b"%x\r\n%s\r\n" % (len(first), first))
        await eventually(lambda: len(main.requests) == 1)
        blocker = asyncio.create_task(call(session, proxy, "rb", "/block"))

        async def pool_active() -> int:
            pools = (await proxy.stats())["upstream_pools"]
            return sum(p["active_requests"] for p in pools if p["address"].endswith(
                f":{main.port}"))

        end = time.monotonic() + 5
        while await pool_active() != 2:  # the PUT in flight, the blocker queued for the slot
            assert time.monotonic() < end, "the blocker never queued"
        # The 503 frees the only connection slot: the queued blocker takes it, so the PUT's
        # retry has to wait for a connection.
        hub.loop.call_soon_threadsafe(replay_env["fail_put"].set)
        await eventually(lambda: len(main.requests) == 2 and main.requests[1].target == "/block")
        writer.write(b"%x\r\n%s\r\n0\r\n\r\n" % (len(second), second))
        # The mirror is fed from the same call that handles each body chunk: once the shadow
        # has the whole body, the proxy has taken in all of it while the retry still waits.
        await eventually(lambda: any(r.first.startswith("PUT") for r in shadow.requests))
        assert [r.body for r in shadow.requests if r.first.startswith("PUT")] == [first + second]
        hub.loop.call_soon_threadsafe(replay_env["release_block"].set)
        response = await asyncio.wait_for(read_response(reader), 10)
        assert (await blocker).status == 200
    finally:
        writer.close()
    assert response.status == 200
    assert len(puts) == 2
    assert puts[1].body == first + second


async def test_a_body_that_came_during_a_fault_delay_is_retried_and_mirrored(
        env: dict[str, Any], session: aiohttp.ClientSession) -> None:
    """A POST whose body arrived while a fault delay held it back: the first try carries it,
    and so do the retry (after a 503) and the mirrored copy, not only the head."""
    proxy: TrafficProxy = env["proxy"]
    primary, shadow = env["fdpost"], env["fdpost-shadow"]
    reply = await call(session, proxy, "fdpost", "/fd", method="POST", data=b"hello-body")
    assert (reply.status, reply.version) == (200, "v1")
    assert [r.body for r in primary.requests] == [b"hello-body", b"hello-body"]
    await eventually(lambda: len(shadow.requests) == 1)
    assert shadow.requests[0].body == b"hello-body"


async def test_a_try_timed_out_in_the_connection_queue_does_not_eject(
        env: dict[str, Any], session: aiohttp.ClientSession) -> None:
    """Per-try timeouts spent waiting for the service's one connection asked no endpoint:
    outlier detection does not count them, so the endpoint is not ejected for another
    request's slowness and serves the next request."""
    proxy: TrafficProxy = env["proxy"]
    backend = env["qo"]
    hold = asyncio.create_task(call(session, proxy, "qo", "/hold", headers={"x-hold": "1"}))
    await eventually(lambda: backend.active == 1, what="the held request at the backend")
    queued = await asyncio.gather(*(call(session, proxy, "qo", f"/q{i}") for i in range(2)))
    assert [(r.status, r.reason) for r in queued] == [(504, "timeout")] * 2
    assert (await hold).status == 200
    # (by the rule without a per-try timeout: the backend takes 0.8 s for every request)
    after = await call(session, proxy, "qo", "/after", headers={"x-hold": "1"})
    assert (after.status, after.reason) == (200, None)
    assert await proxy.metric("ami_outlier_ejections_total", destination_service="qo") == 0
    assert [r.target for r in backend.requests] == ["/hold", "/after"]
