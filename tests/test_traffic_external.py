"""ExternalService: outside hosts a REGISTRY_ONLY mesh may reach, through a real proxy process
running a static snapshot with an ``external`` part (what the control plane pushes; the
control-plane path is tests/test_controlplane_external.py)."""

from __future__ import annotations

import asyncio
import json
import ssl
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.proxyharness import Backends, eventually, get, read_response, roundtrip
from tests.test_gateway_https import issue
from tests.traffic_backends import (
    TrafficBackend,
    TrafficProxy,
    endpoints,
    start_backend,
    started,
)

pytestmark = pytest.mark.timeout(60)


def _connect(target: str) -> bytes:
    return f"CONNECT {target} HTTP/1.1\r\nHost: {target}\r\n\r\n".encode()


class Outside:
    """Servers standing in for hosts outside the mesh: plain HTTP ones and one HTTPS."""

    def __init__(self, tmp: Path) -> None:
        self.hub = Backends()
        self.api = start_backend(self.hub, version="api")
        self.slow = start_backend(self.hub, version="slow", delay=2.0)
        self.named = start_backend(self.hub, version="named")
        self.pooled = start_backend(self.hub, version="pooled", delay=0.5)
        pem = issue("outside")
        (tmp / "c.pem").write_bytes(pem.cert)
        (tmp / "k.pem").write_bytes(pem.key)
        self.ca = pem.cert
        ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        ctx.load_cert_chain(tmp / "c.pem", tmp / "k.pem")

        async def answer(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            await reader.readuntil(b"\r\n\r\n")
            writer.write(b"HTTP/1.1 200 OK\r\ncontent-length: 6\r\nconnection: close\r\n\r\n"
                         b"secret")
            await writer.drain()
            writer.close()

        async def start() -> int:
            server = await asyncio.start_server(answer, "127.0.0.1", 0, ssl=ctx)
            return int(server.sockets[0].getsockname()[1])

        self.https = self.hub.call(start())

        async def greeter(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            """A server that speaks first (SSH, SMTP, MySQL), then echoes a line."""
            writer.write(b"220 hello\r\n")
            writer.write(await reader.readline())
            await writer.drain()
            writer.close()

        async def serve(handler: Any) -> int:
            server = await asyncio.start_server(handler, "127.0.0.1", 0)
            return int(server.sockets[0].getsockname()[1])

        self.greeter = self.hub.call(serve(greeter))
        self.heard: list[bytes] = []  # what the half-closing server read after its own FIN

        async def until_eof(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            """A one-shot protocol: the request ends at the client's FIN, then the answer."""
            data = await reader.read()
            writer.write(b"got %d bytes" % len(data))
            writer.close()

        async def banner(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            """Says its piece and half-closes, then still listens until the client is done."""
            writer.write(b"banner")
            writer.write_eof()
            self.heard.append(await reader.read())
            writer.close()

        self.until_eof = self.hub.call(serve(until_eof))
        self.banner = self.hub.call(serve(banner))


def _external(outside: Outside, mesh_backend: TrafficBackend) -> dict[str, Any]:
    return {
        # a real-looking name, reached at a fixed address
        "api.example.test": {"ports": [{"number": outside.api.port, "protocol": "HTTP"},
                                       {"number": outside.https, "protocol": "TLS"}],
                             "endpoints": ["127.0.0.1"]},
        "slow.example.test": {"ports": [{"number": outside.slow.port, "protocol": "HTTP"}],
                              "endpoints": ["127.0.0.1"]},
        # no endpoints: the name is resolved when connecting
        "localhost": {"ports": [{"number": outside.named.port, "protocol": "HTTP"}]},
        "nowhere.invalid": {"ports": [{"number": 80, "protocol": "HTTP"}]},
        # with a DestinationPolicy: one request at a time
        "pooled.example.test": {"ports": [{"number": outside.pooled.port, "protocol": "HTTP"}],
                                "endpoints": ["127.0.0.1"],
                                "policy": {"connectionPool": {"maxConcurrentRequests": 1}}},
        # raw TCP through CONNECT
        "tcp.example.test": {"ports": [{"number": outside.greeter, "protocol": "TCP"},
                                       {"number": outside.until_eof, "protocol": "TCP"},
                                       {"number": outside.banner, "protocol": "TCP"}],
                             "endpoints": ["127.0.0.1"]},
        # a wildcard, resolved by the requested name (here an IPv4 literal ending in .0.0.1)
        "*.0.0.1": {"ports": [{"number": outside.https, "protocol": "TLS"}]},
    }


@pytest.fixture(scope="module")
def outside(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Outside]:
    servers = Outside(Path(tmp_path_factory.mktemp("outside")))
    yield servers
    servers.hub.close()


@pytest.fixture(scope="module")
def proxy(tmp_path_factory: pytest.TempPathFactory, outside: Outside) -> Iterator[TrafficProxy]:
    hub = Backends()
    web = start_backend(hub, version="web")
    routes = [{"host": "slow.example.test", "rules": [{"backends": [{}], "timeout": "300ms"}]},
              {"host": "api.example.test", "rules": [
                  {"matches": [{"path": {"prefix": "/teapot"}}], "backends": [{}],
                   "fault": {"abort": {"httpStatus": 418}}},
                  {"backends": [{}], "headers": {"request": {"set": {"x-via": "mesh"}}}}]}]
    yield from started(TrafficProxy(Path(tmp_path_factory.mktemp("proxy")),
                                    {"web": {"endpoints": endpoints(web)}}, routes,
                                    external=_external(outside, web)), hub)


async def test_a_declared_host_and_http_port_is_forwarded(proxy: TrafficProxy,
                                                          outside: Outside) -> None:
    port = outside.api.port
    # origin-form with the Host, and absolute-form (what an HTTP_PROXY client sends)
    for raw in (get(f"api.example.test:{port}", "/a?x=1"),
                f"GET http://api.example.test:{port}/a?x=1 HTTP/1.1\r\n"
                f"Host: api.example.test:{port}\r\n\r\n".encode()):
        resp = await roundtrip(proxy.outbound, raw)
        assert resp.status == 200, resp.body
        body = json.loads(resp.body)
        assert (body["version"], body["path"]) == ("api", "/a?x=1")
    seen = outside.api.requests[-1]
    assert seen.header("x-via") == "mesh"  # the Route's header edit applied
    # the caller's service and version are the mesh's business, not an outside host's
    assert seen.header("x-ami-peer") is None
    assert (await roundtrip(proxy.outbound, get("web", "/"))).status == 200  # mesh as before
    assert await proxy.metric("ami_requests_total", destination_service="api.example.test",
                              response_code="200") >= 2


async def test_routes_apply_to_an_external_host(proxy: TrafficProxy, outside: Outside) -> None:
    resp = await roundtrip(proxy.outbound, get(f"api.example.test:{outside.api.port}", "/teapot"))
    assert (resp.status, resp.header("x-ami-reason")) == (418, "fault_injected")
    resp = await roundtrip(proxy.outbound, get(f"slow.example.test:{outside.slow.port}", "/"))
    assert (resp.status, resp.header("x-ami-reason")) == (504, "timeout")
    assert await proxy.metric("ami_requests_total", destination_service="slow.example.test",
                              response_code="504") >= 1


async def test_undeclared_hosts_and_ports_keep_the_refusal(proxy: TrafficProxy,
                                                           outside: Outside) -> None:
    for host in ("other.example.test", f"api.example.test:{outside.api.port + 1}",
                 f"api.example.test:{outside.https}"):  # a TLS port is no HTTP port
        resp = await roundtrip(proxy.outbound, get(host, "/"))
        assert (resp.status, resp.header("x-ami-reason")) == (404, "no_route"), host
    for target in (f"other.example.test:{outside.https}",
                   f"api.example.test:{outside.https + 1}"):
        resp = await roundtrip(proxy.outbound, _connect(target))
        assert (resp.status, resp.header("x-ami-reason")) == (405, "method_not_allowed"), target


async def connect_then(port: int, target: str, *requests: bytes) -> list[bytes]:
    """CONNECT ``target`` through the outbound listener on ``port``, then send each request
    inside the tunnel; the 200 head, then each answer's head and body."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        writer.write(_connect(target))
        answers = [await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 10)]
        for request in requests:
            writer.write(request)
            head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 10)
            length = next(int(line.split(b":")[1]) for line in head.split(b"\r\n")
                          if line.lower().startswith(b"content-length:"))
            answers.append(head + await asyncio.wait_for(reader.readexactly(length), 10))
        return answers
    finally:
        writer.close()


async def test_connect_to_a_declared_http_port_keeps_the_route(proxy: TrafficProxy,
                                                               outside: Outside) -> None:
    """`CONNECT api.example.test:PORT` (an HTTP port; what a gRPC or other client honouring
    http_proxy sends) is read as HTTP: the host's Route applies to every request in the
    tunnel, as to a direct request, where it used to be refused (or, under ALLOW_ANY,
    tunnelled as bytes around the Route)."""
    target = f"api.example.test:{outside.api.port}"
    before = await proxy.metric("ami_requests_total", destination_service="api.example.test",
                                response_code="418")
    established, teapot, plain = await connect_then(
        proxy.outbound, target, get(target, "/teapot"), get(target, "/inside"))
    assert established.startswith(b"HTTP/1.1 200")
    assert teapot.startswith(b"HTTP/1.1 418") and b"x-ami-reason: fault_injected" in teapot
    assert plain.startswith(b"HTTP/1.1 200") and b'"path": "/inside"' in plain
    assert outside.api.requests[-1].header("x-via") == "mesh"  # the Route's header edit
    assert await proxy.metric("ami_requests_total", destination_service="api.example.test",
                              response_code="418") == before + 1


async def test_tls_inside_a_tunnel_to_an_http_port_is_refused_with_the_way_out(
        proxy: TrafficProxy, outside: Outside) -> None:
    """An app beginning TLS in a CONNECT tunnel to a declared HTTP port (read as HTTP): closed
    without a byte reaching the host, and the log says how to do it instead."""
    seen = len(proxy.stderr())
    reader, writer = await asyncio.open_connection("127.0.0.1", proxy.outbound)
    try:
        writer.write(_connect(f"api.example.test:{outside.api.port}"))
        assert (await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 10)).startswith(
            b"HTTP/1.1 200")
        writer.write(b"\x16\x03\x01\x00\x05hello")  # a TLS record header and a bit
        assert await asyncio.wait_for(reader.read(), 10) == b""
    finally:
        writer.close()
    await eventually(lambda: "an HTTP port of an ExternalService" in proxy.stderr()[seen:])
    assert "DestinationPolicy tls" in proxy.stderr()[seen:]


async def test_a_destination_policy_limits_an_external_host(proxy: TrafficProxy,
                                                            outside: Outside) -> None:
    host = get(f"pooled.example.test:{outside.pooled.port}", "/")
    first, second = await asyncio.gather(roundtrip(proxy.outbound, host),
                                         roundtrip(proxy.outbound, host))
    assert sorted((r.status, r.header("x-ami-reason")) for r in (first, second)) == [
        (200, None), (503, "overflow")]
    assert await proxy.metric("ami_circuit_breaker_overflow_total",
                              destination_service="pooled.example.test") == 1


async def test_a_host_without_endpoints_is_resolved_by_name(proxy: TrafficProxy,
                                                            outside: Outside) -> None:
    resp = await roundtrip(proxy.outbound, get(f"localhost:{outside.named.port}", "/n"))
    assert resp.status == 200 and json.loads(resp.body)["version"] == "named"


async def test_a_name_that_does_not_resolve_is_a_connect_failure(proxy: TrafficProxy) -> None:
    resp = await roundtrip(proxy.outbound, get("nowhere.invalid", "/"))
    assert (resp.status, resp.header("x-ami-reason")) == (503, "upstream_connect_failure")
    await eventually(lambda: "cannot resolve nowhere.invalid" in proxy.stderr())


async def _https_through(proxy: TrafficProxy, outside: Outside, target: str) -> bytes:
    reader, writer = await asyncio.open_connection("127.0.0.1", proxy.outbound)
    try:
        writer.write(_connect(target))
        head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 10)
        assert head == b"HTTP/1.1 200 Connection Established\r\n\r\n"
        ctx = ssl.create_default_context(cadata=outside.ca.decode())
        await writer.start_tls(ctx, server_hostname="127.0.0.1")
        writer.write(b"GET / HTTP/1.1\r\nHost: outside\r\n\r\n")
        resp = await asyncio.wait_for(read_response(reader), 10)
        assert resp.status == 200
        return resp.body
    finally:
        writer.close()


async def tunnel_counted(proxy: TrafficProxy, count: float, **labels: str) -> None:
    """Wait (10 s at most) until the tunnels' requests count ``count``: a tunnel is counted
    once it has closed, a moment after the client saw its end."""
    loop = asyncio.get_running_loop()
    end = loop.time() + 10
    while (seen := await proxy.metric("ami_requests_total", **labels)) != count:
        assert loop.time() < end, f"{labels}: {seen} tunnels counted within 10 s, not {count}"
        await asyncio.sleep(0.01)  # poll interval of a deadline-bounded wait


async def test_connect_to_a_declared_tls_port_tunnels(proxy: TrafficProxy,
                                                      outside: Outside) -> None:
    """TLS end to end between the client and the outside host, through the tunnel; the
    tunnel is counted once it has closed (as Envoy records a CONNECT stream when it ends)."""
    labels = {"destination_service": "api.example.test", "response_code": "200"}
    before = await proxy.metric("ami_requests_total", **labels)
    assert await _https_through(proxy, outside, f"api.example.test:{outside.https}") == b"secret"
    await tunnel_counted(proxy, before + 1, **labels)


async def test_a_wildcard_host_tunnels_to_the_requested_name(proxy: TrafficProxy,
                                                             outside: Outside) -> None:
    before = await proxy.metric("ami_requests_total", destination_service="*.0.0.1")
    assert await _https_through(proxy, outside, f"127.0.0.1:{outside.https}") == b"secret"
    await tunnel_counted(proxy, before + 1, destination_service="*.0.0.1")


async def _tunnel(proxy: TrafficProxy, target: str,
                  ) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    reader, writer = await asyncio.open_connection("127.0.0.1", proxy.outbound)
    writer.write(_connect(target))
    head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 10)
    assert head == b"HTTP/1.1 200 Connection Established\r\n\r\n"
    return reader, writer


async def test_a_server_that_speaks_first_is_heard_through_a_tunnel(
        proxy: TrafficProxy, outside: Outside) -> None:
    """The server's banner may arrive before the tunnel is joined to the client: it waits for
    the tunnel rather than being taken for an idle HTTP connection's garbage (which closed
    the connection: the client saw an empty tunnel)."""
    for _ in range(5):
        reader, writer = await _tunnel(proxy, f"tcp.example.test:{outside.greeter}")
        assert await asyncio.wait_for(reader.readline(), 10) == b"220 hello\r\n"
        writer.write(b"ping\n")
        assert await asyncio.wait_for(reader.read(), 10) == b"ping\n"
        writer.close()


async def test_a_tunnel_carries_a_half_close_each_way(proxy: TrafficProxy,
                                                      outside: Outside) -> None:
    """A TCP tunnel passes a FIN on and keeps the other direction open (as Envoy's tcp_proxy):
    a client that ends its request with a half-close still gets the answer, and a server that
    half-closes after its banner still hears the client. The tunnel closed at either FIN."""
    reader, writer = await _tunnel(proxy, f"tcp.example.test:{outside.until_eof}")
    writer.write(b"hello")
    writer.write_eof()
    assert await asyncio.wait_for(reader.read(), 10) == b"got 5 bytes"
    writer.close()
    reader, writer = await _tunnel(proxy, f"tcp.example.test:{outside.banner}")
    assert await asyncio.wait_for(reader.read(), 10) == b"banner"  # up to the server's FIN
    writer.write(b"bye")
    writer.write_eof()
    await eventually(lambda: outside.heard == [b"bye"])
    writer.close()
    # both directions ended: the sidecar let go of both tunnels' connections
    deadline = asyncio.get_running_loop().time() + 10
    while await proxy.metric("ami_downstream_connections_active", listener="outbound") > 0:
        assert asyncio.get_running_loop().time() < deadline, "a tunnel's connection stayed"
        await asyncio.sleep(0.02)  # poll interval of a deadline-bounded wait


@pytest.fixture(scope="module")
def allow_any(tmp_path_factory: pytest.TempPathFactory,
              outside: Outside) -> Iterator[TrafficProxy]:
    hub = Backends()
    web = start_backend(hub, version="web")
    external = {"api.example.test": {"ports": [{"number": outside.api.port, "protocol": "HTTP"}],
                                     "endpoints": ["127.0.0.1"]}}
    yield from started(TrafficProxy(Path(tmp_path_factory.mktemp("any")),
                                    {"web": {"endpoints": endpoints(web)}}, [],
                                    mesh={"outboundTrafficPolicy": {"mode": "ALLOW_ANY"}},
                                    external=external), hub)


async def test_under_allow_any_declared_hosts_keep_their_name(allow_any: TrafficProxy,
                                                              outside: Outside) -> None:
    """Declared ports go to the declared endpoints, under the host's label; anything else
    passes through, as ALLOW_ANY does without ExternalServices."""
    resp = await roundtrip(allow_any.outbound, get(f"api.example.test:{outside.api.port}", "/"))
    assert resp.status == 200
    assert await allow_any.metric("ami_requests_total",
                                  destination_service="api.example.test") == 1
    # another host: passed through, under the passthrough label
    resp = await roundtrip(allow_any.outbound, get(f"localhost:{outside.named.port}", "/"))
    assert resp.status == 200 and json.loads(resp.body)["version"] == "named"
    assert await allow_any.metric("ami_requests_total", destination_service="passthrough") == 1
    # an undeclared port of the declared host: passed through too (this name resolves nowhere,
    # so the passthrough's answer is a connect failure, not the 404 of REGISTRY_ONLY)
    resp = await roundtrip(allow_any.outbound, get(f"api.example.test:{outside.https}", "/"))
    assert (resp.status, resp.header("x-ami-reason")) == (503, "upstream_connect_failure")
    assert await allow_any.metric("ami_requests_total", destination_service="passthrough") == 2
    # CONNECT to the declared HTTP port: read as HTTP, counted under the host, not tunnelled
    target = f"api.example.test:{outside.api.port}"
    established, answer = await connect_then(allow_any.outbound, target, get(target, "/t"))
    assert established.startswith(b"HTTP/1.1 200") and answer.startswith(b"HTTP/1.1 200")
    assert await allow_any.metric("ami_requests_total",
                                  destination_service="api.example.test") == 2
    # an undeclared CONNECT target: tunnelled by the passthrough
    reader, writer = await asyncio.open_connection("127.0.0.1", allow_any.outbound)
    writer.write(_connect(f"127.0.0.1:{outside.https}"))
    head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 10)
    writer.close()
    assert head.startswith(b"HTTP/1.1 200")


@pytest.fixture(scope="module")
def misdeclared(tmp_path_factory: pytest.TempPathFactory,
                outside: Outside) -> Iterator[TrafficProxy]:
    """ExternalServices pointing where they should not: at this sidecar's own outbound port,
    or claiming a mesh service's name (declared in any namespace, seen by every sidecar) to send
    its callers, in plaintext, elsewhere."""
    hub = Backends()
    web = start_backend(hub, version="web")
    elsewhere = start_backend(hub, version="elsewhere")
    proxy = TrafficProxy(Path(tmp_path_factory.mktemp("misdeclared")),
                         {"web": {"endpoints": endpoints(web)}}, [])
    config = yaml.safe_load(proxy.config.read_text())
    config["external"] = {
        # an endpoint, or a name, that is this sidecar's own outbound listener
        "self.example.test": {"ports": [{"number": proxy.outbound, "protocol": "HTTP"},
                                        {"number": proxy.admin, "protocol": "HTTP"}],
                              "endpoints": ["127.0.0.1"]},
        "localhost": {"ports": [{"number": proxy.outbound, "protocol": "TLS"}]},
        # the mesh service web (namespace default) by its longer names
        **{name: {"ports": [{"number": 80, "protocol": "HTTP"},
                            {"number": elsewhere.port, "protocol": "HTTP"},
                            {"number": 443, "protocol": "TLS"}],
                  "endpoints": ["127.0.0.1"]}
           for name in ("web.default", "web.default.svc.cluster.local",
                        "ratings.default.svc.cluster.local")},
        "*.default.svc.cluster.local": {"ports": [{"number": elsewhere.port, "protocol": "HTTP"},
                                                  {"number": 443, "protocol": "TLS"}]},
    }
    proxy.elsewhere = elsewhere.port  # type: ignore[attr-defined]
    proxy.config.write_text(yaml.safe_dump(config))
    yield from started(proxy, hub)


async def test_an_external_host_that_is_the_sidecar_itself_is_not_looped(
        misdeclared: TrafficProxy) -> None:
    """As for ALLOW_ANY: an ExternalService endpoint (or name) that is the sidecar's own outbound
    listener is refused where the connection arrives, instead of each turn of the loop opening
    two more descriptors until there are none left."""
    proxy = misdeclared
    before = await proxy.metric("ami_downstream_connections_total", listener="outbound")
    for raw in (get(f"self.example.test:{proxy.outbound}", "/"),
                _connect(f"localhost:{proxy.outbound}")):
        resp = await roundtrip(proxy.outbound, raw)
        assert (resp.status, resp.header("x-ami-reason")) == (503, "upstream_connect_failure")
    # the client's connection and the refused one, each at most twice (connect failover)
    assert await proxy.metric("ami_downstream_connections_total",
                              listener="outbound") - before <= 6
    assert await proxy.metric("ami_upstream_connect_failures_total",
                              destination_service="self.example.test") >= 1
    # the admin port is no listener taking requests to forward: reached, as declared
    resp = await roundtrip(proxy.outbound, get(f"self.example.test:{proxy.admin}", "/ready"))
    assert resp.status == 200


async def test_an_external_host_cannot_take_a_mesh_service_name(
        misdeclared: TrafficProxy) -> None:
    """`web.default.svc.cluster.local` is the mesh service web: its callers keep reaching web
    (over mTLS when on), not an ExternalService's endpoint in plaintext. Nor does any
    `name.namespace.svc...` form (ratings has no endpoint here) go to an outside host."""
    proxy, port = misdeclared, misdeclared.elsewhere  # type: ignore[attr-defined]
    for host in ("web.default", "web.default.svc.cluster.local", f"web.default:{port}",
                 f"web.default.svc.cluster.local:{port}"):
        resp = await roundtrip(proxy.outbound, get(host, "/"))
        assert resp.status == 200 and json.loads(resp.body)["version"] == "web", host
    for host in ("ratings.default.svc.cluster.local", f"ratings.default.svc.cluster.local:{port}"):
        resp = await roundtrip(proxy.outbound, get(host, "/"))
        assert (resp.status, resp.header("x-ami-reason")) == (404, "no_route"), host
    for target in ("web.default.svc.cluster.local:443", "web.default:443"):
        # CONNECT to the mesh service: a tunnel into the mesh (its requests go to web), never
        # a byte tunnel to the ExternalService's endpoint
        reader, writer = await asyncio.open_connection("127.0.0.1", proxy.outbound)
        try:
            writer.write(_connect(target) + b"GET / HTTP/1.1\r\n\r\n")
            established = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 10)
            resp = await asyncio.wait_for(read_response(reader), 10)
        finally:
            writer.close()
        assert established.startswith(b"HTTP/1.1 200 "), target
        assert resp.status == 200 and json.loads(resp.body)["version"] == "web", target
    for target in ("ratings.default.svc.cluster.local:443", "x.default.svc.cluster.local:443"):
        resp = await roundtrip(proxy.outbound, _connect(target))
        assert (resp.status, resp.header("x-ami-reason")) == (405, "method_not_allowed"), target
