"""HTTP/2 clients reaching apps that speak HTTP/1.1 only: the last hop is downgraded.

Real proxies, a real aiohttp app (HTTP/1.1 only) and real clients (`curl`, the `h2` library,
grpcio). Three setups: two sidecars over mTLS where the destination declares its app `http1`;
one outbound proxy in front of the app, which it learns speaks HTTP/1.1 (`auto`); and an
inbound listener in plaintext in front of raw servers (a close-delimited answer, an h2c-only
app declared `http2`).
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import shutil
import socket
import subprocess
import sys
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any

import grpc
import pytest
import yaml
from aiohttp import web

from tests.grpcapp import channel, method
from tests.h2app import GRPC, H2Client, H2Server, h2_request
from tests.proxyharness import (
    Backends,
    ProxyProcess,
    RawBackend,
    eventually,
    free_port,
    get,
    metric_value,
    read_request,
    roundtrip,
)
from tests.test_mtls_static import mesh_ca, mint, sid, start_proxy

pytestmark = pytest.mark.timeout(120)
DEADLINE = 10.0


class App:
    """An HTTP/1.1-only aiohttp app that notes, per request, the connection it came on."""

    def __init__(self) -> None:
        self.seen: list[dict[str, Any]] = []
        self.failed: set[str] = set()

    def build(self) -> web.Application:
        async def echo(request: web.Request) -> web.StreamResponse:
            body = await request.read()
            peer = request.transport.get_extra_info("peername") if request.transport else None
            record = {"method": request.method, "path": request.path_qs,
                      "version": f"{request.version.major}.{request.version.minor}",
                      "headers": [[k.lower(), v] for k, v in request.headers.items()],
                      "body_length": len(body), "body": body[:64].decode("latin-1"),
                      "sha256": hashlib.sha256(body).hexdigest(),
                      "port": peer[1] if peer else 0}
            self.seen.append(record)
            name = request.path.split("/")[1]
            if name == "fail-once" and request.path not in self.failed:
                self.failed.add(request.path)
                return web.Response(status=503, text="try again")
            if name == "status":
                return web.Response(status=int(request.path.split("/")[2]))
            if name == "slow":
                await asyncio.sleep(float(request.query["s"]))  # the slowness under test
            if name == "chunked":
                resp = web.StreamResponse(headers={"x-kind": "chunked"})
                resp.enable_chunked_encoding()
                await resp.prepare(request)
                for i in range(5):
                    await resp.write(b"part%d;" % i)
                await resp.write_eof()
                return resp
            if name == "bytes":
                return web.Response(body=b"b" * int(request.query["n"]))
            return web.json_response(record, headers={"x-app": "h1",
                                                      "connection": "keep-alive"})

        app = web.Application(client_max_size=64 * 1024 * 1024)
        app.router.add_route("*", "/{tail:.*}", echo)
        return app


@pytest.fixture(scope="module")
def app() -> Iterator[tuple[App, int]]:
    backends = Backends()
    state = App()
    port = backends.aiohttp(state.build())
    yield state, port
    backends.close()


# --- two sidecars over mTLS; the destination's app declared `http1` --------------------------
class Mesh:
    def __init__(self, client: ProxyProcess, server: ProxyProcess) -> None:
        self.client, self.server = client, server


@pytest.fixture(scope="module")
def mesh(app: tuple[App, int], tmp_path_factory: pytest.TempPathFactory) -> Iterator[Mesh]:
    tmp: Path = tmp_path_factory.mktemp("downgrade-mtls")
    ca = mesh_ca(tmp / "ca", backdate=60)
    inbound = free_port()
    procs: list[ProxyProcess] = []
    try:
        procs.append(start_proxy(tmp / "web", mint(ca, "web"), {
            "node": {"service": "web", "labels": {"version": "v1"}},
            "app": f"127.0.0.1:{app[1]}", "appProtocol": "http1",
            "mesh": {"mtls": "STRICT"}}, inbound=inbound))
        procs.append(start_proxy(tmp / "front", mint(ca, "front"), {
            "node": {"service": "front", "labels": {"version": "v1"}},
            "mesh": {"mtls": "STRICT"},
            "services": {"web": {"endpoints": [{
                "address": f"127.0.0.1:{inbound}", "labels": {"version": "v1"},
                "identity": sid("web")}]}}}))
        yield Mesh(procs[1], procs[0])
    finally:
        for proc in procs:
            proc.stop()


def curl(*args: str) -> subprocess.CompletedProcess[bytes]:
    return subprocess.run(["curl", "-sS", "--max-time", str(DEADLINE), *args],
                          capture_output=True, timeout=DEADLINE + 5, check=True)


needs_curl = pytest.mark.skipif(shutil.which("curl") is None, reason="curl not installed")


async def test_get_through_two_sidecars_reaches_the_app_as_http1(
        mesh: Mesh, app: tuple[App, int]) -> None:
    """An h2c GET crosses the mTLS hop as HTTP/2 and reaches the app as an HTTP/1.1 request
    (request line, Host from :authority, cookies joined, no `te`), its answer coming back as
    HTTP/2 with the app's headers and none of its hop-by-hop ones."""
    resp = await h2_request(mesh.client.outbound, "web", "/page?q=1", headers=[
        ("cookie", "a=1"), ("cookie", "b=2"), ("te", "trailers"), ("x-user", "ann")])
    assert resp.status == 200, resp
    seen = resp.json()
    headers = dict(seen["headers"])
    assert (seen["method"], seen["path"], seen["version"]) == ("GET", "/page?q=1", "1.1")
    assert headers["host"] == "web" and headers["cookie"] == "a=1; b=2"
    assert headers["x-user"] == "ann" and "te" not in headers
    assert f"URI={sid('front')}" in headers["x-forwarded-client-cert"]
    assert resp.get("x-app") == "h1" and resp.get("connection") is None
    assert resp.get("content-length") == str(len(resp.body))


