"""Every route and destination policy over HTTP/2, end to end with real proxy processes.

One static outbound proxy serves plain HTTP/2 requests (a raw `h2` client, `tests.h2app`) and
gRPC calls (grpcio, `tests.grpcapp`) to h2c servers of both kinds, through routes that each
exercise one policy: retries (body replay, per-try timeout, gRPC calls on 5xx, reset and
connect failure), the retry budget, circuit breaking, outlier detection on gRPC failures,
balancing per call, rate limits, faults, timeouts, the stream idle timeout, rewrites,
redirects, CORS, header edits, sourceLabels, tracing, tap and metrics, failover, mirroring.
A second, inbound proxy checks AuthorizationPolicy and RequestAuthentication (JWT).
"""

from __future__ import annotations

import asyncio
import base64
import json
import threading
import time
from collections.abc import Iterator
from typing import Any

import grpc
import jwt
import pytest
import yaml
from cryptography.hazmat.primitives.asymmetric import rsa
from jwt.algorithms import RSAAlgorithm

from tests.grpcapp import EchoServer, channel, method
from tests.h2app import GRPC, GRPC_MESSAGE, H2Client, H2Server, h2_request
from tests.proxyharness import ProxyProcess, eventually, free_port, metric_value
from tests.test_mtls_static import sid
from tests.test_proxy_http2 import Pair, pair  # noqa: F401  # the mTLS hop's fixture

DEADLINE = 10.0


