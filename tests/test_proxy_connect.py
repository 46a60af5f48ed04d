"""`CONNECT` to a mesh service on the outbound listener: the tunnel's requests are the mesh's.

Two real sidecars with mTLS: `productpage`'s (outbound, access log on) and `reviews`' (STRICT
inbound, denying `/ami.test.Echo/Fail`) in front of a real gRPC app. A grpcio app process
(`tests.grpcclient`) with `grpc_proxy` / `http_proxy` pointing at the outbound listener opens
a CONNECT tunnel and speaks h2c inside it; HTTP/1.1 clients (raw sockets, `curl
--proxytunnel`) do the same with keep-alive. Every request in a tunnel is routed and checked
as a direct one; TLS inside is refused; hosts that are no mesh service keep today's answers;
broken clients leave nothing behind.
"""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import socket
import ssl
import struct
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.grpcapp import EchoServer, serving_in_thread
from tests.proxyharness import (
    REPO,
    ProxyProcess,
    at_eof,
    eventually,
    every_count_logged,
    free_port,
    get,
    metric_value,
    read_response,
    roundtrip,
    roundtrip_close,
)
from tests.test_mtls_static import mesh_ca, mint, sid, start_proxy

DEADLINE = 10.0
_ESTABLISHED = b"HTTP/1.1 200 Connection Established\r\n\r\n"


class Mesh:
    def __init__(self, app: EchoServer, client: ProxyProcess, server: ProxyProcess) -> None:
        self.app, self.client, self.server = app, client, server


@pytest.fixture(scope="module")
def mesh(tmp_path_factory: pytest.TempPathFactory, echo: int) -> Iterator[Mesh]:
    """productpage's sidecar -> mTLS -> reviews' sidecar -> the gRPC app; `echo` and `other`
    are plain HTTP apps reached from productpage's sidecar, `echo` with a route policy."""
    app = EchoServer("reviews")
    with serving_in_thread(app, deadline=DEADLINE):
        yield from _mesh(tmp_path_factory.mktemp("connect"), app, echo)


def _mesh(tmp: Path, app: EchoServer, echo: int) -> Iterator[Mesh]:
    ca = mesh_ca(tmp / "ca", backdate=60)
    inbound_port = free_port()
    procs: list[ProxyProcess] = []
    try:
        server = start_proxy(tmp / "reviews", mint(ca, "reviews"), {
            "node": {"service": "reviews", "labels": {"version": "v1"}},
            "app": f"127.0.0.1:{app.port}", "mesh": {"mtls": "STRICT"},
            "inbound": {"authorization": [{"action": "DENY", "rules": [
                {"to": [{"paths": ["/ami.test.Echo/Fail"]}]}]}]},
        }, inbound=inbound_port)
        procs.append(server)
        plain = {"endpoints": [{"address": f"127.0.0.1:{echo}", "labels": {"version": "v1"}}]}
        client = start_proxy(tmp / "productpage", mint(ca, "productpage"), {
            "node": {"service": "productpage", "labels": {"version": "v1"}},
            "mesh": {"mtls": "STRICT", "accessLog": True},
            "services": {
                "reviews": {"endpoints": [{
                    "address": f"127.0.0.1:{inbound_port}", "labels": {"version": "v1"},
                    "identity": sid("reviews")}]},
                "echo": plain,
                "other": plain,
            },
            "routes": [{"host": "echo", "rules": [
                {"matches": [{"path": {"prefix": "/blocked"}}],
                 "backends": [{}], "fault": {"abort": {"httpStatus": 418, "percent": 100}}},
                {"backends": [{}]}]}],
        })
        procs.append(client)
        yield Mesh(app, client, server)
    finally:
        for proc in procs:
            proc.stop()