async def test_head_204_and_a_chunked_answer(mesh: Mesh) -> None:
    """HEAD keeps its Content-Length and has no body; a 204 has none; a chunked answer
    arrives whole, as DATA frames."""
    async with H2Client(mesh.client.outbound) as client:
        head = await client.request("web", "/page", method="HEAD")
        empty = await client.request("web", "/status/204")
        chunked = await client.request("web", "/chunked")
    assert head.status == 200 and head.body == b"" and int(head.get("content-length") or 0) > 0
    assert (empty.status, empty.body) == (204, b"")
    assert chunked.status == 200 and chunked.body == b"part0;part1;part2;part3;part4;"
    assert chunked.get("x-kind") == "chunked" and chunked.get("transfer-encoding") is None


async def test_upstream_http1_connections_are_reused(mesh: Mesh, app: tuple[App, int]) -> None:
    """Downgraded requests, one after another, share one keep-alive connection to the app."""
    state, _ = app
    async with H2Client(mesh.client.outbound) as client:
        for i in range(5):
            resp = await client.request("web", f"/reuse/{i}")
            assert resp.status == 200
    ports = {r["port"] for r in state.seen if r["path"].startswith("/reuse/")}
    assert len(ports) == 1, ports


@needs_curl
async def test_large_uploads_and_downloads_under_flow_control(
        mesh: Mesh, app: tuple[App, int], tmp_path: Path) -> None:
    """curl uploads 8 MiB, with a Content-Length and without one (chunked to the app), and
    downloads 8 MiB: windows and backpressure hold on both sides, every byte arrives."""
    data = bytes(range(256)) * (32 * 1024)
    upload = tmp_path / "upload.bin"
    upload.write_bytes(data)
    url = f"http://127.0.0.1:{mesh.client.outbound}"
    base = ("--http2-prior-knowledge", "-H", "Host: web")
    sized = json.loads(await asyncio.to_thread(
        lambda: curl(*base, "--data-binary", f"@{upload}", f"{url}/upload/sized").stdout))
    unsized = json.loads(await asyncio.to_thread(
        lambda: subprocess.run(["curl", "-sS", *base, "-T", "-", f"{url}/upload/streamed"],
                               input=data, capture_output=True, timeout=30,
                               check=True).stdout))
    down = await asyncio.to_thread(
        lambda: curl(*base, "-o", "/dev/null", "-w", "%{http_code} %{size_download} "
                     "%{http_version}", f"{url}/bytes?n={8 * 1024 * 1024}").stdout)
    digest = hashlib.sha256(data).hexdigest()
    assert (sized["body_length"], sized["sha256"]) == (len(data), digest)
    assert (unsized["body_length"], unsized["sha256"]) == (len(data), digest)
    assert dict(unsized["headers"]).get("transfer-encoding") == "chunked"
    assert down.decode() == f"200 {8 * 1024 * 1024} 2"