class Loop:
    """The servers' event loop, in a thread of its own."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        started = threading.Event()

        def run() -> None:
            asyncio.set_event_loop(self.loop)
            started.set()
            self.loop.run_forever()

        self.thread = threading.Thread(target=run, daemon=True)
        self.thread.start()
        assert started.wait(DEADLINE)

    def run(self, coro: Any) -> Any:
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(DEADLINE)

    def close(self) -> None:
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(DEADLINE)


def _ep(port: int, version: str = "v1") -> dict[str, Any]:
    return {"address": f"127.0.0.1:{port}", "labels": {"version": version}}


class Env:
    def __init__(self, proxy: ProxyProcess, servers: dict[str, Any]) -> None:
        self.proxy = proxy
        self.s = servers

    @property
    def port(self) -> int:
        return self.proxy.outbound

    async def metric(self, name: str, **labels: str) -> float:
        return metric_value(await self.proxy.metrics(), name, **labels)


H2_NAMES = ("a", "b", "c", "hang", "cc", "one", "late", "shadow", "retry", "budget", "lr",
            "lr2", "fo", "rw", "hdr", "idle")
GRPC_NAMES = ("g1", "g2", "gbad", "gshadow")


@pytest.fixture(scope="module")
def env(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Env]:
    loop = Loop()
    servers: dict[str, Any] = {}
    for name in H2_NAMES:
        kw: dict[str, Any] = {}
        if name == "hang":
            kw["hang_all"] = True
        if name == "budget":
            kw["always"] = 503
        if name == "late":
            kw["late_grpc"] = "14"
        if name == "one":
            kw["max_streams"] = 1
        servers[name] = loop.run(H2Server(name, **kw).start())
    for name in GRPC_NAMES:
        servers[name] = loop.run(EchoServer(name).start())
    servers["gbad"].down = True
    s = servers
    dead = free_port()
    rr = {"loadBalancer": "ROUND_ROBIN"}
    services = {
        "plain": {"endpoints": [_ep(s["a"].port)]},
        "retry": {"endpoints": [_ep(s["retry"].port)]},
        "pertry": {"endpoints": [_ep(s["hang"].port), _ep(s["b"].port)], "policy": rr},
        "grpcretry": {"endpoints": [_ep(dead), _ep(s["c"].port)], "policy": rr},
        "budget": {"endpoints": [_ep(s["budget"].port)]},
        "cbreq": {"endpoints": [_ep(s["a"].port)],
                  "policy": {"connectionPool": {"maxConcurrentRequests": 1}}},
        "cbconn": {"endpoints": [_ep(s["cc"].port)],
                   "policy": {"connectionPool": {"maxConnections": 1}}},
        "cbpend": {"endpoints": [_ep(s["one"].port)],
                   "policy": {"connectionPool": {"maxConnections": 1,
                                                 "maxPendingRequests": 1}}},
        "ol": {"endpoints": [_ep(s["g1"].port), _ep(s["gbad"].port)], "policy": {
            **rr, "outlierDetection": {"consecutive5xxErrors": 2, "interval": "1s",
                                       "baseEjectionTime": "1m", "maxEjectionPercent": 50}}},
        "ollate": {"endpoints": [_ep(s["b"].port), _ep(s["late"].port)], "policy": {
            **rr, "outlierDetection": {"consecutive5xxErrors": 2, "interval": "1s",
                                       "baseEjectionTime": "1m", "maxEjectionPercent": 50}}},
        "grpclate": {"endpoints": [_ep(s["late"].port)]},  # UNAVAILABLE, always
        "lr": {"endpoints": [_ep(s["lr"].port), _ep(s["lr2"].port)],
               "policy": {"loadBalancer": "LEAST_REQUEST"}},
        "ewma": {"endpoints": [_ep(s["lr"].port), _ep(s["lr2"].port)],
                 "policy": {"loadBalancer": "PEAK_EWMA"}},
        "hash": {"endpoints": [_ep(s["g1"].port), _ep(s["g2"].port)],
                 "policy": {"loadBalancer": "CONSISTENT_HASH",
                            "consistentHash": {"header": "x-user"}}},
        "fault": {"endpoints": [_ep(s["a"].port)]},
        "to": {"endpoints": [_ep(s["a"].port)]},
        "idle": {"endpoints": [_ep(s["idle"].port)]},
        "rw": {"endpoints": [_ep(s["rw"].port)]},
        "redir": {"endpoints": [_ep(s["a"].port)]},
        "cors": {"endpoints": [_ep(s["a"].port)]},
        "hdr": {"endpoints": [_ep(s["hdr"].port)]},
        "src": {"endpoints": [_ep(s["a"].port, "va"), _ep(s["b"].port, "vb")],
                "subsets": [{"name": "va", "labels": {"version": "va"}},
                            {"name": "vb", "labels": {"version": "vb"}}]},
        "fo": {"endpoints": [_ep(free_port()), _ep(s["fo"].port)], "policy": rr},
        "mirrored": {"endpoints": [_ep(s["g1"].port)]},
        "mirrorh2": {"endpoints": [_ep(s["a"].port)]},
        "shadowsvc": {"endpoints": [_ep(s["gshadow"].port)]},
        "shadowh2": {"endpoints": [_ep(s["shadow"].port)]},
        "fdpost": {"endpoints": [_ep(s["retry"].port)]},
    }

    def rule(**kw: Any) -> dict[str, Any]:
        return {"backends": [{}], **kw}

    routes = [
        {"host": "retry", "rules": [rule(retries={
            "attempts": 2, "retryOn": ["5xx"], "allowNonIdempotent": True})]},
        {"host": "pertry", "rules": [rule(timeout="5s", retries={
            "attempts": 1, "perTryTimeout": "300ms", "retryOn": ["5xx"]})]},
        {"host": "grpcretry", "rules": [rule(retries={
            # (3: the dead endpoint may take a try before each of the other failures)
            "attempts": 3, "retryOn": ["5xx", "reset", "connect-failure"],
            "allowNonIdempotent": True})]},
        {"host": "budget", "rules": [rule(retries={"attempts": 3, "retryOn": ["5xx"]})]},
        {"host": "fault", "rules": [
            {"matches": [{"path": {"prefix": "/delay"}}], "backends": [{}],
             "fault": {"delay": {"fixedDelay": "50ms", "percent": 100}}},
            rule(fault={"delay": {"fixedDelay": "50ms", "percent": 100},
                        "abort": {"httpStatus": 503, "percent": 100}})]},
        {"host": "to", "rules": [rule(timeout="300ms")]},
        {"host": "rw", "rules": [
            {"matches": [{"path": {"prefix": "/old"}}], "backends": [{}],
             "rewrite": {"uri": "/new", "authority": "rewritten.internal"}}]},
        {"host": "redir", "rules": [{"redirect": {"uri": "/moved", "authority": "there"}}]},
        {"host": "cors", "rules": [rule(cors={
            "allowOrigins": [{"exact": "https://app.example"}],
            "allowMethods": ["GET", "POST"], "allowHeaders": ["x-custom"]})]},
        {"host": "hdr", "rules": [rule(headers={
            # (values padded: HTTP/2 forbids surrounding whitespace, they go out stripped)
            "request": {"set": {"X-Set-Me": " one"}, "add": {"X-Added": "two\t"},
                        "remove": ["x-drop-me"]},
            "response": {"set": {"X-Resp-Set": "r "}, "remove": ["x-served-by"]}})]},
        {"host": "src", "rules": [
            {"matches": [{"sourceLabels": {"version": "v9"}}], "backends": [{"subset": "vb"}]},
            {"matches": [{"sourceLabels": {"version": "v1"}}], "backends": [{"subset": "va"}]},
            {"backends": [{"subset": "vb"}]}]},
        {"host": "mirrored", "rules": [rule(mirror={"service": "shadowsvc", "percent": 100})]},
        {"host": "mirrorh2", "rules": [rule(mirror={"service": "shadowh2", "percent": 100})]},
        {"host": "fdpost", "rules": [rule(
            timeout="5s", mirror={"service": "shadowh2", "percent": 100},
            fault={"delay": {"fixedDelay": "200ms", "percent": 100}},
            retries={"attempts": 1, "retryOn": ["5xx"], "allowNonIdempotent": True})]},
    ]
    tmp = tmp_path_factory.mktemp("h2pol")
    proxy = ProxyProcess(tmp, {}, args=("--access-log", "on", "--stream-idle-timeout", "1"))
    proxy.config.write_text(yaml.safe_dump({
        "version": "h2pol-1",
        "node": {"service": "client", "labels": {"version": "v1"}},
        "listeners": {"outbound": f"127.0.0.1:{proxy.outbound}",
                      "admin": f"127.0.0.1:{proxy.admin}"},
        "mesh": {"retryBudget": {"percent": 20, "minRetriesPerSecond": 1},
                 # only requests arriving sampled are traced (the collector is not there)
                 "tracing": {"sampling": 0.0, "otlpEndpoint": f"http://127.0.0.1:{dead}"}},
        "services": services,
        "routes": routes,
    }))
    proxy.start()
    try:
        yield Env(proxy, servers)
    finally:
        proxy.stop()
        for server in servers.values():
            loop.run(server.stop())
        loop.close()


def _grpc_reason(err: grpc.aio.AioRpcError) -> str | None:
    for key, value in (*(err.initial_metadata() or ()), *(err.trailing_metadata() or ())):
        if key == "x-ami-reason":
            return str(value)
    return None


# --- retries ------------------------------------------------------------------------------
async def test_retry_replays_the_request_body(env: Env) -> None:
    """A POST (allowNonIdempotent) answered 503 is sent again with its whole body and its
    trailers; the client gets the second answer."""
    resp = await h2_request(env.port, "retry", "/fail-once/post", method="POST",
                            body=b"the body", trailers=[(b"x-checksum", b"42")])
    assert resp.status == 200
    tries = [r for r in env.s["retry"].requests if r.path == "/fail-once/post"]
    assert len(tries) == 2
    assert [t.body for t in tries] == [b"the body", b"the body"]
    assert [t.trailers for t in tries] == [[(b"x-checksum", b"42")]] * 2
    assert resp.json()["body"] == "the body"


async def test_per_try_timeout_moves_on_to_another_endpoint(env: Env) -> None:
    """perTryTimeout gives up on a hung endpoint and retries (a PUT) on the other one."""
    for i in range(4):
        resp = await h2_request(env.port, "pertry", f"/pt/{i}", method="PUT", body=b"x")
        assert resp.status == 200 and resp.get("x-served-by") == "b"
    assert len(env.s["hang"].requests) >= 1
    await eventually(lambda: env.s["hang"].hanging == 0, DEADLINE)  # the hung tries reset


async def test_grpc_call_retried_on_5xx_reset_and_connect_failure(env: Env) -> None:
    """gRPC-shaped POSTs on a route retrying 5xx, reset and connect-failure (with
    allowNonIdempotent): a dead endpoint, a reset stream and a 503 are each retried."""
    for path in ("/fail-once/g", "/reset-once/g", "/plain/g"):
        resp = await h2_request(env.port, "grpcretry", path, method="POST", headers=GRPC,
                                body=GRPC_MESSAGE)
        assert resp.status == 200 and resp.get("x-served-by") == "c", path
    paths = env.s["c"].paths()
    assert paths.count("/fail-once/g") == 2 and paths.count("/reset-once/g") == 2
    for seen in env.s["c"].requests:
        assert seen.body == GRPC_MESSAGE


async def test_retry_budget_limits_grpc_retries(env: Env) -> None:
    """A destination failing every call: the budget (20%, 1/s) stops most retries."""
    async with H2Client(env.port) as client:
        answers = await asyncio.gather(*(client.request("budget", f"/b/{i}")
                                         for i in range(20)))
    assert {a.status for a in answers} == {503}
    assert len(env.s["budget"].requests) < 20 * 2
    assert await env.metric("ami_retry_budget_exhausted_total",
                            destination_service="budget") > 0


# --- circuit breaking ---------------------------------------------------------------------
async def test_max_concurrent_requests_overflows(env: Env) -> None:
    async with H2Client(env.port) as client:
        held = asyncio.create_task(client.request("cbreq", "/hang/cb"))
        await eventually(lambda: env.s["a"].hanging >= 1, DEADLINE)
        resp = await client.request("cbreq", "/x")
        assert (resp.status, resp.get("x-ami-reason")) == (503, "overflow")
        held.cancel()
    assert await env.metric("ami_circuit_breaker_overflow_total",
                            destination_service="cbreq") == 1


async def test_max_connections_holds_for_concurrent_http2_requests(env: Env) -> None:
    """maxConnections: 1 — twenty requests arriving at once share one HTTP/2 connection."""
    async with H2Client(env.port) as client:
        answers = await asyncio.gather(*(client.request("cbconn", f"/c/{i}")
                                         for i in range(20)))
    assert {a.status for a in answers} == {200}
    assert env.s["cc"].connections == 1


async def test_pending_request_gets_the_stream_freed(env: Env) -> None:
    """One connection allowed, its server taking one stream at a time: a second request
    waits (maxPendingRequests: 1) and goes when the first stream ends; a third overflows."""
    async with H2Client(env.port) as client:
        first = asyncio.create_task(client.request("cbpend", "/slow/0.5"))
        await eventually(lambda: len(env.s["one"].requests) == 1, DEADLINE)
        # (sent in this order on one connection: the second is queued, the third finds
        # the queue full)
        second = client.send("cbpend", "/second")
        third = await client.request("cbpend", "/third")
        assert (third.status, third.get("x-ami-reason")) == (503, "overflow")
        assert (await first).status == 200
        assert (await asyncio.wait_for(second, DEADLINE)).status == 200
    assert env.s["one"].connections == 1


# --- outlier detection and balancing ------------------------------------------------------
async def test_outlier_detection_ejects_a_grpc_unavailable_endpoint(env: Env) -> None:
    async with channel(env.port, "ol") as ch:
        unary = method(ch, "Unary")
        for _ in range(6):
            try:
                await unary(b"o", timeout=DEADLINE)
            except grpc.aio.AioRpcError as err:
                assert err.code() == grpc.StatusCode.UNAVAILABLE
        assert await env.metric("ami_outlier_ejections_total", destination_service="ol") == 1
        answers = [json.loads(await unary(b"o", timeout=DEADLINE))["server"] for _ in range(6)]
    assert set(answers) == {"g1"}


async def test_outlier_detection_sees_grpc_status_in_trailers(env: Env) -> None:
    """UNAVAILABLE after a response message (grpc-status in trailers, not trailers-only)
    counts as a failure of the endpoint too, as in Envoy."""
    async with H2Client(env.port) as client:
        for i in range(6):
            await client.request("ollate", f"/l/{i}", method="POST", headers=GRPC,
                                 body=GRPC_MESSAGE)
        assert await env.metric("ami_outlier_ejections_total",
                                destination_service="ollate") == 1
        answers = [await client.request("ollate", "/after", method="POST", headers=GRPC,
                                        body=GRPC_MESSAGE) for _ in range(4)]
    assert {a.get("x-served-by") for a in answers} == {"b"}


@pytest.mark.parametrize("host", ["lr", "ewma"])
async def test_least_loaded_balancing_per_request(env: Env, host: str) -> None:
    """LEAST_REQUEST and PEAK_EWMA weigh in-flight requests per HTTP/2 stream: with one
    request held on an endpoint, the next ones on the same connection go to the other (for
    PEAK_EWMA the first: after it, each answer's time weighs too, and on a loaded machine one
    slow answer from the other endpoint may make the busy one the cheaper)."""
    servers = (env.s["lr"], env.s["lr2"])
    async with H2Client(env.port) as client:
        held = asyncio.create_task(client.request(host, "/hang/held"))
        await eventually(lambda: sum(s.hanging for s in servers) == 1, DEADLINE)
        busy = next(s for s in servers if s.hanging)
        answers = [await client.request(host, f"/n/{i}") for i in range(6)]
        held.cancel()
        client.cancel(1)
    other = ({"lr", "lr2"} - {busy.name}).pop()
    served = [a.get("x-served-by") for a in answers]
    assert (set(served) == {other}) if host == "lr" else (served[0] == other), served
    await eventually(lambda: sum(s.hanging for s in servers) == 0, DEADLINE)


async def test_consistent_hash_per_call(env: Env) -> None:
    """CONSISTENT_HASH on a header: one client connection, each user's calls stay on one
    server, and the users spread over both."""
    async with channel(env.port, "hash") as ch:
        unary = method(ch, "Unary")
        where: dict[str, set[str]] = {}
        for user in range(16):
            for _ in range(3):
                answer = json.loads(await unary(b"h", metadata=(("x-user", f"u{user}"),),
                                                timeout=DEADLINE))
                where.setdefault(f"u{user}", set()).add(answer["server"])
    assert all(len(servers) == 1 for servers in where.values())
    assert set().union(*where.values()) == {"g1", "g2"}


# --- admission, faults, timeouts ----------------------------------------------------------
async def test_fault_delay_and_abort(env: Env) -> None:
    delayed = await h2_request(env.port, "fault", "/delay/x")
    assert delayed.status == 200
    aborted = await h2_request(env.port, "fault", "/abort", method="POST", headers=GRPC,
                               body=GRPC_MESSAGE)
    assert aborted.status == 200 and aborted.get("grpc-status") == "14"
    assert aborted.get("x-ami-reason") == "fault_injected"
    assert await env.metric("ami_faults_injected_total", destination_service="fault",
                            kind="delay") == 2
    assert await env.metric("ami_faults_injected_total", destination_service="fault",
                            kind="abort") == 1


async def test_route_timeout_and_request_timeout_header(env: Env) -> None:
    resp = await h2_request(env.port, "to", "/hang/route")
    assert (resp.status, resp.get("x-ami-reason")) == (504, "timeout")
    # a request may tighten its timeout (there is none on `plain`)
    resp = await h2_request(env.port, "plain", "/hang/header",
                            headers=[("x-ami-timeout-ms", "200")])
    assert (resp.status, resp.get("x-ami-reason")) == (504, "timeout")
    seen = [r for r in env.s["a"].requests if r.path == "/hang/header"]
    assert seen and seen[0].get("x-ami-timeout-ms") is None  # not passed on
    await eventually(lambda: env.s["a"].hanging == 0, DEADLINE)


async def test_stream_idle_timeout_on_a_hung_upstream(env: Env) -> None:
    resp = await h2_request(env.port, "idle", "/hang/idle")
    assert (resp.status, resp.get("x-ami-reason")) == (504, "stream_idle_timeout")
    await eventually(lambda: env.s["idle"].hanging == 0, DEADLINE)


# --- requests changed on the way ----------------------------------------------------------
async def test_rewrite_changes_path_and_authority(env: Env) -> None:
    resp = await h2_request(env.port, "rw", "/old/thing?q=1")
    assert resp.status == 200
    seen = env.s["rw"].requests[-1]
    assert seen.get(":path") == "/new/thing?q=1"
    assert seen.get(":authority") == "rewritten.internal"
    assert seen.get("host") is None


async def test_redirect(env: Env) -> None:
    resp = await h2_request(env.port, "redir", "/somewhere")
    assert resp.status == 301
    assert resp.get("location") == "http://there/moved"


async def test_cors_on_http2(env: Env) -> None:
    origin = ("origin", "https://app.example")
    simple = await h2_request(env.port, "cors", "/c", headers=[origin])
    assert simple.status == 200
    assert simple.get("access-control-allow-origin") == "https://app.example"
    preflight = await h2_request(env.port, "cors", "/c", method="OPTIONS", headers=[
        origin, ("access-control-request-method", "POST")])
    assert preflight.status == 200
    assert preflight.get("access-control-allow-methods") == "GET, POST"
    other = await h2_request(env.port, "cors", "/c", headers=[("origin", "https://evil")])
    assert other.status == 200 and other.get("access-control-allow-origin") is None
    assert other.get("vary") == "origin"


async def test_header_edits_go_out_lower_case(env: Env) -> None:
    """Names lower-cased, values stripped (h2's outbound normalisation is off: the proxy's)."""
    resp = await h2_request(env.port, "hdr", "/h", headers=[("x-drop-me", "1")])
    assert resp.status == 200
    assert resp.get("x-resp-set") == "r" and resp.get("x-served-by") is None
    assert all(n == n.lower() for n, _ in resp.headers)
    seen = env.s["hdr"].requests[-1]
    assert seen.get("x-set-me") == "one" and seen.get("x-added") == "two"
    assert seen.get("x-drop-me") is None
    assert all(n == n.lower() for n, _ in seen.headers)


async def test_source_labels_match(env: Env) -> None:
    resp = await h2_request(env.port, "src", "/s")
    assert resp.get("x-served-by") == "a"


async def test_connect_failure_fails_over_to_another_endpoint(env: Env) -> None:
    answers = [await h2_request(env.port, "fo", f"/f/{i}") for i in range(4)]
    assert [a.status for a in answers] == [200] * 4
    assert len(env.s["fo"].requests) == 4


async def test_trace_context_propagates(env: Env) -> None:
    """A sampled traceparent: the upstream gets a child of it (same trace, this proxy's
    span); an unsampled request carries the decision on."""
    trace_id, parent = "0af7651916cd43dd8448eb211c80319c", "b7ad6b7169203331"
    await h2_request(env.port, "plain", "/traced",
                     headers=[("traceparent", f"00-{trace_id}-{parent}-01")])
    seen = next(r for r in env.s["a"].requests if r.path == "/traced")
    _, sent_trace, span, flags = (seen.get("traceparent") or "").split("-")
    assert (sent_trace, flags) == (trace_id, "01") and span != parent
    assert seen.all("traceparent") == [seen.get("traceparent")]
    assert seen.get("x-b3-traceid") == trace_id
    await h2_request(env.port, "plain", "/untraced")
    seen = next(r for r in env.s["a"].requests if r.path == "/untraced")
    assert seen.get("x-b3-sampled") == "0" and seen.get("traceparent") is None


# --- observing ----------------------------------------------------------------------------
async def test_tap_and_metrics_see_http2_requests(env: Env) -> None:
    reader, writer = await asyncio.open_connection("127.0.0.1", env.proxy.admin)
    writer.write(b"GET /tap?service=plain&n=1 HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
    await asyncio.wait_for(reader.readuntil(b": tapping\n\n"), DEADLINE)
    resp = await h2_request(env.port, "plain", "/tapped")
    assert resp.status == 200
    line = await asyncio.wait_for(reader.readuntil(b"\n\n"), DEADLINE)
    while b"data: " not in line:
        line = await asyncio.wait_for(reader.readuntil(b"\n\n"), DEADLINE)
    event = json.loads(line.split(b"data: ", 1)[1])
    writer.close()
    assert (event["path"], event["status"], event["destination"]) == ("/tapped", 200, "plain")
    assert await env.metric("ami_requests_total", destination_service="plain",
                            response_code="200") >= 1


async def test_grpc_metrics_by_status(env: Env) -> None:
    """A call answered grpc-status 14 in trailers is counted with it. (Its own service: on
    `ollate` the outlier test may have ejected the endpoint that answers 14, and the call
    went to the other.)"""
    async with H2Client(env.port) as client:
        answer = await client.request("grpclate", "/m", method="POST", headers=GRPC,
                                      body=GRPC_MESSAGE)
    assert answer.status == 200
    assert await env.metric("ami_requests_total", destination_service="grpclate",
                            grpc_response_status="14") == 1


# --- mirroring ----------------------------------------------------------------------------
async def test_grpc_call_is_mirrored(env: Env) -> None:
    """A route mirror copies the gRPC call over HTTP/2 to the shadow service, whose server
    receives it with the `-shadow` authority; the client gets the primary's answer."""
    async with channel(env.port, "mirrored") as ch:
        answer = json.loads(await method(ch, "Unary")(b"copied", timeout=DEADLINE))
    assert answer["server"] == "g1"
    shadow = env.s["gshadow"]
    await eventually(lambda: b"copied" in shadow.received, DEADLINE)
    assert await env.metric("ami_mirrored_requests_total",
                            destination_service="shadowsvc") >= 1


