"""HTTP/2 and gRPC through real proxy processes, with real grpcio servers and clients.

A static outbound proxy sits in front of two gRPC servers (`v1`, `v2`); grpcio clients speak
h2c with prior knowledge to it, as any gRPC client does in plaintext. Every call shape (unary,
server, client and bidirectional streaming), metadata and trailers, large messages under flow
control, the route policies (header match, weights, timeout, gRPC retries, fault, no route,
connect failure), cancellation, metrics and the access log are checked end to end. A second
module scenario carries gRPC over the mTLS hop between two sidecars (ALPN h2) to the app.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import grpc
import pytest
import yaml

from tests.grpcapp import EchoServer, channel, method, serving_in_thread
from tests.proxyharness import ProxyProcess, eventually, free_port, get, metric_value, roundtrip
from tests.test_mtls_static import mesh_ca, mint, sid, start_proxy

DEADLINE = 10.0


def _reason(err: grpc.aio.AioRpcError) -> str | None:
    """The proxy's reason word, which a trailers-only answer carries in its metadata."""
    for key, value in (*(err.initial_metadata() or ()), *(err.trailing_metadata() or ())):
        if key == "x-ami-reason":
            return str(value)
    return None


class Env:
    """The running servers and the proxy of the plaintext scenario."""

    def __init__(self, v1: EchoServer, v2: EchoServer, proxy: ProxyProcess) -> None:
        self.v1, self.v2, self.proxy = v1, v2, proxy

    def channel(self, authority: str = "echo") -> grpc.aio.Channel:
        return channel(self.proxy.outbound, authority)


def _endpoint(port: int, version: str) -> dict[str, Any]:
    return {"address": f"127.0.0.1:{port}", "labels": {"version": version}}


@pytest.fixture(scope="module")
def env(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Env]:
    v1, v2 = EchoServer("v1"), EchoServer("v2")
    with serving_in_thread(v1, v2, deadline=DEADLINE):
        yield from _env(tmp_path_factory, v1, v2)


def _env(tmp_path_factory: pytest.TempPathFactory, v1: EchoServer, v2: EchoServer
         ) -> Iterator[Env]:
    tmp = tmp_path_factory.mktemp("http2")
    proxy = ProxyProcess(tmp, {}, args=("--access-log", "on"))
    both = [_endpoint(v1.port, "v1"), _endpoint(v2.port, "v2")]
    proxy.config.write_text(yaml.safe_dump({
        "version": "h2-1",
        "node": {"service": "client", "labels": {"version": "v1"}},
        "listeners": {"outbound": f"127.0.0.1:{proxy.outbound}",
                      "admin": f"127.0.0.1:{proxy.admin}"},
        "services": {
            "echo": {"endpoints": both},
            "shift": {"endpoints": both},
            "slow": {"endpoints": [_endpoint(v1.port, "v1")]},
            "flaky": {"endpoints": [_endpoint(v2.port, "v2")]},
            "fault": {"endpoints": [_endpoint(v1.port, "v1")]},
            "down": {"endpoints": [_endpoint(free_port(), "v1")]},
        },
        "routes": [
            {"host": "echo", "rules": [
                {"matches": [{"headers": {"x-canary": {"exact": "yes"}}}],
                 "backends": [{"subset": "v2"}]},
                {"backends": [{"subset": "v1"}]}]},
            {"host": "shift", "rules": [
                {"backends": [{"subset": "v1", "weight": 50}, {"subset": "v2", "weight": 50}]}]},
            {"host": "slow", "rules": [{"backends": [{}], "timeout": "500ms"}]},
            {"host": "flaky", "rules": [{"backends": [{}], "retries": {
                "attempts": 2, "retryOn": ["unavailable"]}}]},
            {"host": "fault", "rules": [{"backends": [{}], "fault": {
                "abort": {"httpStatus": 503, "percent": 100}}}]},
        ],
    }))
    proxy.start()
    try:
        yield Env(v1, v2, proxy)
    finally:
        proxy.stop()


