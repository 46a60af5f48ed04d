"""Hosts outside the mesh: MeshConfig outboundTrafficPolicy ALLOW_ANY (passthrough, CONNECT
tunnels) against the REGISTRY_ONLY default, through real proxy processes."""

from __future__ import annotations

import asyncio
import json
import ssl
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from meshctl.api.resources import load_documents
from meshctl.controlplane.registry import ProxyInfo
from meshctl.controlplane.snapshots import SnapshotBuilder
from proxy.config import Snapshot
from tests.proxyharness import (
    Backends,
    RawBackend,
    echo_app,
    get,
    read_response,
    roundtrip,
    roundtrip_close,
)
from tests.test_gateway_https import issue
from tests.traffic_backends import TrafficProxy, endpoints, start_backend, started

pytestmark = pytest.mark.timeout(60)


async def _echo_bytes(_backend: RawBackend, reader: asyncio.StreamReader,
                      writer: asyncio.StreamWriter) -> None:
    while data := await reader.read(65536):
        writer.write(data)
        await writer.drain()


@pytest.fixture(scope="module")
def outside(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    """Servers the mesh does not know: HTTP, raw TCP echo, and HTTPS with its own CA."""
    hub = Backends()
    tmp = Path(tmp_path_factory.mktemp("outside"))
    pem = issue("outside")
    (tmp / "c.pem").write_bytes(pem.cert)
    (tmp / "k.pem").write_bytes(pem.key)
    server_ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    server_ctx.load_cert_chain(tmp / "c.pem", tmp / "k.pem")

    async def https_answer(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.readuntil(b"\r\n\r\n")
        writer.write(b"HTTP/1.1 200 OK\r\ncontent-length: 6\r\nconnection: close\r\n\r\nsecret")
        await writer.drain()
        writer.close()

    async def start_https() -> int:
        server = await asyncio.start_server(https_answer, "127.0.0.1", 0, ssl=server_ctx)
        return int(server.sockets[0].getsockname()[1])

    yield {"hub": hub, "http": hub.aiohttp(echo_app()), "echo": hub.raw(_echo_bytes).port,
           "https": hub.call(start_https()), "ca": pem.cert}
    hub.close()


def proxy_with(tmp: Path, hub: Backends, mode: str | None) -> TrafficProxy:
    mesh: dict[str, Any] = {"accessLog": False}
    if mode is not None:
        mesh["outboundTrafficPolicy"] = {"mode": mode}
    return TrafficProxy(tmp, {"web": {"endpoints": endpoints(start_backend(hub))}}, [],
                        mesh=mesh)


@pytest.fixture(scope="module")
def allow_any(tmp_path_factory: pytest.TempPathFactory) -> Iterator[TrafficProxy]:
    hub = Backends()
    yield from started(proxy_with(Path(tmp_path_factory.mktemp("any")), hub, "ALLOW_ANY"), hub)


@pytest.fixture(scope="module")
def registry_only(tmp_path_factory: pytest.TempPathFactory) -> Iterator[TrafficProxy]:
    hub = Backends()
    yield from started(proxy_with(Path(tmp_path_factory.mktemp("only")), hub, None), hub)


async def test_plain_http_to_an_outside_host_passes_through(allow_any: TrafficProxy,
                                                            outside: dict[str, Any]) -> None:
    raw = f"GET http://localhost:{outside['http']}/out?q=1 HTTP/1.1\r\n" \
          f"Host: localhost:{outside['http']}\r\n\r\n".encode()
    resp = await roundtrip(allow_any.outbound, raw)
    assert resp.status == 200 and json.loads(resp.body)["path"] == "/out"
    assert (await roundtrip(allow_any.outbound, get("web", "/in"))).status == 200  # mesh: routed
    assert await allow_any.metric("ami_requests_total", destination_service="passthrough",
                                  response_code="200") >= 1


async def test_connect_tunnels_bytes_both_ways(allow_any: TrafficProxy,
                                               outside: dict[str, Any]) -> None:
    """Bytes sent right behind the CONNECT head (as eager clients do) are not lost."""
    reader, writer = await asyncio.open_connection("127.0.0.1", allow_any.outbound)
    target = f"127.0.0.1:{outside['echo']}"
    writer.write(f"CONNECT {target} HTTP/1.1\r\nHost: {target}\r\n\r\nearly".encode())
    head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 10)
    assert head == b"HTTP/1.1 200 Connection Established\r\n\r\n"
    assert await asyncio.wait_for(reader.readexactly(5), 10) == b"early"
    writer.write(b"later")
    assert await asyncio.wait_for(reader.readexactly(5), 10) == b"later"
    writer.close()


async def test_https_through_a_connect_tunnel(allow_any: TrafficProxy,
                                              outside: dict[str, Any]) -> None:
    """What a client with HTTPS_PROXY does: CONNECT, then TLS end to end with the outside host
    (the proxy sees only ciphertext)."""
    reader, writer = await asyncio.open_connection("127.0.0.1", allow_any.outbound)
    target = f"127.0.0.1:{outside['https']}"
    writer.write(f"CONNECT {target} HTTP/1.1\r\nHost: {target}\r\n\r\n".encode())
    assert (await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 10)).startswith(b"HTTP/1.1 200")
    ctx = ssl.create_default_context(cadata=outside["ca"].decode())
    await writer.start_tls(ctx, server_hostname="127.0.0.1")
    writer.write(b"GET / HTTP/1.1\r\nHost: outside\r\n\r\n")
    resp = await asyncio.wait_for(read_response(reader), 10)
    writer.close()
    assert (resp.status, resp.body) == (200, b"secret")