async def test_http2_request_with_body_is_mirrored(env: Env) -> None:
    resp = await h2_request(env.port, "mirrorh2", "/m/1", method="POST", body=b"teed")
    assert resp.status == 200 and resp.get("x-served-by") == "a"
    shadow = env.s["shadow"]
    await eventually(lambda: any(r.path == "/m/1" for r in shadow.requests), DEADLINE)
    copy = next(r for r in shadow.requests if r.path == "/m/1")
    await eventually(lambda: copy.body == b"teed", DEADLINE)
    assert copy.get(":authority") == "mirrorh2-shadow"
    assert copy.get(":method") == "POST"


async def test_the_mirrored_copy_reads_its_answer_to_the_end(env: Env) -> None:
    """The shadow answers in two DATA frames: the copy reads both and leaves its stream as
    any client does, instead of resetting it at the first frame (the copy's data callback
    once took an argument fewer than the HTTP/2 upstream gives, and every answer's DATA
    ended the copy with a RST_STREAM)."""
    shadow = env.s["shadow"]
    resp = await h2_request(env.port, "mirrorh2", "/two-part/m")
    assert resp.status == 200 and resp.get("x-served-by") == "a"
    await eventually(lambda: "/two-part/m" in shadow.paths(), DEADLINE)
    await eventually(lambda: not any(c.answering for c in shadow.conns), DEADLINE)
    assert "/two-part/m" not in shadow.resets