async def test_unary_call_keeps_metadata_and_trailers(env: Env) -> None:
    """Request metadata reaches the server with the proxy's headers added; the server's
    initial metadata and trailers reach the client."""
    async with env.channel() as ch:
        call = method(ch, "Unary")(b"hello", metadata=(("x-user", "bob"),), timeout=DEADLINE)
        answer = json.loads(await call)
        assert answer["server"] == "v1" and answer["request"] == "hello"
        seen = answer["metadata"]
        assert seen["x-user"] == "bob"
        assert seen["x-forwarded-proto"] == "http" and seen["x-forwarded-for"] == "127.0.0.1"
        assert len(seen["x-request-id"]) == 36
        assert ("x-served-by", "v1") in tuple(await call.initial_metadata())
        assert ("x-trailer", "kept") in tuple(await call.trailing_metadata())
        assert await call.code() == grpc.StatusCode.OK


async def test_streaming_calls_every_shape(env: Env) -> None:
    """Server streaming, client streaming and bidirectional streaming all pass."""
    async def requests(n: int) -> AsyncIterator[bytes]:
        for i in range(n):
            yield b"m%d" % i

    async with env.channel() as ch:
        streamed = [m async for m in method(ch, "Stream", "unary_stream")(b"50")]
        assert streamed == [b"v1-%d" % i for i in range(50)]
        joined = await method(ch, "Collect", "stream_unary")(requests(200), timeout=DEADLINE)
        assert joined == b"|".join(b"m%d" % i for i in range(200))
        chat = [m async for m in method(ch, "Chat", "stream_stream")(requests(20))]
        assert chat == [b"echo:m%d" % i for i in range(20)]


async def test_large_messages_both_ways(env: Env) -> None:
    """Messages far beyond every flow-control window (64 KiB default, 256 KiB ours)."""
    async with env.channel() as ch:
        assert len(await method(ch, "Big")(b"8000000", timeout=DEADLINE)) == 8_000_000
        payload = b"y" * 3_000_000
        answer = json.loads(await method(ch, "Unary")(payload, timeout=DEADLINE))
        assert len(answer["request"]) == 3_000_000


async def test_error_status_passes_through(env: Env) -> None:
    async with env.channel() as ch:
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await method(ch, "Fail")(b"NOT_FOUND", timeout=DEADLINE)
    assert err.value.code() == grpc.StatusCode.NOT_FOUND
    assert err.value.details() == "v1 failed on purpose"
    assert _reason(err.value) is None  # the server's answer, not the proxy's


async def test_many_concurrent_calls_share_connections(env: Env) -> None:
    """200 calls at once on one client connection, multiplexed to the upstream."""
    async with env.channel() as ch:
        unary = method(ch, "Unary")
        answers = await asyncio.gather(*(unary(b"%d" % i, timeout=DEADLINE)
                                         for i in range(200)))
    assert sorted(json.loads(a)["request"] for a in answers) == sorted(
        str(i) for i in range(200))


async def test_header_match_routes_grpc_metadata(env: Env) -> None:
    async with env.channel() as ch:
        canary = await method(ch, "Unary")(b"c", metadata=(("x-canary", "yes"),),
                                           timeout=DEADLINE)
    assert json.loads(canary)["server"] == "v2"


async def test_weights_shift_grpc_calls(env: Env) -> None:
    """Per-call balancing: one client connection's calls go to both subsets (not one
    connection pinned to one server, gRPC's classic load-balancing pitfall)."""
    async with env.channel("shift") as ch:
        unary = method(ch, "Unary")
        servers = [json.loads(await unary(b"s", timeout=DEADLINE))["server"]
                   for _ in range(60)]
    assert {"v1", "v2"} == set(servers)
    assert 10 <= servers.count("v1") <= 50


async def test_route_timeout_is_a_grpc_unavailable_with_reason(env: Env) -> None:
    async with env.channel("slow") as ch:
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await method(ch, "Slow")(b"3", timeout=DEADLINE)
    assert err.value.code() == grpc.StatusCode.UNAVAILABLE
    assert _reason(err.value) == "timeout"
    assert err.value.details() == "timeout: upstream did not answer in time"


async def test_grpc_unavailable_is_retried(env: Env) -> None:
    """retryOn: [unavailable] resends the call (a POST) after a trailers-only UNAVAILABLE."""
    before = env.v2.calls
    async with env.channel("flaky") as ch:
        assert await method(ch, "Flaky")(b"once", timeout=DEADLINE) == b"v2"
    assert env.v2.calls - before == 2
    assert metric_value(await env.proxy.metrics(), "ami_retries_total",
                        destination_service="flaky") >= 1