async def test_connect_to_a_closed_port_is_503_and_close(allow_any: TrafficProxy) -> None:
    resp, closed = await roundtrip_close(
        allow_any.outbound, b"CONNECT 127.0.0.1:1 HTTP/1.1\r\nHost: 127.0.0.1:1\r\n\r\n")
    assert (resp.status, resp.header("x-ami-reason")) == (503, "upstream_connect_failure")
    assert closed


async def test_a_request_to_the_proxy_itself_is_not_looped(allow_any: TrafficProxy) -> None:
    resp = await roundtrip(allow_any.outbound, get(f"127.0.0.1:{allow_any.outbound}", "/"))
    assert (resp.status, resp.header("x-ami-reason")) == (404, "no_route")


@pytest.mark.parametrize("host", ["2130706433", "0177.0.0.1", "[::ffff:127.0.0.1]"])
async def test_other_spellings_of_the_proxy_itself_are_not_looped(allow_any: TrafficProxy,
                                                                  host: str) -> None:
    """Names the early check cannot know (127.0.0.1 as a number, in octal, IPv4-mapped) are
    caught where the connection arrives: one refused connection, not one per loop turn until
    the descriptors run out."""
    before = await allow_any.metric("ami_downstream_connections_total", listener="outbound")
    for raw in (get(f"{host}:{allow_any.outbound}", "/"),
                f"CONNECT {host}:{allow_any.outbound} HTTP/1.1\r\nHost: x\r\n\r\n".encode()):
        resp = await roundtrip(allow_any.outbound, raw)
        assert (resp.status, resp.header("x-ami-reason")) == (503, "upstream_connect_failure")
    # the client's connection and the refused one, each at most twice (connect failover)
    assert await allow_any.metric("ami_downstream_connections_total",
                                  listener="outbound") - before <= 6


async def test_registry_only_refuses_outside_hosts(registry_only: TrafficProxy,
                                                   outside: dict[str, Any]) -> None:
    resp = await roundtrip(registry_only.outbound, get(f"localhost:{outside['http']}", "/"))
    assert (resp.status, resp.header("x-ami-reason")) == (404, "no_route")
    target = f"127.0.0.1:{outside['echo']}"
    resp = await roundtrip(registry_only.outbound,
                           f"CONNECT {target} HTTP/1.1\r\nHost: {target}\r\n\r\n".encode())
    assert (resp.status, resp.header("x-ami-reason")) == (405, "method_not_allowed")


def test_mesh_config_sets_the_mode_of_every_proxy() -> None:
    mesh = load_documents("apiVersion: ami.mesh/v1alpha1\nkind: MeshConfig\n"
                          "metadata: {name: default}\n"
                          "spec: {outboundTrafficPolicy: {mode: ALLOW_ANY}}\n", "mesh.yaml")
    proxy = ProxyInfo(name="a", service="a", inbound="127.0.0.1:1")
    built = SnapshotBuilder(mesh, [proxy]).build(proxy)
    assert Snapshot.from_dict(json.loads(built.data)).mesh.allow_any_outbound
    assert not Snapshot.from_dict(json.loads(
        SnapshotBuilder([], [proxy]).build(proxy).data)).mesh.allow_any_outbound
