"""Upstream keep-alive through the proxy: connection reuse, the keep-alive race, idle timeout."""

from __future__ import annotations

import asyncio
import os
import signal
import threading
import time
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.proxyharness import (
    Backends,
    ProxyProcess,
    RawBackend,
    close_now,
    eventually,
    get,
    read_request,
    read_response,
    roundtrip,
)


def _ok(msg_body: bytes) -> bytes:
    return b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n%s" % (len(msg_body), msg_body)


async def _keep_alive(backend: RawBackend, reader: asyncio.StreamReader,
                      writer: asyncio.StreamWriter) -> None:
    """Answers every request on the connection, numbering the connection in the body."""
    conn_no = backend.accepted
    while (req := await read_request(reader)) is not None:
        backend.requests.append(req)
        writer.write(_ok(b"conn-%d %s" % (conn_no, req.body)))
        await writer.drain()


async def _close_after_response(backend: RawBackend, reader: asyncio.StreamReader,
                                writer: asyncio.StreamWriter) -> None:
    """Answers one request without `Connection: close`, then closes the socket anyway."""
    req = await read_request(reader)
    if req is not None:
        backend.requests.append(req)
        writer.write(_ok(b"once " + req.body))
        await close_now(backend, writer)


async def _drop_second_request(backend: RawBackend, reader: asyncio.StreamReader,
                               writer: asyncio.StreamWriter) -> None:
    """Answers the first request, then closes as soon as a second one arrives (the race)."""
    req = await read_request(reader)
    if req is None:
        return
    backend.requests.append(req)
    writer.write(_ok(b"first " + req.body))
    await writer.drain()
    if await read_request(reader) is not None:
        writer.transport.abort()  # as if the idle timer fired just as the request came in


def _keep_alive_noting_close(
        closed_at: list[float]) -> Callable[[RawBackend, asyncio.StreamReader,
                                             asyncio.StreamWriter], Awaitable[None]]:
    """`_keep_alive`, plus the monotonic time at which the proxy closed the connection."""

    async def handler(backend: RawBackend, reader: asyncio.StreamReader,
                      writer: asyncio.StreamWriter) -> None:
        try:
            await _keep_alive(backend, reader, writer)
        finally:
            closed_at.append(time.monotonic())

    return handler


@pytest.fixture(scope="module")
def env(tmp_path_factory: pytest.TempPathFactory, backends: Backends) -> Iterator[dict[str, Any]]:
    idle_closed: list[float] = []
    steady_closed: list[float] = []
    raws = {"ka": backends.raw(_keep_alive), "closer": backends.raw(_close_after_response),
            "racer": backends.raw(_drop_second_request),
            "idle": backends.raw(_keep_alive_noting_close(idle_closed)),
            "steady": backends.raw(_keep_alive_noting_close(steady_closed))}
    proxy = ProxyProcess(tmp_path_factory.mktemp("keepalive"),
                         {name: [b.port] for name, b in raws.items()})
    config = yaml.safe_load(proxy.config.read_text())
    config["services"]["idle"]["policy"] = {"connectionPool": {"idleTimeout": "1s"}}
    proxy.config.write_text(yaml.safe_dump(config))  # `steady` keeps the 10 s default
    proxy.start()
    yield {"proxy": proxy, "idle_closed": idle_closed, "steady_closed": steady_closed, **raws}
    proxy.stop()


async def test_sequential_requests_reuse_one_upstream_connection(env: dict[str, Any]) -> None:
    """Ten requests from ten client connections ride one pooled upstream connection."""
    proxy, backend = env["proxy"], env["ka"]
    for i in range(10):
        resp = await roundtrip(proxy.outbound, get("ka", f"/{i}"))
        assert resp.body == b"conn-1 "
    assert backend.accepted == 1
    pools = {p["address"]: p for p in (await proxy.stats())["upstream_pools"]}
    assert pools[f"127.0.0.1:{backend.port}"]["connections"] == 1


@pytest.mark.parametrize("method", ["GET", "POST"])
async def test_upstream_closing_after_each_response(env: dict[str, Any], method: str) -> None:
    """A pooled connection the backend closed (no `Connection: close`) is not reused: no error."""
    backend = env["closer"]
    before = backend.accepted
    reader, writer = await asyncio.open_connection("127.0.0.1", env["proxy"].outbound)
    for i in range(5):
        body = b"b%d" % i if method == "POST" else b""
        writer.write(get("closer", "/", body=body, method=method))
        resp = await asyncio.wait_for(read_response(reader), 10)
        assert (resp.status, resp.body) == (200, b"once " + body)
        await eventually(lambda n=before + i + 1: backend.closed >= n)  # type: ignore[misc]
    writer.close()
    assert backend.accepted - before == 5


async def test_keep_alive_race_get_is_retried_on_fresh_connection(env: dict[str, Any]) -> None:
    """A pooled connection that dies after a bodiless GET was sent is retried once, fresh."""
    proxy, backend = env["proxy"], env["racer"]
    before = backend.accepted
    first = await roundtrip(proxy.outbound, get("racer", "/one"))
    second = await roundtrip(proxy.outbound, get("racer", "/two"))
    assert (first.body, second.body) == (b"first ", b"first ")
    assert backend.accepted - before == 2
    assert [r.target for r in backend.requests[-2:]] == ["/one", "/two"]


