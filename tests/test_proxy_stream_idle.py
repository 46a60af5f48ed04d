"""Stalled requests: the stream idle timeout, and the route timeout starting at the end of the
request. A raw backend stalls on purpose; clients are raw sockets."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.proxyharness import (
    Backends,
    ProxyProcess,
    RawBackend,
    at_eof,
    dry_run,
    get,
    metric_value,
    read_head,
    read_response,
    roundtrip,
)
from tests.traffic_backends import TrafficProxy

IDLE = 1.0  # --stream-idle-timeout of the proxy under test; the sweep runs once a second


async def stalling_backend(backend: RawBackend, reader: asyncio.StreamReader,
                           writer: asyncio.StreamWriter) -> None:
    """Answers by path: never (`/stall-head`), part of a body then nothing (`/stall-body`),
    one byte every 0.3 s (`/trickle`), or after `/late` seconds' wait."""
    while (head := await read_head(reader)) is not None:
        path = head.target
        if path == "/stall-head":
            await reader.read()  # until the proxy gives up and closes
            return
        if path == "/stall-body":
            writer.write(b"HTTP/1.1 200 OK\r\ncontent-length: 100\r\n\r\n" + b"x" * 10)
            await reader.read()
            return
        if path == "/trickle":
            writer.write(b"HTTP/1.1 200 OK\r\ncontent-length: 8\r\n\r\n")
            for _ in range(8):
                await asyncio.sleep(0.3)  # the stall being simulated, not a wait
                writer.write(b"t")
                await writer.drain()
            continue
        if path.startswith("/late"):
            await asyncio.sleep(float(path.rpartition("=")[2]))  # the backend's slowness
            writer.write(b"HTTP/1.1 200 OK\r\ncontent-length: 4\r\n\r\nlate")
            continue
        writer.write(b"HTTP/1.1 404 Not Found\r\ncontent-length: 0\r\n\r\n")


@pytest.fixture(scope="module")
def raw(backends: Backends) -> RawBackend:
    return backends.raw(stalling_backend)


@pytest.fixture(scope="module")
def proxy(tmp_path_factory: pytest.TempPathFactory, echo: int,
          raw: RawBackend) -> Iterator[ProxyProcess]:
    routes = [
        {"host": "timed", "rules": [{"backends": [{"service": "echo"}], "timeout": "1s"}]},
        {"host": "longwait", "rules": [{"backends": [{"service": "raw"}], "timeout": "3s"}]},
    ]
    p = ProxyProcess(tmp_path_factory.mktemp("streamidle"),
                     {"raw": [raw.port], "echo": [echo], "timed": [echo], "longwait": [raw.port]},
                     args=("--stream-idle-timeout", str(IDLE)), routes=routes).start()
    yield p
    p.stop()


async def _flags(proxy: ProxyProcess, reason: str, code: str) -> float:
    return metric_value(await proxy.metrics(), "ami_requests_total",
                        response_flags=reason, response_code=code)


async def test_upstream_that_never_answers_gets_504(proxy: ProxyProcess) -> None:
    """No route timeout: a hung upstream no longer holds the request (and both connections)
    forever; the caller gets 504 `stream_idle_timeout`."""
    loop = asyncio.get_running_loop()
    reader, writer = await asyncio.open_connection("127.0.0.1", proxy.outbound)
    sent = loop.time()
    writer.write(get("raw", "/stall-head"))
    resp = await asyncio.wait_for(read_response(reader), 10)
    writer.close()
    assert (resp.status, resp.header("x-ami-reason")) == (504, "stream_idle_timeout")
    assert loop.time() - sent >= IDLE  # not before the idle timeout (a lower bound only)
    assert await _flags(proxy, "stream_idle_timeout", "504") >= 1


async def test_client_that_stops_sending_its_body_gets_408(proxy: ProxyProcess) -> None:
    """A body that stops arriving halfway is the client's stall: 408, then close."""
    reader, writer = await asyncio.open_connection("127.0.0.1", proxy.outbound)
    writer.write(b"POST /upload HTTP/1.1\r\nHost: echo\r\nContent-Length: 100\r\n\r\n" + b"a" * 10)
    resp = await asyncio.wait_for(read_response(reader), 10)
    closed = await at_eof(reader, 5)
    writer.close()
    assert (resp.status, resp.header("x-ami-reason")) == (408, "stream_idle_timeout")
    assert resp.header("connection") == "close" and closed