async def test_a_body_that_came_during_a_fault_delay_is_retried_and_mirrored(
        env: Env) -> None:
    """A POST whose body and trailers arrived while a fault delay held the request back: the
    first try carries them, and so do the retry (after a 503) and the mirrored copy."""
    resp = await h2_request(env.port, "fdpost", "/fail-once/fd", method="POST",
                            body=b"hello-body", trailers=[(b"x-checksum", b"7")])
    assert resp.status == 200 and resp.get("x-served-by") == "retry"
    tries = [r for r in env.s["retry"].requests if r.path == "/fail-once/fd"]
    assert [t.body for t in tries] == [b"hello-body", b"hello-body"]
    assert [t.trailers for t in tries] == [[(b"x-checksum", b"7")]] * 2
    shadow = env.s["shadow"]
    await eventually(lambda: any(r.path == "/fail-once/fd" for r in shadow.requests), DEADLINE)
    copy = next(r for r in shadow.requests if r.path == "/fail-once/fd")
    await eventually(lambda: bool(copy.trailers), DEADLINE)  # (they end the copy)
    assert copy.body == b"hello-body" and copy.trailers == [(b"x-checksum", b"7")]
    assert copy.get(":authority") == "fdpost-shadow"


async def test_mirror_never_affects_the_primary(env: Env) -> None:
    """The shadow server hangs: the primary is answered anyway, and the copy is dropped."""
    shadow = env.s["shadow"]
    shadow.hang_all = True
    try:
        resp = await h2_request(env.port, "mirrorh2", "/m/hung")
        assert resp.status == 200 and resp.get("x-served-by") == "a"
        await eventually(lambda: shadow.hanging == 1, DEADLINE)
        await eventually(lambda: shadow.hanging == 0, DEADLINE)  # dropped (stream idle)
    finally:
        shadow.hang_all = False