async def tunnel(port: int, authority: str, after: bytes = b""
                 ) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    """A connection to `port` with `CONNECT authority` answered (and `after` sent behind it)."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(f"CONNECT {authority} HTTP/1.1\r\nHost: {authority}\r\n\r\n".encode() + after)
    head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), DEADLINE)
    assert head == _ESTABLISHED
    return reader, writer


async def settled(proxy: ProxyProcess) -> None:
    """No client connection, no request in flight, every request counted also logged (the
    log is written in batches after the count): nothing was left behind, and a test that
    counts access-log lines from here counts only its own."""
    def idle(stats: dict[str, object]) -> bool:
        pools = stats["upstream_pools"]
        assert isinstance(pools, list)
        return stats["connections_active"] == 0 and all(
            p["active_requests"] == 0 for p in pools)

    async def all_logged() -> bool:
        return every_count_logged(await proxy.metrics(), len(access_log(proxy)))

    end = time.monotonic() + DEADLINE
    while not (idle(stats := await proxy.stats())
               and (not stats["access_log"] or await all_logged())):
        assert time.monotonic() < end, stats
        await asyncio.sleep(0.02)  # poll interval of a deadline-bounded wait


def access_log(proxy: ProxyProcess) -> list[dict[str, object]]:
    return [json.loads(x) for x in proxy.stdout().splitlines() if x.startswith("{")]


def h2_lines(proxy: ProxyProcess) -> list[dict[str, object]]:
    return [line for line in access_log(proxy) if line["protocol"] == "HTTP/2"]


# --- gRPC through HTTP_PROXY ----------------------------------------------------------------
def run_app(variable: str, value: str, target: str = "reviews:9080") -> dict[str, Any]:
    """`tests.grpcclient` as an app process whose environment sets `variable` (and no other
    proxy variable); its connections end with it."""
    env = {k: v for k, v in os.environ.items() if k.lower() not in _PROXY_VARIABLES}
    env.update({variable: value, "GRPC_VERBOSITY": "ERROR"})
    out = subprocess.run([sys.executable, "-m", "tests.grpcclient", target], cwd=REPO, env=env,
                         capture_output=True, text=True, timeout=30, check=False)
    assert out.returncode == 0, out.stderr
    result: dict[str, Any] = json.loads(out.stdout)
    return result


_PROXY_VARIABLES = {"grpc_proxy", "https_proxy", "http_proxy", "no_proxy", "no_grpc_proxy",
                    "all_proxy"}


@pytest.mark.parametrize("variable", ["grpc_proxy", "http_proxy"])
async def test_grpc_app_with_proxy_variable_reaches_the_service(mesh: Mesh,
                                                                variable: str) -> None:
    """A grpcio app with `grpc_proxy` (or `http_proxy`) set to its sidecar's outbound listener
    tunnels with CONNECT: unary and streaming calls reach reviews' app over mTLS with the
    caller's identity, reviews' authorization denies `Fail`, and both sidecars count the
    calls under the right services and gRPC status. (The name `reviews` resolves nowhere:
    only the tunnel reaches it.)"""
    before = metric_value(await mesh.client.metrics(), "ami_requests_total",
                          destination_service="reviews", grpc_response_status="0")
    await settled(mesh.client)
    calls_before, h2_logged = mesh.app.calls, len(h2_lines(mesh.client))
    result = await asyncio.to_thread(run_app, variable,
                                     f"http://127.0.0.1:{mesh.client.outbound}")
    answer = result["unary"]
    assert answer["server"] == "reviews" and answer["request"] == "hi"
    assert f"URI={sid('productpage')}" in answer["metadata"]["x-forwarded-client-cert"]
    assert result["stream"] == [f"reviews-{i}" for i in range(5)]
    assert result["chat"] == ["echo:m0", "echo:m1", "echo:m2"]
    assert result["fail"] == "PERMISSION_DENIED"
    assert mesh.app.calls == calls_before + 3  # Fail never reached the app
    client = await mesh.client.metrics()
    assert metric_value(client, "ami_requests_total", reporter="source",
                        source_workload="productpage", destination_service="reviews",
                        connection_security_policy="mutual_tls",
                        grpc_response_status="0") == before + 3
    assert metric_value(client, "ami_requests_total", destination_service="reviews",
                        grpc_response_status="7") >= 1  # PERMISSION_DENIED, from reviews
    assert metric_value(await mesh.server.metrics(), "ami_requests_total",
                        reporter="destination", source_workload="productpage",
                        destination_service="reviews", response_code="200") >= 3
    # four calls' lines (unary, stream, chat, Fail); the log's writer thread may lag the metrics
    await eventually(lambda: len(h2_lines(mesh.client)) >= h2_logged + 4, DEADLINE,
                     what="the calls' access-log lines")
    assert {"path": "/ami.test.Echo/Unary", "authority": "reviews:9080"}.items() <= \
        h2_lines(mesh.client)[-4].items()
    await settled(mesh.client)


# --- HTTP/1.1 in a tunnel -------------------------------------------------------------------
async def test_http11_keep_alive_in_a_tunnel(mesh: Mesh) -> None:
    """Several requests on one tunnel: a request without Host is for the CONNECT's authority
    (sent upstream as its Host), one with a Host keeps it; the connection stays open."""
    reader, writer = await tunnel(mesh.client.outbound, "echo:80")
    try:
        seen = []
        for raw in (b"GET /one HTTP/1.1\r\n\r\n", get("echo", "/two"),
                    b"POST /three HTTP/1.1\r\nContent-Length: 4\r\n\r\nbody",
                    b"GET http://echo/four HTTP/1.1\r\nHost: echo\r\n\r\n"):
            writer.write(raw)
            resp = await asyncio.wait_for(read_response(reader), DEADLINE)
            assert resp.status == 200 and resp.header("connection") != "close"
            seen.append(json.loads(resp.body))
    finally:
        writer.close()
    assert [s["path"] for s in seen] == ["/one", "/two", "/three", "/four"]
    hosts = [dict((k.lower(), v) for k, v in s["headers"])["host"] for s in seen]
    assert hosts == ["echo:80", "echo", "echo:80", "echo"]
    assert seen[2]["body"] == "body"
    await settled(mesh.client)


async def test_curl_proxytunnel(mesh: Mesh) -> None:
    """`curl --proxytunnel` (CONNECT, then HTTP/1.1 inside) fetches two URLs on one tunnel."""
    curl = shutil.which("curl")
    if curl is None:
        pytest.skip("curl not installed")
    out = await asyncio.to_thread(subprocess.run, [
        curl, "-sS", "--proxytunnel", "-x", f"http://127.0.0.1:{mesh.client.outbound}",
        "-w", "\\n=%{http_code} %{num_connects}\\n", "http://echo/a", "http://echo/b"],
        capture_output=True, timeout=DEADLINE, text=True, check=False)
    assert out.returncode == 0, out.stderr
    lines = [line for line in out.stdout.splitlines() if line.startswith("=")]
    assert lines == ["=200 1", "=200 0"], out.stdout  # the second one reused the tunnel


async def test_route_policy_applies_inside_the_tunnel(mesh: Mesh) -> None:
    """The route's rules hold in the tunnel (a fault on `/blocked`), and a request naming
    another host is routed by its own Host: to `other` (no fault there), or `no_route`."""
    await settled(mesh.client)
    logged = len(access_log(mesh.client))
    reader, writer = await tunnel(mesh.client.outbound, "echo:80")
    answers = []
    try:
        for raw in (get("echo", "/blocked"), b"GET /blocked HTTP/1.1\r\n\r\n",
                    get("other", "/blocked"), get("nowhere", "/")):
            writer.write(raw)
            answers.append(await asyncio.wait_for(read_response(reader), DEADLINE))
    finally:
        writer.close()
    assert [(a.status, a.header("x-ami-reason")) for a in answers] == [
        (418, "fault_injected"), (418, "fault_injected"), (200, None), (404, "no_route")]
    direct = await roundtrip(mesh.client.outbound, get("echo", "/blocked"))
    assert (direct.status, direct.header("x-ami-reason")) == (418, "fault_injected")
    # A line is written as its request ends: the direct request's may follow its answer.
    await eventually(lambda: len(access_log(mesh.client)) >= logged + 5, DEADLINE)
    lines = access_log(mesh.client)[logged:]
    assert [(x["destination_service"], x["status"]) for x in lines] == [
        ("echo", 418), ("echo", 418), ("other", 200), ("nowhere", 404), ("echo", 418)]


async def test_requests_pipelined_before_the_connect_are_answered_first(mesh: Mesh) -> None:
    """A request, CONNECT and a request for the tunnel in one write: the first response, then
    the 200, then the tunnel's response, in that order."""
    reader, writer = await asyncio.open_connection("127.0.0.1", mesh.client.outbound)
    try:
        writer.write(get("echo", "/before") + b"CONNECT echo:80 HTTP/1.1\r\n\r\n"
                     + b"GET /inside HTTP/1.1\r\n\r\n")
        first = await asyncio.wait_for(read_response(reader), DEADLINE)
        established = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), DEADLINE)
        inside = await asyncio.wait_for(read_response(reader), DEADLINE)
    finally:
        writer.close()
    assert json.loads(first.body)["path"] == "/before"
    assert established == _ESTABLISHED
    assert json.loads(inside.body)["path"] == "/inside"