async def test_fault_no_route_and_connect_failure_answer_in_grpc(env: Env) -> None:
    """The proxy's own answers to gRPC calls are gRPC statuses with the reason word."""
    cases = [("fault", grpc.StatusCode.UNAVAILABLE, "fault_injected"),
             ("nowhere", grpc.StatusCode.UNIMPLEMENTED, "no_route"),
             ("down", grpc.StatusCode.UNAVAILABLE, "upstream_connect_failure")]
    for authority, code, reason in cases:
        async with env.channel(authority) as ch:
            with pytest.raises(grpc.aio.AioRpcError) as err:
                await method(ch, "Unary")(b"x", timeout=DEADLINE)
        assert (err.value.code(), _reason(err.value)) == (code, reason), authority


async def test_cancelled_call_cancels_upstream(env: Env) -> None:
    """A client that cancels: the server's handler is cancelled too, and the request is
    recorded as a downstream disconnect."""
    before = env.v1.cancelled
    async with env.channel() as ch:
        call = method(ch, "Slow")(b"30", timeout=DEADLINE)
        await eventually(lambda: env.v1.sleeping > 0, DEADLINE)
        call.cancel()
        with pytest.raises(asyncio.CancelledError):
            await call
    await eventually(lambda: env.v1.cancelled == before + 1, DEADLINE)
    await eventually(lambda: '"reason":"downstream_disconnect"' in env.proxy.stdout(),
                     DEADLINE)


async def test_metrics_and_access_log(env: Env) -> None:
    async with env.channel() as ch:
        await method(ch, "Unary")(b"m", timeout=DEADLINE)
        with pytest.raises(grpc.aio.AioRpcError):
            await method(ch, "Fail")(b"PERMISSION_DENIED", timeout=DEADLINE)
    text = await env.proxy.metrics()
    assert metric_value(text, "ami_requests_total", destination_service="echo",
                        response_code="200", reporter="source") >= 2
    assert metric_value(text, "ami_requests_total", destination_service="echo",
                        response_code="200", grpc_response_status="7") >= 1
    assert metric_value(text, "ami_requests_total", destination_service="echo",
                        grpc_response_status="0") >= 1

    def denied() -> list[dict[str, Any]]:
        lines = [json.loads(line) for line in env.proxy.stdout().splitlines()
                 if line.startswith("{")]
        return [x for x in lines if x["grpc_status"] == "7"]

    # the log's writer thread may write the line a moment after the metrics counted it
    await eventually(denied, DEADLINE, what="the denied call's access-log line")
    assert denied()[-1]["protocol"] == "HTTP/2"
    assert denied()[-1]["path"] == "/ami.test.Echo/Fail"
    assert denied()[-1]["destination_service"] == "echo" and denied()[-1]["status"] == 200


async def test_http1_still_served_on_the_same_listener(env: Env) -> None:
    """The listener tells the protocols apart per connection; HTTP/1.1 is unchanged."""
    resp = await roundtrip(env.proxy.outbound, get("nowhere"))
    assert resp.status == 404 and resp.header("x-ami-reason") == "no_route"


# --- gRPC over the mTLS hop between two sidecars ------------------------------------------
class Pair:
    def __init__(self, app: EchoServer, client: ProxyProcess, server: ProxyProcess) -> None:
        self.app, self.client, self.server = app, client, server


@pytest.fixture(scope="module")
def pair(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Pair]:
    """`productpage`'s sidecar (outbound) -> mTLS -> `reviews`' sidecar (STRICT inbound, an
    AuthorizationPolicy) -> the gRPC app."""
    app = EchoServer("reviews")
    with serving_in_thread(app, deadline=DEADLINE):
        yield from _pair(tmp_path_factory.mktemp("h2mtls"), app)


def _pair(tmp: Path, app: EchoServer) -> Iterator[Pair]:
    ca = mesh_ca(tmp / "ca", backdate=60)
    inbound_port = free_port()
    procs: list[ProxyProcess] = []
    try:
        server = start_proxy(tmp / "reviews", mint(ca, "reviews"), {
            "node": {"service": "reviews", "labels": {"version": "v1"}},
            "app": f"127.0.0.1:{app.port}", "mesh": {"mtls": "STRICT", "accessLog": True},
            "inbound": {"authorization": [{"action": "DENY", "rules": [
                {"to": [{"paths": ["/ami.test.Echo/Fail"]}]}]}]},
        }, inbound=inbound_port)
        procs.append(server)
        client = start_proxy(tmp / "productpage", mint(ca, "productpage"), {
            "node": {"service": "productpage", "labels": {"version": "v1"}},
            "mesh": {"mtls": "STRICT"},
            "services": {"reviews": {"endpoints": [{
                "address": f"127.0.0.1:{inbound_port}", "labels": {"version": "v1"},
                "identity": sid("reviews")}]}},
        })
        procs.append(client)
        yield Pair(app, client, server)
    finally:
        for proc in procs:
            proc.stop()


