"""gRPC and HTTP/2 to hosts outside the mesh (ExternalService `GRPC`/`HTTP2` ports): real grpcio
servers stand in for the outside hosts, in h2c and behind TLS the sidecar originates (ALPN h2),
and real grpcio clients call them through a real proxy process running a static snapshot."""

from __future__ import annotations

import asyncio
import json
import os
import ssl
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
import pytest

from tests.grpcapp import EchoServer, channel, method, serving_in_thread
from tests.h2app import H2Server, h2_request
from tests.proxyharness import Backends, get, roundtrip
from tests.test_traffic_tls_origination import OutsideHttps, self_signed
from tests.traffic_backends import TrafficProxy, started

pytestmark = pytest.mark.timeout(60)
DEADLINE = 10.0
NAME = "secure.example.test"  # the name in the outside hosts' certificate
REPO = Path(__file__).resolve().parent.parent
PLAIN = "grpc.example.test:50051"  # what the apps call; the sidecar knows where it is
SECURE = f"{NAME}:50051"


@dataclass
class Outside:
    """The outside hosts: gRPC in h2c and over TLS, plain HTTP/2 over TLS, an HTTPS server
    that speaks only HTTP/1.1, and the certificate files."""

    plain: EchoServer
    secure: EchoServer
    h2: H2Server
    partner: H2Server  # wants a client certificate
    h1: OutsideHttps
    cert: Path
    other_ca: Path
    tmp: Path


@pytest.fixture(scope="module")
def outside(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Outside]:
    tmp = tmp_path_factory.mktemp("outside")
    cert, key = self_signed(tmp, NAME)
    other_ca, _ = self_signed(tmp_path_factory.mktemp("other"), NAME)  # an impostor's
    h2_tls = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    h2_tls.load_cert_chain(cert, key)
    h2_tls.set_alpn_protocols(["h2"])
    plain = EchoServer("plain")
    secure = EchoServer("secure", tls=(key.read_bytes(), cert.read_bytes()))
    h2 = H2Server("h2", ssl_context=h2_tls)
    client_cert, _ = self_signed(tmp, "client.mesh.test")  # the partner trusts it alone
    partner_tls = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    partner_tls.load_cert_chain(cert, key)
    partner_tls.set_alpn_protocols(["h2"])
    partner_tls.verify_mode = ssl.CERT_REQUIRED
    partner_tls.load_verify_locations(client_cert)
    partner = H2Server("partner", ssl_context=partner_tls)
    hub = Backends()
    h1 = OutsideHttps(hub, cert, key)
    with serving_in_thread(plain, secure, h2, partner,  # type: ignore[arg-type]
                           deadline=DEADLINE):
        yield Outside(plain, secure, h2, partner, h1, cert, other_ca, tmp)
    h1.close()
    hub.close()


def _port(number: int, protocol: str, target: int, **tls: str) -> dict[str, Any]:
    """An ExternalService host (at 127.0.0.1) with one port; TLS originated when `tls`."""
    host: dict[str, Any] = {"ports": [{"number": number, "protocol": protocol,
                                       "targetPort": target}], "endpoints": ["127.0.0.1"]}
    if tls:
        host["policy"] = {"tls": {"mode": "SIMPLE", **tls}}
    return host