# --- refused ------------------------------------------------------------------------------
async def test_tls_inside_the_tunnel_is_refused(mesh: Mesh) -> None:
    """An app starting TLS in a tunnel to a mesh service gets its connection closed, never
    a byte of it passed on; the proxy logs why and counts `tls_in_tunnel`."""
    await settled(mesh.client)
    logged = len(access_log(mesh.client))
    _, writer = await tunnel(mesh.client.outbound, "echo:443")
    ctx = ssl.create_default_context()
    try:
        with pytest.raises((ssl.SSLError, ConnectionError, OSError)):
            await asyncio.wait_for(writer.start_tls(ctx, server_hostname="echo"), DEADLINE)
    finally:
        writer.close()
    text = await mesh.client.metrics()
    assert metric_value(text, "ami_requests_total", response_flags="tls_in_tunnel",
                        destination_service="echo", response_code="0") == 1
    assert "began TLS inside a CONNECT tunnel to mesh service echo:443" in mesh.client.stderr()
    # the caller is known (this sidecar's workload), as in the metric's source labels
    await eventually(lambda: len(access_log(mesh.client)) > logged, DEADLINE,
                     what="its access-log line")
    assert {"reason": "tls_in_tunnel", "status": 0, "source": "productpage",
            "destination_service": "echo"}.items() <= access_log(mesh.client)[-1].items()
    await settled(mesh.client)