# --- inbound: authorization, JWT, rate limit ----------------------------------------------
IDP = "https://idp.test"
NO_KID = "https://no-kid.test"  # an issuer whose JWK Set names no kid
IN_QUERY = "https://in-query.test"  # tokens in ?access_token=
IN_QUERY_KEPT = "https://in-query-kept.test"  # tokens in ?token=, forwardOriginalToken


class Inbound:
    def __init__(self, app: H2Server, proxy: ProxyProcess, limited: ProxyProcess,
                 key: rsa.RSAPrivateKey) -> None:
        self.app, self.proxy, self.limited, self.key = app, proxy, limited, key

    def token(self, sub: str, **claims: Any) -> str:
        return jwt.encode({"iss": IDP, "sub": sub, "exp": int(time.time()) + 600, **claims},
                          self.key, algorithm="RS256", headers={"kid": "k1"})


@pytest.fixture(scope="module")
def inbound(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Inbound]:
    """A sidecar's inbound listener (plaintext here) in front of an h2c app, with an
    AuthorizationPolicy and a RequestAuthentication; a second one with a rate limit."""
    loop = Loop()
    app = loop.run(H2Server("app").start())
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    jwk = json.loads(RSAAlgorithm.to_jwk(key.public_key()))
    jwk["kid"] = "k1"
    procs: list[ProxyProcess] = []

    def start(name: str, inbound: dict[str, Any]) -> ProxyProcess:
        tmp = tmp_path_factory.mktemp(name)
        proc = ProxyProcess(tmp, {})
        port = free_port()
        proc.outbound = port
        proc.config.write_text(yaml.safe_dump({
            "version": "in-1", "node": {"service": "reviews", "labels": {"version": "v1"}},
            "listeners": {"inbound": f"127.0.0.1:{port}", "admin": f"127.0.0.1:{proc.admin}"},
            "app": f"127.0.0.1:{app.port}", "inbound": inbound}))
        procs.append(proc)
        return proc.start()

    try:
        proxy = start("authz", {
            "authentication": [{"jwtRules": [{
                "issuer": IDP, "jwks": json.dumps({"keys": [jwk]}),
                "outputPayloadToHeader": "x-jwt-payload"}, {
                # the same key published without a kid
                "issuer": NO_KID, "jwks": json.dumps({"keys": [{
                    k: v for k, v in jwk.items() if k != "kid"}]})}, {
                "issuer": IN_QUERY, "jwks": json.dumps({"keys": [jwk]}),
                "fromParams": ["access_token"]}, {
                "issuer": IN_QUERY_KEPT, "jwks": json.dumps({"keys": [jwk]}),
                "fromParams": ["token"], "forwardOriginalToken": True}]}],
            "authorization": [{"action": "DENY", "rules": [
                {"to": [{"paths": ["/admin/*"]}]},
                {"to": [{"methods": ["DELETE"]}]},
                {"when": [{"header": "x-tenant", "values": ["blocked"]}]},
                {"from": [{"notRequestPrincipals": ["*"]}], "to": [{"paths": ["/secure/*"]}]},
                {"from": [{"requestPrincipals": [f"{IDP}/mallory"]}]},
            ]}]})
        limited = start("ratelimit", {"rateLimit": {"requestsPerSecond": 0.001, "burst": 1}})
        yield Inbound(app, proxy, limited, key)
    finally:
        for proc in procs:
            proc.stop()
        loop.run(app.stop())
        loop.close()


