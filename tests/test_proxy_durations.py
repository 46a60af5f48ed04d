"""Request durations are measured, not counted in event-loop ticks.

uvloop's ``loop.time()`` is libuv's cached loop time: whole milliseconds, read once per loop
iteration. A request of 0.3 ms timed with it is 0 ms or 1 ms depending on where the tick
falls, so the access log's ``duration_ms`` and the ``ami_request_duration_seconds`` buckets
below 5 ms (0.5 ms, 1 ms: Istio's bounds) said little. A real proxy process, an app that
answers at once, HTTP/1.1 and gRPC (HTTP/2).
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml

from tests.grpcapp import EchoServer, channel, method, serving_in_thread
from tests.proxyharness import ProxyProcess, eventually, every_count_logged, metric_value

pytestmark = pytest.mark.timeout(120)
N = 60


_APP_CONNECTIONS: list[asyncio.StreamWriter] = []


async def _instant_app(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    _APP_CONNECTIONS.append(writer)
    try:
        while True:
            await reader.readuntil(b"\r\n\r\n")
            writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
    except (asyncio.IncompleteReadError, ConnectionError):
        writer.close()


@pytest.fixture
def grpc_app() -> Iterator[EchoServer]:
    app = EchoServer("v1")
    with serving_in_thread(app):
        yield app


def _durations(proxy: ProxyProcess, protocol: str) -> list[float]:
    return [line["duration_ms"] for line in map(json.loads, proxy.stdout().splitlines())
            if line["protocol"] == protocol]


def _assert_measured(durations: list[float], exposition: str, service: str) -> None:
    """Not ticks: no request of 0 ms, most not a whole number of ms; and the histogram holds
    the very durations the log shows (its sum, its 0.5 ms and 1 ms buckets)."""
    assert len(durations) == N
    assert 0.0 not in durations, sorted(durations)
    assert sum(d != int(d) for d in durations) > N // 2, sorted(durations)
    labels = {"destination_service": service, "response_code": "200"}
    assert metric_value(exposition, "ami_request_duration_seconds_sum", **labels) * 1000 \
        == pytest.approx(sum(durations), abs=0.001 * N)
    for le in (0.5, 1.0):
        # (a duration that rounds onto the bound may fall either side of it)
        logged = sum(d <= le for d in durations)
        on_bound = sum(d == le for d in durations)
        counted = metric_value(exposition, "ami_request_duration_seconds_bucket",
                               le=str(le / 1000), **labels)
        assert logged - on_bound <= counted <= logged, (le, counted, sorted(durations))


async def test_durations_have_sub_millisecond_precision(tmp_path: Path,
                                                        grpc_app: EchoServer) -> None:
    server = await asyncio.start_server(_instant_app, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    proxy = ProxyProcess(tmp_path, {"echo": [port]}, args=("--access-log", "on"))
    config = yaml.safe_load(proxy.config.read_text())
    config["services"]["grpc"] = {"endpoints": [
        {"address": f"127.0.0.1:{grpc_app.port}", "labels": {"version": "v1"}}]}
    proxy.config.write_text(yaml.safe_dump(config))
    proxy.start()
    try:
        reader, writer = await asyncio.open_connection("127.0.0.1", proxy.outbound)
        for _ in range(N):
            writer.write(b"GET /x HTTP/1.1\r\nHost: echo\r\n\r\n")
            await reader.readuntil(b"\r\n\r\nok")
        writer.close()
        async with channel(proxy.outbound, "grpc") as ch:
            for _ in range(N):
                await method(ch, "Unary")(b"m", timeout=10)

        def all_logged() -> bool:
            return every_count_logged(proxy.get("/metrics")[1].decode(),
                                      len(proxy.stdout().splitlines()))

        await eventually(all_logged, 10, what="every request's access-log line")
        exposition = await proxy.metrics()
        _assert_measured(_durations(proxy, "HTTP/1.1"), exposition, "echo")
        _assert_measured(_durations(proxy, "HTTP/2"), exposition, "grpc")
    finally:
        proxy.stop()
        server.close()
        for conn in _APP_CONNECTIONS:  # (ends each handler's read: no task left pending)
            conn.close()
        await server.wait_closed()