async def test_stalled_response_body_is_cut_short(proxy: ProxyProcess) -> None:
    """Once the head is relayed, a body that stops flowing ends in a truncated response (the
    client can tell: fewer bytes than Content-Length, then the close)."""
    reader, writer = await asyncio.open_connection("127.0.0.1", proxy.outbound)
    writer.write(get("raw", "/stall-body"))
    head = await asyncio.wait_for(read_head(reader), 10)
    assert head is not None and head.status == 200
    body = await asyncio.wait_for(reader.read(), IDLE + 8)  # until the proxy closes
    writer.close()
    assert body == b"x" * 10
    assert await _flags(proxy, "stream_idle_timeout", "200") >= 1


async def test_a_trickling_response_is_not_idle(proxy: ProxyProcess) -> None:
    """Bytes every 0.3 s for 2.4 s keep the request alive past the 1 s idle timeout."""
    reader, writer = await asyncio.open_connection("127.0.0.1", proxy.outbound)
    writer.write(get("raw", "/trickle"))
    resp = await asyncio.wait_for(read_response(reader), 10)
    writer.close()
    assert (resp.status, resp.body) == (200, b"t" * 8)


async def test_route_timeout_decides_the_wait_for_the_head(proxy: ProxyProcess) -> None:
    """A route timeout longer than the idle timeout is honoured: a 2 s answer under a 3 s
    route timeout succeeds, and a hung upstream gets the route's own 504 `timeout`."""
    reader, writer = await asyncio.open_connection("127.0.0.1", proxy.outbound)
    writer.write(get("longwait", "/late?s=2"))
    late = await asyncio.wait_for(read_response(reader), 10)
    writer.write(get("longwait", "/stall-head"))
    hung = await asyncio.wait_for(read_response(reader), 10)
    writer.close()
    assert (late.status, late.body) == (200, b"late")
    assert (hung.status, hung.header("x-ami-reason")) == (504, "timeout")


async def test_route_timeout_starts_when_the_request_is_complete(proxy: ProxyProcess) -> None:
    """Envoy's rule: a slow upload is not the upstream's delay. A body sent over ~1.6 s under
    a 1 s route timeout is answered (the timeout used to run from the request head: 504)."""
    reader, writer = await asyncio.open_connection("127.0.0.1", proxy.outbound)
    writer.write(b"POST /up HTTP/1.1\r\nHost: timed\r\nContent-Length: 8\r\n\r\n")
    for part in (b"ab", b"cd", b"ef", b"gh"):
        await asyncio.sleep(0.4)  # the client's slowness under test
        writer.write(part)
    resp = await asyncio.wait_for(read_response(reader), 10)
    writer.close()
    assert resp.status == 200, resp
    assert json.loads(resp.body)["body"] == "abcdefgh"


async def test_a_mirror_without_timeout_is_bounded_by_it(tmp_path: Path, echo: int,
                                                         raw: RawBackend) -> None:
    """A copy to a shadow that never answers, on a route without a timeout, is dropped after
    the stream idle timeout (it used to hold its connection for as long as the shadow did)."""
    services: dict[str, Any] = {"web": {"endpoints": [
        {"address": f"127.0.0.1:{echo}", "labels": {"version": "v1"}},
        {"address": f"127.0.0.1:{raw.port}", "labels": {"version": "shadow"}}]}}
    routes = [{"host": "web", "rules": [{"backends": [{"subset": "v1"}],
                                         "mirror": {"subset": "shadow"}}]}]
    proxy = TrafficProxy(tmp_path, services, routes)
    proxy.args = ("--stream-idle-timeout", str(IDLE))
    proxy.start()
    try:
        resp = await roundtrip(proxy.outbound, get("web", "/stall-head"))
        assert resp.status == 200

        async def shadow_connections() -> int:
            pools = (await proxy.stats())["upstream_pools"]
            return sum(p["connections"] for p in pools
                       if p["address"] == f"127.0.0.1:{raw.port}")

        end = time.monotonic() + 10
        while await shadow_connections() == 0:  # the copy is on its way
            assert time.monotonic() < end, "the mirror never connected"
        while await shadow_connections():
            assert time.monotonic() < end, "the copy's connection stayed open"
    finally:
        proxy.stop()


@pytest.mark.parametrize("value", ["-1", "nan"])
def test_stream_idle_timeout_flag_is_checked(tmp_path: Path, value: str) -> None:
    done = dry_run(tmp_path, "--stream-idle-timeout", value)
    assert done.returncode == 2
    assert "error: --stream-idle-timeout must be 0 (off) or more" in done.stderr
