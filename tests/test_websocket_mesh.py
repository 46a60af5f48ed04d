"""WebSockets across the mesh hop, with real sidecar processes: a caller's sidecar
(`productpage`, outbound, a route with a timeout) -> mTLS -> `reviews`' sidecar (STRICT
inbound, a DENY on `/ws-denied`) -> an aiohttp app whose `/ws` greets and echoes. Access logs
on.

An upgraded connection is one request to the metrics and the access log, recorded when it
ends (as Envoy records an upgraded stream): its duration is the session's and its bytes are
what the tunnel carried each way. Before, it was recorded at the 101 with 0 bytes and the
handshake's duration."""

from __future__ import annotations

import asyncio
import json
import signal
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from meshctl.ca import CertificateAuthority
from tests.ports import free_port
from tests.proxyharness import (
    Backends,
    ProxyProcess,
    echo_app,
    eventually,
    get,
    metric_value,
    read_response,
    roundtrip,
)
from tests.test_mtls_static import mesh_ca, mint, sid, start_proxy

DEADLINE = 10.0
UPGRADE = (b"GET %s HTTP/1.1\r\nHost: reviews\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n"
           b"Sec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n")


@dataclass
class Hop:
    tmp: Path
    ca: CertificateAuthority
    inbound: int  # reviews' sidecar's inbound port
    server: ProxyProcess
    caller: ProxyProcess


def start_caller(tmp: Path, ca: CertificateAuthority, inbound: int,
                 *extra: str) -> ProxyProcess:
    """productpage's sidecar: reviews over mTLS, a route with a 2 s timeout (which does not
    apply once the upgrade is answered), access log on."""
    return start_proxy(tmp, mint(ca, "productpage"), {
        "node": {"service": "productpage", "labels": {"version": "v1"}},
        "mesh": {"mtls": "STRICT", "accessLog": True},
        "services": {"reviews": {"endpoints": [{
            "address": f"127.0.0.1:{inbound}", "labels": {"version": "v1"},
            "identity": sid("reviews")}]}},
        "routes": [{"host": "reviews", "rules": [{"backends": [{"weight": 100}],
                                                  "timeout": "2s"}]}],
    }, extra=extra)


@pytest.fixture(scope="module")
def hop(tmp_path_factory: pytest.TempPathFactory, backends: Backends) -> Iterator[Hop]:
    tmp = tmp_path_factory.mktemp("ws-hop")
    ca = mesh_ca(tmp / "ca", backdate=60)
    app = backends.aiohttp(echo_app())
    inbound = free_port()
    procs: list[ProxyProcess] = []
    try:
        procs.append(start_proxy(tmp / "reviews", mint(ca, "reviews"), {
            "node": {"service": "reviews", "labels": {"version": "v1"}},
            "app": f"127.0.0.1:{app}", "mesh": {"mtls": "STRICT", "accessLog": True},
            "inbound": {"authorization": [{"action": "DENY", "rules": [
                {"to": [{"paths": ["/ws-denied"]}]}]}]},
        }, inbound=inbound))
        procs.append(start_caller(tmp / "productpage", ca, inbound))
        yield Hop(tmp, ca, inbound, procs[0], procs[1])
    finally:
        for proc in reversed(procs):
            proc.stop()


def logged(proxy: ProxyProcess, path: str) -> list[dict[str, Any]]:
    lines = [json.loads(line) for line in proxy.stdout().splitlines() if line.startswith("{")]
    return [line for line in lines if line["path"] == path]