@pytest.fixture(scope="module")
def proxy(tmp_path_factory: pytest.TempPathFactory, outside: Outside) -> Iterator[TrafficProxy]:
    ca = str(outside.cert)
    external = {
        "grpc.example.test": _port(50051, "GRPC", outside.plain.port),
        NAME: _port(50051, "GRPC", outside.secure.port, caCertificates=ca),
        "impostor.example.test": _port(50051, "GRPC", outside.secure.port,
                                       caCertificates=str(outside.other_ca), sni=NAME),
        "h1only.example.test": _port(50051, "GRPC", outside.h1.port, caCertificates=ca,
                                     sni=NAME),
        "h2.example.test": _port(8080, "HTTP2", outside.h2.port, caCertificates=ca, sni=NAME),
        # MUTUAL presents our certificate to a partner wanting one; SIMPLE to it: none
        "partner.example.test": _port(8080, "HTTP2", outside.partner.port, caCertificates=ca,
                                      sni=NAME),
        "no-cert.example.test": _port(8080, "HTTP2", outside.partner.port, caCertificates=ca,
                                      sni=NAME),
        # a wildcard, resolved by the requested name (here an IPv4 literal ending in .0.0.1)
        "*.0.0.1": {"ports": [{"number": outside.plain.port, "protocol": "GRPC"}]},
    }
    external["partner.example.test"]["policy"]["tls"].update(
        mode="MUTUAL", clientCertificate=str(outside.tmp / "client.mesh.test.pem"),
        privateKey=str(outside.tmp / "client.mesh.test.key"))
    echo = "/ami.test.Echo/"
    routes = [{"host": "grpc.example.test", "rules": [
        {"matches": [{"path": {"exact": echo + "Slow"}}], "backends": [{}], "timeout": "300ms"},
        {"matches": [{"path": {"exact": echo + "Flaky"}}], "backends": [{}],
         "retries": {"attempts": 2, "retryOn": ["unavailable"]}},
        {"backends": [{}], "headers": {"request": {"set": {"x-via": "mesh"}}}}]}]
    hub = Backends()
    yield from started(TrafficProxy(Path(tmp_path_factory.mktemp("proxy")), {}, routes,
                                    external=external), hub)


def _reason(err: grpc.aio.AioRpcError) -> str | None:
    """The proxy's reason word, in the metadata of its trailers-only answer."""
    for key, value in (*(err.initial_metadata() or ()), *(err.trailing_metadata() or ())):
        if key == "x-ami-reason":
            return str(value)
    return None


async def _calls(proxy: TrafficProxy, authority: str) -> dict[str, Any]:
    """Unary, server-streaming and bidirectional calls, dialling the outbound listener with
    the outside host as the authority (h2c prior knowledge)."""
    async def chat() -> Any:
        for i in range(3):
            yield b"m%d" % i

    async with channel(proxy.outbound, authority) as ch:
        unary = json.loads(await method(ch, "Unary")(b"hi", timeout=DEADLINE))
        stream = [m async for m in method(ch, "Stream", "unary_stream")(b"3", timeout=DEADLINE)]
        echoed = [m async for m in method(ch, "Chat", "stream_stream")(chat(), timeout=DEADLINE)]
    return {"unary": unary, "stream": stream, "chat": echoed}


async def test_grpc_calls_to_an_outside_host_go_as_h2c(proxy: TrafficProxy,
                                                       outside: Outside) -> None:
    """A GRPC port: unary and streaming calls reach the outside gRPC server over h2c, with the
    host's Route applied, counted per call under the host with their grpc-status."""
    labels = {"destination_service": "grpc.example.test", "response_code": "200"}
    before = await proxy.metric("ami_requests_total", grpc_response_status="0", **labels)
    result = await _calls(proxy, PLAIN)
    assert result["unary"]["server"] == "plain" and result["unary"]["request"] == "hi"
    assert result["unary"]["metadata"]["x-via"] == "mesh"  # the Route's header edit
    assert result["stream"] == [b"plain-0", b"plain-1", b"plain-2"]
    assert result["chat"] == [b"echo:m0", b"echo:m1", b"echo:m2"]
    async with channel(proxy.outbound, PLAIN) as ch:
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await method(ch, "Fail")(b"NOT_FOUND", timeout=DEADLINE)
    assert err.value.code() == grpc.StatusCode.NOT_FOUND  # the server's, passed on
    assert await proxy.metric("ami_requests_total", grpc_response_status="0",
                              **labels) == before + 3
    assert await proxy.metric("ami_requests_total", grpc_response_status="5", **labels) >= 1
    assert await proxy.metric("ami_requests_total", destination_service="grpc.example.test",
                              connection_security_policy="none") >= 4


