"""Revoking access holds for open connections: a WebSocket admitted by one policy through a
real PERMISSIVE sidecar (static mode) ends when a reload brings policies that refuse the
request that opened it, and stays open through one that still allows it; HTTP/1.1 and HTTP/2
keep-alive connections meet the new policies at their next request, and an open HTTP/2
connection does not stop the push. (The same for a TCP service's connections in the mesh:
tests/test_tcp_services.py.)"""

from __future__ import annotations

import asyncio
import signal
import time
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import yaml

from tests.h2app import H2Client
from tests.proxyharness import ProxyProcess, free_port, get, metric_value, read_response
from tests.test_mtls_static import mesh_ca, mint, start_proxy
from tests.test_proxy_reload import wait_reloads

pytestmark = pytest.mark.timeout(60)


def allow(*paths: str) -> list[dict[str, Any]]:
    return [{"action": "ALLOW", "rules": [{"to": [{"paths": list(paths)}]}]}]


def reload_with(proxy: ProxyProcess, policies: list[dict[str, Any]]) -> None:
    config = yaml.safe_load(proxy.config.read_text())
    config["inbound"]["authorization"] = policies
    config.pop("version", None)  # (the version is the content's digest)
    proxy.config.write_text(yaml.safe_dump(config))
    assert proxy.proc is not None
    proxy.proc.send_signal(signal.SIGHUP)


async def denied(proxy: ProxyProcess) -> float:
    return metric_value(await proxy.metrics(), "ami_authorization_denied_total",
                        destination_service="reviews")


async def recorded_as_revoked(proxy: ProxyProcess) -> None:
    """Wait (10 s at most) for the tunnel's count with the reason it was ended for."""
    deadline = time.monotonic() + 10
    while (seen := metric_value(await proxy.metrics(), "ami_requests_total",
                                response_code="101", response_flags="not_authorized")) != 1:
        assert time.monotonic() < deadline, (seen, await proxy.metrics())
        await asyncio.sleep(0.05)  # poll interval of a deadline-bounded wait


async def test_a_websocket_ends_when_its_request_is_no_longer_allowed(
        tmp_path: Path, echo: int) -> None:
    port = free_port()
    proxy = start_proxy(tmp_path / "reviews", mint(mesh_ca(tmp_path / "ca"), "reviews"), {
        "node": {"service": "reviews"}, "app": f"127.0.0.1:{echo}",
        "mesh": {"mtls": "PERMISSIVE"}, "inbound": {"authorization": allow("/ws")}},
        inbound=port, extra=("--log-level", "INFO"))
    try:
        async with aiohttp.ClientSession() as session, session.ws_connect(
                f"http://127.0.0.1:{port}/ws", headers={"Host": "reviews"}) as ws:
            assert (await ws.receive_str(timeout=10)) == "hello from backend"
            reload_with(proxy, allow("/ws", "/open/*"))  # still allowed: left open
            await wait_reloads(proxy, "applied", 1)
            await ws.send_str("still here")
            assert (await ws.receive_str(timeout=10)) == "echo:still here"
            before = await denied(proxy)
            reload_with(proxy, allow("/open/*"))
            await wait_reloads(proxy, "applied", 2)
            message = await ws.receive(timeout=10)  # the close, not the timeout
            assert message.type in (aiohttp.WSMsgType.CLOSED, aiohttp.WSMsgType.CLOSE,
                                    aiohttp.WSMsgType.ERROR), message
        assert await denied(proxy) == before + 1
        # the tunnel, recorded as it ended: with the reason it was ended for
        await recorded_as_revoked(proxy)
        assert "/ws tunnel from 127.0.0.1 ended: not_authorized" in proxy.stderr()
        async with aiohttp.ClientSession() as session, session.get(  # a new one is refused
                f"http://127.0.0.1:{port}/ws", headers={"Host": "reviews"}) as resp:
            assert (resp.status, resp.headers.get("x-ami-reason")) == (403, "not_authorized")
    finally:
        proxy.stop()


async def test_open_http1_and_http2_connections_meet_a_new_deny_at_their_next_request(
        tmp_path: Path, echo: int) -> None:
    """Keep-alive connections, HTTP/1.1 and HTTP/2 (h2c), are judged per request: after a
    reload adding a DENY, the next request on each is refused and others still pass. The push
    is applied though an HTTP/2 connection is open (it once failed on one, half applied)."""
    port = free_port()
    proxy = start_proxy(tmp_path / "reviews", mint(mesh_ca(tmp_path / "ca"), "reviews"), {
        "node": {"service": "reviews"}, "app": f"127.0.0.1:{echo}",
        "mesh": {"mtls": "PERMISSIVE"}, "inbound": {}}, inbound=port)
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        async with H2Client(port) as h2:
            for path in ("/private", "/public"):
                writer.write(get("reviews", path))
                assert (await asyncio.wait_for(read_response(reader), 10)).status == 200
                assert (await h2.request("reviews", path)).status == 200
            reload_with(proxy, [{"action": "DENY", "rules": [{"to": [{"paths": ["/private"]}]}]}])
            await wait_reloads(proxy, "applied", 1)
            writer.write(get("reviews", "/private"))
            refused = await asyncio.wait_for(read_response(reader), 10)
            assert (refused.status, refused.header("x-ami-reason")) == (403, "not_authorized")
            writer.write(get("reviews", "/public"))
            assert (await asyncio.wait_for(read_response(reader), 10)).status == 200
            refused2 = await h2.request("reviews", "/private")
            assert (refused2.status, refused2.get("x-ami-reason")) == (403, "not_authorized")
            assert (await h2.request("reviews", "/public")).status == 200
    finally:
        writer.close()
        proxy.stop()


async def test_a_websocket_is_revoked_while_an_http2_connection_is_open(
        tmp_path: Path, echo: int) -> None:
    """An HTTP/2 connection open on the listener (a gRPC caller, say) does not keep the
    push from ending a WebSocket the new policies refuse."""
    port = free_port()
    proxy = start_proxy(tmp_path / "reviews", mint(mesh_ca(tmp_path / "ca"), "reviews"), {
        "node": {"service": "reviews"}, "app": f"127.0.0.1:{echo}",
        "mesh": {"mtls": "PERMISSIVE"}, "inbound": {"authorization": allow("/ws", "/open/*")}},
        inbound=port)
    try:
        async with H2Client(port) as h2, aiohttp.ClientSession() as session, \
                session.ws_connect(f"http://127.0.0.1:{port}/ws",
                                   headers={"Host": "reviews"}) as ws:
            assert (await ws.receive_str(timeout=10)) == "hello from backend"
            assert (await h2.request("reviews", "/open/a")).status == 200
            reload_with(proxy, allow("/open/*"))
            await wait_reloads(proxy, "applied", 1)
            message = await ws.receive(timeout=10)  # the close, not the timeout
            assert message.type in (aiohttp.WSMsgType.CLOSED, aiohttp.WSMsgType.CLOSE,
                                    aiohttp.WSMsgType.ERROR), message
            assert (await h2.request("reviews", "/open/b")).status == 200  # left alone
        await recorded_as_revoked(proxy)
    finally:
        proxy.stop()