async def test_grpc_to_an_http1_app_is_unimplemented(mesh: Mesh, app: tuple[App, int]) -> None:
    """A gRPC call cannot be carried over HTTP/1.1 (no trailers): the destination sidecar
    answers UNIMPLEMENTED with the reason `protocol_mismatch`; the app sees nothing."""
    state, _ = app
    before = len(state.seen)
    async with channel(mesh.client.outbound, "web") as ch:
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await method(ch, "Unary")(b"hi", timeout=DEADLINE)
    assert err.value.code() == grpc.StatusCode.UNIMPLEMENTED
    assert "protocol_mismatch" in (err.value.details() or "")
    assert len(state.seen) == before
    text = await mesh.server.metrics()
    assert metric_value(text, "ami_requests_total", reporter="destination",
                        response_flags="protocol_mismatch", grpc_response_status="12") == 1


# --- one outbound proxy in front of the app, which it learns speaks HTTP/1.1 -----------------
@pytest.fixture(scope="module")
def direct(app: tuple[App, int], tmp_path_factory: pytest.TempPathFactory,
           ) -> Iterator[ProxyProcess]:
    """An outbound proxy (appProtocol left `auto`) with retries, a timeout and a mirror (to
    the app itself) on `web`, and the same app as an ExternalService HTTP port."""
    port = app[1]
    proc = ProxyProcess(tmp_path_factory.mktemp("downgrade-direct"), {"web": [port]},
                        args=("--log-level", "INFO"), routes=[{"host": "web", "rules": [
                            {"matches": [{"path": {"prefix": "/fail-once/"}}],
                             "backends": [{}],
                             "retries": {"attempts": 2, "retryOn": ["retriable-status-codes"],
                                         "retriableStatusCodes": [503],
                                         "allowNonIdempotent": True}},
                            {"matches": [{"path": {"prefix": "/slow"}}], "backends": [{}],
                             "timeout": "500ms"},
                            {"matches": [{"path": {"prefix": "/mirror/"}}], "backends": [{}],
                             "mirror": {"service": "web", "percent": 100}},
                            {"backends": [{}]}]}])
    config = yaml.safe_load(proc.config.read_text())
    config["external"] = {"api.example.com": {
        "ports": [{"number": port, "protocol": "HTTP"}], "endpoints": ["127.0.0.1"]}}
    proc.config.write_text(yaml.safe_dump(config))
    proc.start()
    yield proc
    proc.stop()


async def test_auto_learns_that_the_app_speaks_http1(direct: ProxyProcess) -> None:
    """The app answers the HTTP/2 preface in HTTP/1.1: the very request that found out is
    sent as HTTP/1.1 (not a 502), and the proxy says once that it learned."""
    resp = await h2_request(direct.outbound, "web", "/first")
    assert resp.status == 200 and resp.json()["version"] == "1.1"
    await eventually(lambda: "answered HTTP/2 in HTTP/1.1" in direct.stderr())
    for _ in range(3):
        assert (await h2_request(direct.outbound, "web", "/again")).status == 200
    assert direct.stderr().count("answered HTTP/2 in HTTP/1.1") == 1


async def test_a_retry_replays_the_body_to_the_http1_app(
        direct: ProxyProcess, app: tuple[App, int]) -> None:
    """A 503 is retried with the whole body sent again, chunked (no Content-Length) and with
    a Content-Length alike."""
    state, _ = app
    async with H2Client(direct.outbound) as client:
        chunked = await client.request("web", "/fail-once/a", method="POST",
                                       body=b"payload-a")
        sized = await client.request("web", "/fail-once/b", method="POST", body=b"payload-b",
                                     headers=[("content-length", "9")])
    assert (chunked.status, chunked.json()["body"]) == (200, "payload-a")
    assert (sized.status, sized.json()["body"]) == (200, "payload-b")
    tries = [r for r in state.seen if r["path"].startswith("/fail-once/")]
    assert [(r["path"], r["body"]) for r in tries] == [
        ("/fail-once/a", "payload-a"), ("/fail-once/a", "payload-a"),
        ("/fail-once/b", "payload-b"), ("/fail-once/b", "payload-b")]
    assert metric_value(await direct.metrics(), "ami_retries_total") == 2