async def test_authorization_on_paths_methods_and_headers(inbound: Inbound) -> None:
    port = inbound.proxy.outbound
    denied = [await h2_request(port, "reviews", "/admin/x"),
              await h2_request(port, "reviews", "/item", method="DELETE"),
              await h2_request(port, "reviews", "/item", headers=[("x-tenant", "blocked")])]
    assert [(r.status, r.get("x-ami-reason")) for r in denied] == [(403, "not_authorized")] * 3
    allowed = await h2_request(port, "reviews", "/item", headers=[("x-tenant", "ok")])
    assert allowed.status == 200
    assert [r.path for r in inbound.app.requests if r.path in ("/admin/x", "/item")] == ["/item"]
    grpc_denied = await h2_request(port, "reviews", "/admin/grpc", method="POST",
                                   headers=GRPC, body=GRPC_MESSAGE)
    assert (grpc_denied.status, grpc_denied.get("grpc-status")) == (200, "7")


async def test_jwt_over_http2(inbound: Inbound) -> None:
    port = inbound.proxy.outbound
    anonymous = await h2_request(port, "reviews", "/secure/a")
    assert (anonymous.status, anonymous.get("x-ami-reason")) == (403, "not_authorized")
    bad = await h2_request(port, "reviews", "/secure/a",
                           headers=[("authorization", "Bearer not.a.jwt")])
    assert bad.status == 401
    good = await h2_request(port, "reviews", "/secure/a",
                            headers=[("authorization", f"Bearer {inbound.token('alice')}")])
    assert good.status == 200
    payload = good.seen.get("x-jwt-payload") or ""
    assert json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))["sub"] \
        == "alice"
    mallory = await h2_request(port, "reviews", "/open",
                               headers=[("authorization", f"Bearer {inbound.token('mallory')}")])
    assert mallory.status == 403


