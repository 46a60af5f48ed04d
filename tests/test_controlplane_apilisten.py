"""The control plane's HTTP API caps its open connections (aiohttp has no such limit)."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import pytest

from tests.helpers_mesh import start_control_plane
from tests.proxyharness import at_eof, read_response

pytestmark = pytest.mark.timeout(120)

REQUEST = b"GET /api/v1/proxies HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n"


async def test_connections_past_the_cap_get_503_and_are_closed(tmp_path: Path) -> None:
    control = start_control_plane(tmp_path, warmup=0.0, args=("--max-api-connections", "4"))
    host, port = control.info["api"].removeprefix("http://").split(":")
    held = []
    try:
        for _ in range(4):  # keep-alive clients that were served and stay open
            reader, writer = await asyncio.open_connection(host, int(port))
            writer.write(REQUEST)
            assert (await asyncio.wait_for(read_response(reader), 10)).status == 200
            held.append((reader, writer))
        reader, writer = await asyncio.open_connection(host, int(port))
        writer.write(REQUEST)
        refused = await asyncio.wait_for(read_response(reader), 10)
        assert refused.status == 503 and refused.header("retry-after") == "1"
        assert json.loads(refused.body)["reason"] == "too_many_connections"
        assert await at_eof(reader, 5)
        writer.close()
        for reader, writer in held:  # the served ones were not touched
            writer.write(REQUEST)
            assert (await asyncio.wait_for(read_response(reader), 10)).status == 200

        held.pop()[1].close()
        statuses = []
        for _ in range(50):  # the server sees the close within a loop turn or two
            reader, writer = await asyncio.open_connection(host, int(port))
            writer.write(REQUEST)
            statuses.append((await asyncio.wait_for(read_response(reader), 10)).status)
            writer.close()
            if statuses[-1] == 200:
                break
            await asyncio.sleep(0.1)  # polling interval of a bounded wait
        assert statuses[-1] == 200, statuses
    finally:
        for _, writer in held:
            writer.close()
        control.stop()
