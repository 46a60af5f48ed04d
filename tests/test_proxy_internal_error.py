"""A bug in a request's processing answers that request with 500 `internal_error`; it never
leaves the client waiting. The seam: the proxy's real protocols on in-memory transports (as in
bench.micro), with one step made to raise."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import pytest

from bench.micro import MemoryTransport
from proxy.config import Snapshot
from proxy.downstream import DownstreamProtocol
from proxy.exchange import Exchange
from proxy.routing import Router
from proxy.server import ProxyOptions, ProxyServer
from proxy.upstream import UpstreamConnection

REQUEST = b"GET /x HTTP/1.1\r\nHost: web\r\n\r\n"


class Recording(MemoryTransport):
    """Keeps what was written, to read the reply."""

    def __init__(self) -> None:
        super().__init__()
        self.data = b""

    def write(self, data: bytes) -> None:
        super().write(data)
        self.data += bytes(data)


def _snapshot(rules: list[dict[str, Any]] | None = None) -> dict[str, Any]:
    snap: dict[str, Any] = {
        "version": "t", "node": {"service": "client", "labels": {"version": "v1"}},
        "listeners": {"outbound": "127.0.0.1:0"},
        "services": {"web": {"endpoints": [{"address": "127.0.0.1:9"}]}}}
    if rules is not None:
        snap["routes"] = [{"host": "web", "rules": rules}]
    return snap


@pytest.fixture
async def server() -> AsyncIterator[ProxyServer]:
    srv = ProxyServer(ProxyOptions())
    srv.apply(Snapshot.from_dict(_snapshot([{
        "backends": [{"service": "web"}],
        "retries": {"attempts": 1, "retryOn": ["5xx"], "backoff": {"baseInterval": "1ms"}}}])))
    await srv.start_listeners()
    yield srv
    for lst in srv.listeners.values():
        if lst.server is not None:
            lst.server.close()


def _client(srv: ProxyServer) -> tuple[DownstreamProtocol, Recording]:
    client = DownstreamProtocol(srv.listeners["outbound"])
    transport = Recording()
    client.connection_made(transport)  # type: ignore[arg-type]
    return client, transport


def _pooled_upstream(srv: ProxyServer) -> tuple[UpstreamConnection, Recording]:
    (pool,) = list(srv.pools)
    upstream = UpstreamConnection(pool)
    transport = Recording()
    upstream.connection_made(transport)  # type: ignore[arg-type]
    pool.connections += 1
    pool.release(upstream)
    return upstream, transport


async def _reply(transport: Recording) -> bytes:
    for _ in range(200):  # the retry's backoff timer has to run: a bounded number of turns
        if b"\r\n\r\n" in transport.data:
            return transport.data
        await asyncio.sleep(0.005)
    raise AssertionError(f"no reply: {transport.data!r}")


async def test_a_failing_route_step_answers_500(server: ProxyServer,
                                                monkeypatch: pytest.MonkeyPatch,
                                                caplog: pytest.LogCaptureFixture) -> None:
    """A step that raises while the request is routed: before, the parser's handler took the
    error for a pipelined one and waited behind the broken request itself, forever."""
    def broken(router: Router, ex: Exchange) -> Any:
        raise RuntimeError("bug in routing")

    monkeypatch.setattr(Router, "route", broken)
    client, transport = _client(server)
    client.data_received(REQUEST)
    reply = await _reply(transport)
    assert reply.startswith(b"HTTP/1.1 500 ") and b"x-ami-reason: internal_error" in reply
    assert "bug in routing" in caplog.text


async def test_a_failing_timer_step_answers_500(server: ProxyServer,
                                                monkeypatch: pytest.MonkeyPatch,
                                                caplog: pytest.LogCaptureFixture) -> None:
    """A step run later by the event loop (here the retry after a 503): asyncio would only
    log the exception and the client would wait forever."""
    upstream, _ = _pooled_upstream(server)
    client, transport = _client(server)
    client.data_received(REQUEST)
    assert client.current is not None and client.current.conn is upstream

    def broken(ex: Exchange) -> None:
        raise RuntimeError("bug in dispatch")

    monkeypatch.setattr(Exchange, "dispatch", broken)  # the retry dispatches again
    upstream.data_received(b"HTTP/1.1 503 Service Unavailable\r\ncontent-length: 0\r\n\r\n")
    reply = await _reply(transport)
    assert reply.startswith(b"HTTP/1.1 500 ") and b"x-ami-reason: internal_error" in reply
    assert "bug in dispatch" in caplog.text
    assert client.current is None  # the request is over; the connection serves the next one