async def test_jwt_naming_a_kid_verifies_with_a_key_that_has_none(inbound: Inbound) -> None:
    """A JWK without a kid is a candidate for every token of its issuer, whatever kid the
    token names (Envoy skips only a key whose kid differs), so an IdP that signs with a kid
    its published JWK Set leaves out is accepted, as under Istio; a wrong signature is not."""
    port = inbound.proxy.outbound
    now = int(time.time())
    claims = {"iss": NO_KID, "sub": "carol", "exp": now + 600}
    named = jwt.encode(claims, inbound.key, algorithm="RS256", headers={"kid": "2024-06"})
    answer = await h2_request(port, "reviews", "/secure/a",
                              headers=[("authorization", f"Bearer {named}")])
    assert answer.status == 200, answer.get("x-ami-reason")
    forged = jwt.encode(claims, rsa.generate_private_key(public_exponent=65537, key_size=2048),
                        algorithm="RS256", headers={"kid": "2024-06"})
    refused = await h2_request(port, "reviews", "/secure/a",
                               headers=[("authorization", f"Bearer {forged}")])
    assert (refused.status, refused.get("x-ami-reason")) == (401, "jwt_invalid")


async def test_jwt_issued_ahead_of_the_sidecars_clock_is_accepted(inbound: Inbound) -> None:
    """`iat` is no validity bound (Envoy checks only `exp` and `nbf`): a token from an IdP
    whose clock runs 5 minutes ahead verifies; one whose `nbf` says so does not."""
    port = inbound.proxy.outbound
    ahead = int(time.time()) + 300
    fresh = await h2_request(port, "reviews", "/secure/a", headers=[
        ("authorization", f"Bearer {inbound.token('dave', iat=ahead)}")])
    assert fresh.status == 200, fresh.get("x-ami-reason")
    early = await h2_request(port, "reviews", "/secure/a", headers=[
        ("authorization", f"Bearer {inbound.token('dave', iat=ahead, nbf=ahead)}")])
    assert (early.status, early.get("x-ami-reason")) == (401, "jwt_invalid")


