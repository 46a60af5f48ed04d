"""Revoking access holds for open connections: a WebSocket admitted by one policy through a
real PERMISSIVE sidecar (static mode) ends when a reload brings policies that refuse the
request that opened it, and stays open through one that still allows it. (The same for a TCP
service's connections in the mesh: tests/test_tcp_services.py.)"""

from __future__ import annotations

import asyncio
import signal
import time
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import yaml

from tests.proxyharness import ProxyProcess, free_port, metric_value
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