@pytest.mark.parametrize(("target", "status", "reason"), [
    ("nowhere:443", 405, "method_not_allowed"),
    ("reviews.example.com:443", 405, "method_not_allowed"),  # not `reviews`: an outside host
    ("echo", 400, "bad_request"),  # no port
])
async def test_connect_refusals(mesh: Mesh, target: str, status: int, reason: str) -> None:
    """CONNECT to a host that is no mesh service keeps its 405 (no ExternalService, no
    ALLOW_ANY here); one without a port is a 400. The connection ends with the answer."""
    resp, closed = await roundtrip_close(
        mesh.client.outbound, f"CONNECT {target} HTTP/1.1\r\nHost: {target}\r\n\r\n".encode())
    assert (resp.status, resp.header("x-ami-reason")) == (status, reason)
    assert closed


async def test_mesh_names_of_a_service_tunnel_to_it(mesh: Mesh) -> None:
    """`reviews.default:…` and `reviews.default.svc.cluster.local:…` name the service too."""
    for authority in ("echo.default:80", "echo.default.svc.cluster.local:80"):
        reader, writer = await tunnel(mesh.client.outbound, authority)
        try:
            writer.write(b"GET /named HTTP/1.1\r\n\r\n")
            resp = await asyncio.wait_for(read_response(reader), DEADLINE)
        finally:
            writer.close()
        assert resp.status == 200 and json.loads(resp.body)["path"] == "/named"


async def test_garbage_in_the_tunnel_is_a_400(mesh: Mesh) -> None:
    """Bytes that are no HTTP inside the tunnel get `400 bad_request` and the close."""
    reader, writer = await tunnel(mesh.client.outbound, "echo:80", b"\x00\x01garbage\r\n\r\n")
    try:
        resp = await asyncio.wait_for(read_response(reader), DEADLINE)
        assert (resp.status, resp.header("x-ami-reason")) == (400, "bad_request")
        assert await at_eof(reader, DEADLINE)
    finally:
        writer.close()
    await settled(mesh.client)


@pytest.mark.parametrize("sent", [
    b"",  # right after the 200
    b"GET /half HTTP/1.1\r\nHost: ec",  # in the middle of a head
    b"POST /body HTTP/1.1\r\nContent-Length: 100\r\n\r\nabc",  # in the middle of a body
    b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n",  # after the HTTP/2 preface
])
async def test_client_leaving_the_tunnel_leaves_nothing(mesh: Mesh, sent: bytes) -> None:
    """A client that goes away (a reset) at any point in its tunnel leaves no connection and
    no request in flight on the sidecar."""
    _, writer = await tunnel(mesh.client.outbound, "echo:80", sent)
    if sent.startswith(b"POST"):  # leave once the request is on its way to the app
        end = time.monotonic() + DEADLINE
        while not any(p["active_requests"] for p in (await mesh.client.stats())["upstream_pools"]):
            assert time.monotonic() < end
            await asyncio.sleep(0.02)  # poll interval of a deadline-bounded wait
    sock = writer.get_extra_info("socket")
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    writer.transport.abort()  # RST: gone for good, not a half-close
    await settled(mesh.client)


async def test_the_gateway_serves_no_connect(mesh: Mesh, tmp_path: Path) -> None:
    """The gateway is no HTTP proxy for apps: CONNECT to a mesh service there is 405."""
    gateway = ProxyProcess(tmp_path, {"echo": [free_port()]}, args=("--mode", "gateway"))
    port = gateway.listen_as_gateway([{"match": [{"path": {"prefix": "/"}}],
                                       "destination": "echo"}])
    gateway.start()
    try:
        resp = await roundtrip(port, b"CONNECT echo:80 HTTP/1.1\r\nHost: echo:80\r\n\r\n")
    finally:
        gateway.stop()
    assert (resp.status, resp.header("x-ami-reason")) == (405, "method_not_allowed")