async def test_jwt_from_a_query_parameter_is_removed_before_the_app(inbound: Inbound) -> None:
    """A verified token from `fromParams` is taken out of the query the app gets (and would
    log), the other parameters kept in order, as Envoy's jwt_authn does unless `forward`;
    with `forwardOriginalToken` it stays."""
    port = inbound.proxy.outbound
    claims = {"sub": "erin", "exp": int(time.time()) + 600}
    token = jwt.encode({"iss": IN_QUERY, **claims}, inbound.key, algorithm="RS256",
                       headers={"kid": "k1"})
    answer = await h2_request(port, "reviews", f"/secure/q?a=1&access_token={token}&b=%2F")
    assert answer.status == 200, answer.get("x-ami-reason")
    assert answer.seen[":path"] == "/secure/q?a=1&b=%2F"
    alone = await h2_request(port, "reviews", f"/secure/only?access_token={token}")
    assert (alone.status, alone.seen[":path"]) == (200, "/secure/only")
    kept = jwt.encode({"iss": IN_QUERY_KEPT, **claims}, inbound.key, algorithm="RS256",
                      headers={"kid": "k1"})
    forwarded = await h2_request(port, "reviews", f"/secure/k?token={kept}")
    assert (forwarded.status, forwarded.seen[":path"]) == (200, f"/secure/k?token={kept}")


async def test_inbound_rate_limit(inbound: Inbound) -> None:
    port = inbound.limited.outbound
    first = await h2_request(port, "reviews", "/r")
    second = await h2_request(port, "reviews", "/r")
    assert first.status == 200
    assert (second.status, second.get("x-ami-reason")) == (429, "rate_limited")
    assert second.get("retry-after") is not None
    async with channel(port, "reviews") as ch:
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await method(ch, "Unary")(b"x", timeout=DEADLINE)
    assert err.value.code() == grpc.StatusCode.UNAVAILABLE
    assert _grpc_reason(err.value) == "rate_limited"


# --- across the mTLS hop ------------------------------------------------------------------
async def test_peer_and_client_cert_across_the_mtls_hop(pair: Pair) -> None:  # noqa: F811
    """The app's own x-forwarded-client-cert and x-ami-peer claims are dropped by its
    sidecar; the server's sidecar sets the verified caller, and knows its version (from
    x-ami-peer, which the server's app never sees)."""
    forged = f"By={sid('reviews')};URI={sid('admin')}"
    async with channel(pair.client.outbound, "reviews") as ch:
        answer = json.loads(await method(ch, "Unary")(
            b"p", metadata=(("x-forwarded-client-cert", forged), ("x-ami-peer", "admin;v9")),
            timeout=DEADLINE))
    seen = answer["metadata"]
    assert seen["x-forwarded-client-cert"] == \
        f"By={sid('reviews')};URI={sid('productpage')}"
    assert "x-ami-peer" not in seen
    text = await pair.server.metrics()
    assert metric_value(text, "ami_requests_total", reporter="destination",
                        source_workload="productpage", source_version="v1") >= 1
    assert metric_value(text, "ami_requests_total", source_version="v9") == 0


# --- an endpoint leaving the config -------------------------------------------------------
async def test_retired_endpoint_finishes_its_open_streams() -> None:
    """A push that drops an endpoint while HTTP/2 streams are open on it: they finish there,
    new requests go to the new endpoint, and the old connection closes once idle."""
    from proxy.config import Address, Snapshot
    from proxy.server import ProxyOptions, ProxyServer

    old, new = await H2Server("old").start(), await H2Server("new").start()

    def snapshot(version: int, port: int) -> Snapshot:
        return Snapshot.from_dict({
            "version": f"r{version}", "node": {"service": "client"},
            "listeners": {"outbound": "127.0.0.1:0"},
            "services": {"ret": {"endpoints": [_ep(port)]}}})

    server = ProxyServer(ProxyOptions(listeners={"outbound": Address("127.0.0.1", 0)}))
    try:
        server.apply(snapshot(1, old.port))
        await server.start_listeners()
        port = server.bound_address("outbound").port
        async with H2Client(port) as client:
            slow = asyncio.create_task(client.request("ret", "/slow/1"))
            await eventually(lambda: len(old.requests) == 1, DEADLINE)
            server.apply(snapshot(2, new.port))
            fresh = await client.request("ret", "/fresh")
            assert fresh.get("x-served-by") == "new"
            answer = await slow
        assert answer.status == 200 and answer.get("x-served-by") == "old"
        await eventually(lambda: not old.conns, DEADLINE)  # closed by the proxy once idle
        assert old.connections == 1
    finally:
        await server.shutdown(deadline=1.0)
        await old.stop()
        await new.stop()