async def test_keep_alive_race_post_is_not_resent(env: dict[str, Any]) -> None:
    """A POST whose bytes already reached a dying connection is not replayed: 502 upstream_reset."""
    proxy = env["proxy"]
    warm = await roundtrip(proxy.outbound, get("racer", "/warm"))  # leaves a pooled connection
    resp = await roundtrip(proxy.outbound, get("racer", "/pay", body=b"p", method="POST"))
    assert warm.status == 200
    assert (resp.status, resp.header("x-ami-reason")) == (502, "upstream_reset")
    assert "/pay" not in [r.target for r in env["racer"].requests]


async def test_idle_upstream_connection_is_closed_after_idle_timeout(env: dict[str, Any]) -> None:
    """With connectionPool.idleTimeout 1s the proxy closes an idle pooled connection at a
    once-a-second sweep after 1 s (the backend sees EOF); the 10 s default pool keeps its own.
    The default pool's connection goes idle first: had the 1 s pool's closed by the default
    timeout, that one would have closed no later (an order, not an upper bound on time)."""
    proxy, idle, steady = env["proxy"], env["idle"], env["steady"]
    idle_closed, steady_closed = env["idle_closed"], env["steady_closed"]
    assert (await roundtrip(proxy.outbound, get("steady", "/a"))).body == b"conn-1 "
    assert (await roundtrip(proxy.outbound, get("idle", "/a"))).body == b"conn-1 "
    idle_since = time.monotonic()  # after the proxy started the idle clock
    pools = {p["address"]: p for p in (await proxy.stats())["upstream_pools"]}
    assert pools[f"127.0.0.1:{idle.port}"]["idle"] == 1
    await eventually(lambda: bool(idle_closed), timeout=30.0)
    assert steady_closed == []  # idle longer, still open: the 1 s timeout closed the other
    assert idle_closed[0] - idle_since > 0.9  # not before its time (a lower bound only)
    pools = {p["address"]: p for p in (await proxy.stats())["upstream_pools"]}
    assert (pools[f"127.0.0.1:{idle.port}"]["connections"],
            pools[f"127.0.0.1:{idle.port}"]["idle"]) == (0, 0)
    assert pools[f"127.0.0.1:{steady.port}"]["idle"] == 1
    # The next request opens a fresh connection rather than trying the closed one.
    assert (await roundtrip(proxy.outbound, get("idle", "/b"))).body == b"conn-2 "
    assert (idle.accepted, steady.accepted) == (2, 1)


async def test_a_local_reply_to_a_bodyless_request_keeps_the_connection(
        env: dict[str, Any]) -> None:
    """A 404 `no_route` (like a redirect or a CORS preflight) answered from the head alone
    leaves the client's connection open for its next request; browsers and pooled clients
    reconnected after every such answer before. A reply before a declared body is read
    still closes: the unread body would be taken for the next request."""
    reader, writer = await asyncio.open_connection("127.0.0.1", env["proxy"].outbound)
    try:
        for target in ("nowhere", "nowhere-either", "ka"):
            writer.write(get(target, "/again"))
            resp = await asyncio.wait_for(read_response(reader), 10)
            assert resp.header("connection") != "close", resp
        assert resp.status == 200  # the last one, on the same connection
        writer.write(get("nowhere", "/", body=b"0123456789", method="POST"))
        resp = await asyncio.wait_for(read_response(reader), 10)
        assert (resp.status, resp.header("connection")) == (404, "close")
    finally:
        writer.close()


async def test_a_post_meeting_a_pooled_connection_the_server_already_closed_goes_fresh(
        tmp_path: Path, backends: Backends) -> None:
    """The server's FIN on an idle pooled connection and the app's next request (a POST) are
    read in the same wake-up of the proxy (stopped meanwhile, so both wait in the kernel): the
    FIN comes first. Nothing of the POST may be written into that closing connection; it goes
    on a fresh one and is answered. (Before, the pool still offered the connection until its
    connection_lost, the POST went nowhere, and the app got 502 upstream_reset for a request
    no server had seen.)"""
    cue = threading.Event()

    async def close_first_on_cue(raw: RawBackend, reader: asyncio.StreamReader,
                                 writer: asyncio.StreamWriter) -> None:
        first = raw.accepted == 1
        while (req := await read_request(reader)) is not None:
            raw.requests.append(req)
            writer.write(_ok(b"conn-%d %s" % (1 if first else 2, req.body)))
            await writer.drain()
            if first:
                await asyncio.to_thread(cue.wait, 10)
                await close_now(raw, writer)  # a FIN on an idle connection
                return

    upstream = backends.raw(close_first_on_cue)
    proxy = ProxyProcess(tmp_path, {"fin": [upstream.port]}).start()
    assert proxy.proc is not None
    reader, writer = await asyncio.open_connection("127.0.0.1", proxy.outbound)
    try:
        writer.write(get("fin", "/warm"))
        assert (await asyncio.wait_for(read_response(reader), 10)).body == b"conn-1 "
        os.kill(proxy.proc.pid, signal.SIGSTOP)
        try:
            cue.set()
            await eventually(lambda: upstream.closed == 1)  # its FIN sent
            writer.write(get("fin", "/pay", body=b"order=1", method="POST"))
            await writer.drain()
            await asyncio.sleep(0.2)  # the POST in the proxy's socket too, after the FIN
        finally:
            os.kill(proxy.proc.pid, signal.SIGCONT)
        resp = await asyncio.wait_for(read_response(reader), 10)
        assert (resp.status, resp.body) == (200, b"conn-2 order=1"), resp
        assert [r.target for r in upstream.requests] == ["/warm", "/pay"]
    finally:
        writer.close()
        proxy.stop()