async def test_grpc_crosses_the_mtls_hop(pair: Pair) -> None:
    """h2c from the app, HTTP/2 over mTLS between the sidecars, h2c to the server's app; the
    server's app sees the caller's verified identity in x-forwarded-client-cert."""
    async with channel(pair.client.outbound, "reviews") as ch:
        call = method(ch, "Unary")(b"hi", timeout=DEADLINE)
        answer = json.loads(await call)
        assert ("x-trailer", "kept") in tuple(await call.trailing_metadata())
        streamed = [m async for m in method(ch, "Stream", "unary_stream")(b"5")]
    assert answer["server"] == "reviews"
    xfcc = answer["metadata"]["x-forwarded-client-cert"]
    assert f"URI={sid('productpage')}" in xfcc and f"By={sid('reviews')}" in xfcc
    assert "x-ami-peer" not in answer["metadata"]
    assert streamed == [b"reviews-%d" % i for i in range(5)]
    text = await pair.server.metrics()
    assert metric_value(text, "ami_requests_total", reporter="destination",
                        source_workload="productpage", connection_security_policy="mutual_tls",
                        response_code="200") >= 2
    assert metric_value(await pair.client.metrics(), "ami_requests_total", reporter="source",
                        destination_service="reviews",
                        connection_security_policy="mutual_tls") >= 2


async def test_authorization_denies_a_grpc_method(pair: Pair) -> None:
    """A DENY on a method's path answers PERMISSION_DENIED from the server's sidecar."""
    before = pair.app.calls
    async with channel(pair.client.outbound, "reviews") as ch:
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await method(ch, "Fail")(b"OK", timeout=DEADLINE)
    assert err.value.code() == grpc.StatusCode.PERMISSION_DENIED
    assert _reason(err.value) == "not_authorized"
    assert pair.app.calls == before


async def test_grpc_enters_through_the_gateway(env: Env, tmp_path: Path) -> None:
    """A gRPC client outside the mesh reaches a service through the plaintext gateway (h2c),
    routed by the gateway's host and path rules."""
    proc = ProxyProcess(tmp_path, {}, args=("--mode", "gateway"))
    port = free_port()
    proc.config.write_text(yaml.safe_dump({
        "version": "gw-1", "node": {"service": "gateway", "labels": {"version": "v1"}},
        "listeners": {"gateway": f"127.0.0.1:{port}", "admin": f"127.0.0.1:{proc.admin}"},
        "services": {"echo": {"endpoints": [_endpoint(env.v2.port, "v2")]}},
        "gateway": {"rules": [{"hosts": ["api.example.com"],
                               "match": [{"path": {"prefix": "/ami.test.Echo/"}}],
                               "destination": "echo"}]},
    }))
    proc.start()
    try:
        async with channel(port, "api.example.com") as ch:
            answer = json.loads(await method(ch, "Unary")(b"in", timeout=DEADLINE))
        async with channel(port, "other.example.com") as ch:
            with pytest.raises(grpc.aio.AioRpcError) as err:
                await method(ch, "Unary")(b"in", timeout=DEADLINE)
    finally:
        proc.stop()
    assert answer["server"] == "v2" and answer["request"] == "in"
    assert (err.value.code(), _reason(err.value)) == (grpc.StatusCode.UNIMPLEMENTED, "no_route")


async def test_a_server_taking_one_stream_at_a_time(tmp_path: Path) -> None:
    """A server whose SETTINGS allow one stream per connection: ten concurrent calls all
    succeed (streams it refuses unprocessed are sent again, on more connections)."""
    server = await EchoServer("narrow", options=(("grpc.max_concurrent_streams", 1),)).start()
    proc = ProxyProcess(tmp_path, {"narrow": [server.port]}).start()
    try:
        async with channel(proc.outbound, "narrow") as ch:
            slow = method(ch, "Slow")
            answers = await asyncio.gather(*(slow(b"0.2", timeout=DEADLINE) for _ in range(10)))
    finally:
        proc.stop()
        await server.stop()
    assert answers == [b"narrow"] * 10