async def test_a_route_timeout_and_retries_apply_per_call(proxy: TrafficProxy,
                                                          outside: Outside) -> None:
    """The host's Route: a call past its 300ms timeout is UNAVAILABLE (`timeout`), a call the
    server fails with UNAVAILABLE once is retried (retryOn: unavailable) and succeeds."""
    async with channel(proxy.outbound, PLAIN) as ch:
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await method(ch, "Slow")(b"5", timeout=DEADLINE)
        calls = outside.plain.calls
        assert await method(ch, "Flaky")(b"once", timeout=DEADLINE) == b"plain"
    assert (err.value.code(), _reason(err.value)) == (grpc.StatusCode.UNAVAILABLE, "timeout")
    assert outside.plain.calls == calls + 2  # failed once, retried once
    assert await proxy.metric("ami_retries_total", destination_service="grpc.example.test") >= 1
    assert await proxy.metric("ami_requests_total", destination_service="grpc.example.test",
                              response_code="504") >= 1


async def test_http11_to_a_grpc_port_is_a_protocol_mismatch(proxy: TrafficProxy,
                                                             outside: Outside) -> None:
    """HTTP/1.1 is not upgraded to HTTP/2 upstream: 502 protocol_mismatch, nothing sent."""
    connections = outside.h2.connections
    for host in (PLAIN, "h2.example.test:8080"):
        resp = await roundtrip(proxy.outbound, get(host, "/"))
        assert (resp.status, resp.header("x-ami-reason")) == (502, "protocol_mismatch"), host
    assert outside.h2.connections == connections


async def test_tls_origination_offers_alpn_h2(proxy: TrafficProxy, outside: Outside) -> None:
    """With the host's `tls`, the app's h2c leaves as h2 over verified TLS: gRPC calls to a
    gRPC server behind TLS, and a plain HTTP/2 request (HTTP2 port) sent as `https`."""
    result = await _calls(proxy, SECURE)
    assert result["unary"]["server"] == "secure"
    assert result["stream"] == [b"secure-0", b"secure-1", b"secure-2"]
    assert await proxy.metric("ami_requests_total", destination_service=NAME,
                              grpc_response_status="0") == 3
    resp = await h2_request(proxy.outbound, "h2.example.test:8080", "/over-tls")
    assert resp.status == 200 and resp.get("x-served-by") == "h2"
    seen = outside.h2.requests[-1]
    assert (seen.path, seen.get(":scheme"), seen.get(":authority")) == (
        "/over-tls", "https", "h2.example.test:8080")


async def test_mutual_tls_origination_over_http2(proxy: TrafficProxy,
                                                 outside: Outside) -> None:
    """`mode: MUTUAL` presents the client certificate on the h2 connection too. Without one
    (SIMPLE), a TLS 1.3 server refuses after the handshake: the request fails (503
    `upstream_connect_failure`, no SETTINGS came) and the log says what ended the session."""
    resp = await h2_request(proxy.outbound, "partner.example.test:8080", "/m")
    assert resp.status == 200 and resp.get("x-served-by") == "partner"
    seen = len(proxy.stderr())
    refused = await h2_request(proxy.outbound, "no-cert.example.test:8080", "/m")
    assert (refused.status, refused.get("x-ami-reason")) == (503, "upstream_connect_failure")
    said = proxy.stderr()[seen:]
    assert f"TLS to {NAME} (endpoint 127.0.0.1:{outside.partner.port}) ended: " in said, said


async def test_a_wrong_certificate_is_unavailable(proxy: TrafficProxy) -> None:
    """A certificate from another CA: UNAVAILABLE (`upstream_connect_failure`), nothing sent,
    and the sidecar's log says why."""
    seen = len(proxy.stderr())
    async with channel(proxy.outbound, "impostor.example.test:50051") as ch:
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await method(ch, "Unary")(b"secret", timeout=DEADLINE)
    assert (err.value.code(), _reason(err.value)) == (
        grpc.StatusCode.UNAVAILABLE, "upstream_connect_failure")
    said = proxy.stderr()[seen:]
    assert f"TLS to {NAME} (endpoint 127.0.0.1:" in said and "self-signed certificate" in said
    assert await proxy.metric("ami_upstream_connect_failures_total",
                              destination_service="impostor.example.test") >= 1