async def test_a_mirrored_copy_reaches_the_http1_app_in_http1(
        direct: ProxyProcess, app: tuple[App, int]) -> None:
    """Once the app is known to speak HTTP/1.1, a mirrored copy of an HTTP/2 request goes to
    it in HTTP/1.1 as the primary does: `-shadow` host, the same body, chunked when it has no
    Content-Length, none without a body; trailers stay behind."""
    state, _ = app
    assert (await h2_request(direct.outbound, "web", "/learn")).status == 200
    async with H2Client(direct.outbound) as client:
        sent = [await client.request("web", "/mirror/chunked", method="POST", body=b"one-body",
                                     trailers=[(b"x-checksum", b"1")]),
                await client.request("web", "/mirror/sized", method="PUT", body=b"two",
                                     headers=[("content-length", "3")]),
                await client.request("web", "/mirror/get")]
    assert [r.status for r in sent] == [200, 200, 200]

    def copies() -> dict[str, dict[str, Any]]:
        return {r["path"]: r for r in state.seen if r["path"].startswith("/mirror/")
                and dict(r["headers"])["host"] == "web-shadow"}

    await eventually(lambda: len(copies()) == 3)
    seen = copies()
    assert [(p, r["method"], r["version"], r["body"]) for p, r in sorted(seen.items())] == [
        ("/mirror/chunked", "POST", "1.1", "one-body"), ("/mirror/get", "GET", "1.1", ""),
        ("/mirror/sized", "PUT", "1.1", "two")]
    headers = {p: dict(r["headers"]) for p, r in seen.items()}
    assert headers["/mirror/chunked"]["transfer-encoding"] == "chunked"
    assert "x-checksum" not in headers["/mirror/chunked"]
    assert headers["/mirror/sized"]["content-length"] == "3"
    assert "transfer-encoding" not in headers["/mirror/sized"]
    assert not {"transfer-encoding", "content-length"} & set(headers["/mirror/get"])
    assert metric_value(await direct.metrics(), "ami_mirrored_requests_total",
                        destination_service="web") == 3


async def test_the_copy_that_finds_out_the_app_speaks_http1_still_reaches_it(
        app: tuple[App, int], tmp_path: Path) -> None:
    """The very first request of a fresh proxy, mirrored to the same undeclared app: the
    copy's own HTTP/2 connection is answered in HTTP/1.1, and the copy goes in HTTP/1.1 as the
    primary does (it was dropped before: only copies after the pool had learned went)."""
    state, port = app
    proc = ProxyProcess(tmp_path, {"web": [port]}, routes=[{"host": "web", "rules": [
        {"backends": [{}], "mirror": {"service": "web", "percent": 100}}]}])
    proc.start()
    try:
        async with H2Client(proc.outbound) as client:
            resp = await client.request("web", "/first-copy", method="POST", body=b"held-body")
        assert resp.status == 200 and resp.json()["version"] == "1.1"

        def copies() -> list[dict[str, Any]]:
            return [r for r in state.seen if r["path"] == "/first-copy"
                    and dict(r["headers"])["host"] == "web-shadow"]

        await eventually(lambda: len(copies()) == 1)
        (copy,) = copies()
        assert (copy["method"], copy["version"], copy["body"]) == ("POST", "1.1", "held-body")
        assert metric_value(await proc.metrics(), "ami_mirrored_requests_total",
                            destination_service="web") == 1
    finally:
        proc.stop()


async def test_request_trailers_are_dropped_on_the_http1_hop(
        direct: ProxyProcess, app: tuple[App, int]) -> None:
    """HTTP/1.1 cannot carry a request's trailers here: the body arrives whole, chunked, and
    the trailers stay behind (as Envoy's HTTP/1 codec does by default)."""
    async with H2Client(direct.outbound) as client:
        resp = await client.request("web", "/with-trailers", method="POST", body=b"data",
                                    trailers=[(b"x-checksum", b"abc")])
    seen = resp.json()
    assert resp.status == 200 and seen["body"] == "data"
    assert "x-checksum" not in dict(seen["headers"])