async def test_a_websocket_is_recorded_when_it_ends_with_its_bytes(hop: Hop) -> None:
    """While the socket is open nothing is logged for it (a request made after it is);
    once closed, both sidecars log one line: 101, the bytes each way (the frames), and a
    duration that covers the session, and count it in `ami_requests_total`."""
    sent = "m" * 3000
    async with aiohttp.ClientSession() as session, session.ws_connect(
            f"http://127.0.0.1:{hop.caller.outbound}/ws",
            headers={"Host": "reviews"}) as ws:
        upgraded = time.monotonic()
        assert await ws.receive_str(timeout=DEADLINE) == "hello from backend"
        await ws.send_str(sent)
        assert await ws.receive_str(timeout=DEADLINE) == "echo:" + sent
        # The access log is written in record order: once a later request is in it, a
        # line recorded at the 101 would be too.
        assert (await roundtrip(hop.caller.outbound, get("reviews", "/after"))).status == 200
        await eventually(lambda: logged(hop.caller, "/after") != [], DEADLINE,
                         what="the later request logged")
        assert logged(hop.caller, "/ws") == []
        closing = time.monotonic()
    for proxy in (hop.caller, hop.server):
        await eventually(lambda p=proxy: logged(p, "/ws") != [], DEADLINE,  # type: ignore[misc]
                         what="the closed WebSocket logged")
        [line] = logged(proxy, "/ws")
        assert (line["status"], line["reason"]) == (101, "-"), line
        # client -> app: the 3000-byte text frame (masked, with its header) and the close
        assert line["bytes_received"] > len(sent), line
        # app -> client: the greeting, the 3005-byte echo, the close
        assert line["bytes_sent"] > len(sent) + len("echo:hello from backend"), line
        assert line["duration_ms"] > (closing - upgraded) * 1000, line
        text = await proxy.metrics()
        assert metric_value(text, "ami_requests_total", response_code="101") == 1
        assert metric_value(text, "ami_request_bytes_sum", response_code="101") \
            == line["bytes_received"]


async def test_an_upgrade_denied_or_refused_is_passed_back_and_closed(hop: Hop) -> None:
    """The destination's authorization applies to the upgrade request (403 from its
    sidecar), and an app answering the upgrade with a plain 200: both reach the client as
    sent, with `connection: close`, and are recorded at once."""
    for path, status, reason in ((b"/ws-denied", 403, "not_authorized"),
                                 (b"/not-ws", 200, None)):
        reader, writer = await asyncio.open_connection("127.0.0.1", hop.caller.outbound)
        try:
            writer.write(UPGRADE % path)
            resp = await asyncio.wait_for(read_response(reader), DEADLINE)
            assert (resp.status, resp.header("x-ami-reason")) == (status, reason)
            assert resp.header("connection") == "close"
            assert await asyncio.wait_for(reader.read(), DEADLINE) == b""
        finally:
            writer.close()
        await eventually(lambda p=path: logged(hop.caller, p.decode()) != [], DEADLINE,
                         what="the refused upgrade logged")


async def test_a_websocket_open_at_sigterm_lasts_until_the_drain_deadline(hop: Hop) -> None:
    """SIGTERM: the open WebSocket keeps working through the drain, is closed at the
    `--drain-timeout` deadline, and its line says so (`drain_timeout`) before the exit."""
    caller = start_caller(hop.tmp / "draining", hop.ca, hop.inbound, "--drain-timeout", "2")
    try:
        async with aiohttp.ClientSession() as session, session.ws_connect(
                f"http://127.0.0.1:{caller.outbound}/ws", headers={"Host": "reviews"}) as ws:
            assert await ws.receive_str(timeout=DEADLINE) == "hello from backend"
            assert caller.proc is not None
            caller.proc.send_signal(signal.SIGTERM)
            await ws.send_str("during the drain")
            assert await ws.receive_str(timeout=DEADLINE) == "echo:during the drain"
            closed = await ws.receive(timeout=DEADLINE)
            assert closed.type in (aiohttp.WSMsgType.CLOSE, aiohttp.WSMsgType.CLOSED,
                                   aiohttp.WSMsgType.ERROR), closed
        assert await asyncio.to_thread(caller.proc.wait, DEADLINE) == 0
        [line] = logged(caller, "/ws")
        assert (line["status"], line["reason"]) == (101, "drain_timeout"), line
        assert line["bytes_received"] > len("during the drain"), line
    finally:
        caller.stop()