async def test_a_server_that_does_not_choose_h2_is_a_connect_failure(
        proxy: TrafficProxy) -> None:
    """An HTTPS server that speaks HTTP/1.1 only (no ALPN h2): UNAVAILABLE, and the log says
    what the server chose."""
    seen = len(proxy.stderr())
    async with channel(proxy.outbound, "h1only.example.test:50051") as ch:
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await method(ch, "Unary")(b"x", timeout=DEADLINE)
    assert (err.value.code(), _reason(err.value)) == (
        grpc.StatusCode.UNAVAILABLE, "upstream_connect_failure")
    said = proxy.stderr()[seen:]
    assert f"TLS to {NAME} (endpoint 127.0.0.1:" in said, said
    assert "the server does not speak HTTP/2 (ALPN h2 offered, none chosen)" in said, said


async def test_a_wildcard_grpc_port_goes_as_h2c(proxy: TrafficProxy, outside: Outside) -> None:
    """A wildcard host's GRPC port: the requested name is reached over h2c, counted under the
    pattern."""
    result = await _calls(proxy, f"127.0.0.1:{outside.plain.port}")
    assert result["unary"]["server"] == "plain"
    assert await proxy.metric("ami_requests_total", destination_service="*.0.0.1",
                              grpc_response_status="0") == 3


def _grpc_app(proxy: TrafficProxy, target: str) -> dict[str, Any]:
    """`tests.grpcclient` as an app process with `grpc_proxy` set to the sidecar (and no
    other proxy variable): grpcio tunnels with CONNECT, as apps do."""
    env = {k: v for k, v in os.environ.items() if not k.lower().endswith("_proxy")}
    env.update({"grpc_proxy": f"http://127.0.0.1:{proxy.outbound}", "GRPC_VERBOSITY": "ERROR"})
    out = subprocess.run([sys.executable, "-m", "tests.grpcclient", target], cwd=REPO, env=env,
                         capture_output=True, text=True, timeout=30, check=False)
    assert out.returncode == 0, out.stderr
    result: dict[str, Any] = json.loads(out.stdout)
    return result


async def test_grpc_proxy_tunnels_are_read_as_http2(proxy: TrafficProxy) -> None:
    """`CONNECT secure.example.test:50051` (grpc_proxy) to a declared GRPC port is read as
    HTTP/2: each call in the tunnel is a request of its own, sent over the TLS the sidecar
    originates, counted under the host."""
    before = await proxy.metric("ami_requests_total", destination_service=NAME,
                                grpc_response_status="0")
    result = await asyncio.to_thread(_grpc_app, proxy, SECURE)
    assert result["unary"]["server"] == "secure"
    assert result["stream"] == [f"secure-{i}" for i in range(5)]
    assert result["chat"] == ["echo:m0", "echo:m1", "echo:m2"]
    assert await proxy.metric("ami_requests_total", destination_service=NAME,
                              grpc_response_status="0") >= before + 3


async def test_grpc_proxy_to_a_wildcard_grpc_port(proxy: TrafficProxy, outside: Outside) -> None:
    """`CONNECT 127.0.0.1:PORT` (grpc_proxy) to a wildcard's GRPC port is read as HTTP/2 too,
    each call counted under the pattern (it used to be refused: 405)."""
    before = await proxy.metric("ami_requests_total", destination_service="*.0.0.1",
                                grpc_response_status="0")
    result = await asyncio.to_thread(_grpc_app, proxy, f"127.0.0.1:{outside.plain.port}")
    assert result["unary"]["server"] == "plain"
    assert result["chat"] == ["echo:m0", "echo:m1", "echo:m2"]
    assert await proxy.metric("ami_requests_total", destination_service="*.0.0.1",
                              grpc_response_status="0") >= before + 3