async def test_a_route_timeout_answers_504(direct: ProxyProcess) -> None:
    """The route's timeout holds for a downgraded request."""
    resp = await h2_request(direct.outbound, "web", "/slow?s=5")
    assert (resp.status, resp.get("x-ami-reason")) == (504, "timeout")


async def test_grpc_to_a_learned_http1_app_is_unimplemented(direct: ProxyProcess) -> None:
    """Once the app is known to speak HTTP/1.1, a gRPC call to it is refused in words."""
    assert (await h2_request(direct.outbound, "web", "/learn")).status == 200
    async with channel(direct.outbound, "web") as ch:
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await method(ch, "Unary")(b"hi", timeout=DEADLINE)
    assert err.value.code() == grpc.StatusCode.UNIMPLEMENTED


async def test_an_external_service_http_port_is_reached_in_http1(
        direct: ProxyProcess, app: tuple[App, int]) -> None:
    """An ExternalService `protocol: HTTP` port is an HTTP/1.1 host: an HTTP/2 request to it
    goes as HTTP/1.1 at once."""
    resp = await h2_request(direct.outbound, f"api.example.com:{app[1]}", "/outside")
    assert resp.status == 200
    seen = resp.json()
    assert seen["version"] == "1.1" and dict(seen["headers"])["host"] == \
        f"api.example.com:{app[1]}"


async def test_a_request_line_http1_cannot_carry_is_refused(direct: ProxyProcess) -> None:
    """HTTP/2 lets a space through in :method and :path; on a request line it would be a
    request of the client's making: 400, and the app sees nothing."""
    assert (await h2_request(direct.outbound, "web", "/learn")).status == 200
    spaced_path = await h2_request(direct.outbound, "web", "/a b")
    spaced_method = await h2_request(direct.outbound, "web", "/a", method="GET /x")
    assert (spaced_path.status, spaced_path.get("x-ami-reason")) == (400, "bad_request")
    assert (spaced_method.status, spaced_method.get("x-ami-reason")) == (400, "bad_request")


@pytest.mark.parametrize("method", ["delete", "Delete", "get"])
async def test_a_method_not_in_upper_case_is_refused(direct: ProxyProcess, method: str) -> None:
    """`delete` is not DELETE (methods are case-sensitive), yet frameworks upper-case it:
    it would pass a policy on DELETE and run the DELETE handler. Refused, as HTTP/1.1's
    parser refuses the same request line."""
    resp = await h2_request(direct.outbound, "web", "/a", method=method)
    assert (resp.status, resp.get("x-ami-reason")) == (400, "bad_request")


# --- an inbound listener in plaintext, in front of raw servers ------------------------------
def inbound_proxy(tmp: Path, app_port: int, protocol: str) -> ProxyProcess:
    proc = ProxyProcess(tmp, {})
    inbound = free_port()
    proc.config.write_text(yaml.safe_dump({
        "version": "static-1", "node": {"service": "web", "labels": {"version": "v1"}},
        "listeners": {"inbound": f"127.0.0.1:{inbound}", "admin": f"127.0.0.1:{proc.admin}"},
        "app": f"127.0.0.1:{app_port}", "appProtocol": protocol}))
    proc.outbound = inbound  # (where the requests go)
    return proc.start()


async def through_raw_app(tmp: Path, handler: Callable[..., Awaitable[None]],
                          path: str) -> tuple[Any, RawBackend]:
    """One HTTP/2 request through an inbound sidecar to a raw HTTP/1.1 app running
    ``handler``: its answer, and the app (what it received)."""
    backends = Backends()
    raw = backends.raw(handler)
    proc = inbound_proxy(tmp, raw.port, "http1")
    try:
        return await h2_request(proc.outbound, "web", path), raw
    finally:
        proc.stop()
        backends.close()


