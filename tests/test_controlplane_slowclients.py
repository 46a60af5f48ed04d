"""The control plane's API drops connections that never deliver a request head (slowloris)."""

from __future__ import annotations

import asyncio
import socket
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from meshctl.controlplane.slowclients import HEADER_TIMEOUT, SlowClientReaper
from tests.helpers_mesh import MeshProcess, http_get, start_control_plane

pytestmark = pytest.mark.timeout(120)


class _Handler:
    def __init__(self, requests: int) -> None:
        self._request_count = requests
        self.closed = False

    def force_close(self) -> None:
        self.closed = True


class _Server:
    def __init__(self, *handlers: _Handler) -> None:
        self.connections = list(handlers)


def test_only_connections_without_a_request_head_are_closed_after_the_timeout() -> None:
    """Fake clock: a silent connection lives until the timeout, one that sent a head (or an
    SSE stream) is never touched."""
    now = [0.0]
    silent, served = _Handler(0), _Handler(3)
    reaper = SlowClientReaper(_Server(silent, served), timeout=10.0,  # type: ignore[arg-type]
                              clock=lambda: now[0])
    reaper.sweep()
    now[0] = 9.9
    reaper.sweep()
    assert not silent.closed
    now[0] = 10.0
    reaper.sweep()
    assert silent.closed and not served.closed and reaper.closed == 1


@pytest.fixture(scope="module")
def control(tmp_path_factory: pytest.TempPathFactory) -> Iterator[MeshProcess]:
    proc = start_control_plane(Path(tmp_path_factory.mktemp("slowclients")), warmup=0.0)
    yield proc
    proc.stop()


async def test_serve_closes_silent_and_half_sent_connections(control: MeshProcess) -> None:
    """Against `meshctl serve`: a connection that sends nothing and one stuck in the middle
    of its head are closed after the header timeout; the API keeps answering meanwhile."""
    host, port = control.info["api"].removeprefix("http://").split(":")
    loop = asyncio.get_running_loop()
    silent = await asyncio.open_connection(host, int(port))
    half = await asyncio.open_connection(host, int(port))
    half[1].write(b"GET /api/v1/proxies HTTP/1.1\r\nHost: x\r\nX-Slow: ")
    opened = loop.time()
    assert http_get(control.info["api"] + "/api/v1/proxies")[0] == 200

    async def closed_after(reader: asyncio.StreamReader) -> float:
        data: Any = await asyncio.wait_for(reader.read(1), HEADER_TIMEOUT + 20)
        assert data == b""  # EOF, no answer
        return loop.time() - opened

    waits = await asyncio.gather(closed_after(silent[0]), closed_after(half[0]))
    for _, writer in (silent, half):
        writer.close()
    assert all(w >= HEADER_TIMEOUT - 0.5 for w in waits), waits  # not before (lower bound)
    with socket.create_connection((host, int(port)), timeout=5):
        pass  # still accepting