async def test_an_answer_ended_by_close_arrives_whole(tmp_path: Path) -> None:
    """An HTTP/1.1 answer without length, ended by the server closing, ends the HTTP/2 stream
    cleanly once the connection closes."""
    async def close_delimited(backend: RawBackend, reader: asyncio.StreamReader,
                              writer: asyncio.StreamWriter) -> None:
        request = await read_request(reader)
        assert request is not None
        backend.requests.append(request)
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\n\r\nuntil the end")
        await writer.drain()

    resp, raw = await through_raw_app(tmp_path, close_delimited, "/raw")
    assert (resp.status, resp.body, resp.reset) == (200, b"until the end", None)
    assert raw.requests[0].first == "GET /raw HTTP/1.1"


async def test_an_oversized_answer_head_is_502_for_an_http2_client(tmp_path: Path) -> None:
    """An HTTP/1.1 head over --max-header-bytes (64 KiB) that arrives whole is refused for an
    HTTP/2 client too: `502 upstream_protocol_error`, as for an HTTP/1.1 one."""
    async def big_head(backend: RawBackend, reader: asyncio.StreamReader,
                       writer: asyncio.StreamWriter) -> None:
        await read_request(reader)
        writer.write(b"HTTP/1.1 200 OK\r\n" + b"X-Filler: %s\r\n" % (b"a" * 1000) * 80
                     + b"Content-Length: 2\r\n\r\nok")
        await writer.drain()

    resp, _ = await through_raw_app(tmp_path, big_head, "/big")
    assert (resp.status, resp.get("x-ami-reason")) == (502, "upstream_protocol_error")


async def test_an_http2_app_refuses_http1_requests_in_words(tmp_path: Path) -> None:
    """An app declared `http2` (h2c only, a gRPC server) gets HTTP/2 requests; an HTTP/1.1
    request gets `502 protocol_mismatch` instead of bytes the app cannot parse."""
    server = await H2Server("grpcish").start()
    proc = inbound_proxy(tmp_path, server.port, "http2")
    try:
        h1 = await roundtrip(proc.outbound, get("web", "/x"))
        h2 = await h2_request(proc.outbound, "web", "/x")
        grpc_call = await h2_request(proc.outbound, "web", "/late-grpc/0", method="POST",
                                     headers=GRPC, body=b"\0\0\0\0\0")
    finally:
        proc.stop()
        await server.stop()
    assert (h1.status, h1.header("x-ami-reason")) == (502, "protocol_mismatch")
    assert h2.status == 200 and grpc_call.get("grpc-status") == "0"
    assert server.paths() == ["/x", "/late-grpc/0"]


async def test_auto_learns_it_of_an_http_server_app_that_answers_without_a_status_line(
        tmp_path: Path) -> None:
    """Python's http.server takes the HTTP/2 preface (`PRI * HTTP/2.0`) for HTTP/0.9 and
    writes its 505 page without a status line: no `HTTP/1.` to recognise, yet no HTTP/2
    either. Under `auto` the sidecar learns from any first bytes that are not HTTP/2's
    SETTINGS, so an h2 client gets the page, not `503 upstream_connect_failure`."""
    script = ("import http.server, sys\n"
              "class H(http.server.BaseHTTPRequestHandler):\n"
              "    protocol_version = 'HTTP/1.1'\n"
              "    def do_GET(self):\n"
              "        body = ('served ' + self.request_version).encode()\n"
              "        self.send_response(200)\n"
              "        self.send_header('Content-Length', str(len(body)))\n"
              "        self.end_headers()\n"
              "        self.wfile.write(body)\n"
              "    def log_message(self, *args): pass\n"
              "http.server.ThreadingHTTPServer(('127.0.0.1', int(sys.argv[1])), H)"
              ".serve_forever()\n")
    port = free_port()
    app = subprocess.Popen([sys.executable, "-c", script, str(port)])
    try:
        await eventually(lambda: _listening(port), 15, what="the http.server app")
        proc = inbound_proxy(tmp_path, port, "auto")
        try:
            for _ in range(3):
                resp = await h2_request(proc.outbound, "web", "/page")
                assert (resp.status, resp.body) == (200, b"served HTTP/1.1"), resp
        finally:
            proc.stop()
    finally:
        app.terminate()
        app.wait(10)


def _listening(port: int) -> bool:
    try:
        socket.create_connection(("127.0.0.1", port), timeout=1).close()
    except OSError:
        return False
    return True
