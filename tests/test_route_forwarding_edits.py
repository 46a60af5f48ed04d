"""A Route rule's request header edits reach the headers the proxy adds itself: `set` replaces
x-forwarded-for (or x-forwarded-proto, or the x-request-id it made) and `remove` removes it, as
Envoy's route edits do; before, `set` sent a second header and `remove` left it. The client
the gateway trusts (`--trusted-proxies`) is still read from what arrived."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.h2app import H2Server, h2_request
from tests.proxyharness import ProxyProcess, eventually, get, read_response

pytestmark = pytest.mark.timeout(120)


def edits(host: str) -> dict[str, Any]:
    return {"host": host, "rules": [
        {"matches": [{"path": {"prefix": "/set"}}], "backends": [{}],
         "headers": {"request": {"set": {"X-Forwarded-For": "192.0.2.1",
                                         "x-forwarded-proto": "https",
                                         "x-request-id": "pinned"}}}},
        {"matches": [{"path": {"prefix": "/remove"}}], "backends": [{}],
         "headers": {"request": {"remove": ["x-forwarded-for", "X-Request-Id"]}}},
        {"backends": [{}]}]}


@pytest.fixture
def h1_gateway(tmp_path: Path, echo: int) -> Iterator[ProxyProcess]:
    proc = ProxyProcess(tmp_path, {"echo": [echo]}, routes=[edits("echo")], access_log=True,
                        args=("--mode", "gateway", "--trusted-proxies", "1"))
    proc.gateway_port = proc.listen_as_gateway([{"destination": "echo"}])  # type: ignore
    proc.start()
    yield proc
    proc.stop()


async def h1_seen(port: int, path: str) -> dict[str, list[str]]:
    """The forwarding headers the app got for ``path``, by lower-case name, each occurrence."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        writer.write(get("echo", path, extra="x-forwarded-for: 198.51.100.7\r\n"))
        resp = await asyncio.wait_for(read_response(reader), 10)
    finally:
        writer.close()
    assert resp.status == 200, resp
    seen: dict[str, list[str]] = {}
    for name, value in json.loads(resp.body)["headers"]:
        if name.lower() in ("x-forwarded-for", "x-forwarded-proto", "x-request-id"):
            seen.setdefault(name.lower(), []).append(value)
    return seen


async def test_set_and_remove_over_http1(h1_gateway: ProxyProcess) -> None:
    port = h1_gateway.gateway_port  # type: ignore[attr-defined]
    untouched = await h1_seen(port, "/other")
    assert untouched["x-forwarded-for"] == ["198.51.100.7, 127.0.0.1"]
    assert len(untouched["x-request-id"]) == 1
    assert await h1_seen(port, "/set") == {"x-forwarded-for": ["192.0.2.1"],
                                           "x-forwarded-proto": ["https"],
                                           "x-request-id": ["pinned"]}
    assert await h1_seen(port, "/remove") == {"x-forwarded-proto": ["http"]}
    # the client trusted behind the balancer is the one that arrived, not the edited header
    def logged() -> list[dict[str, Any]]:
        return [json.loads(x) for x in h1_gateway.stdout().splitlines()
                if x.startswith('{"') and '"/set"' in x]

    await eventually(logged)
    assert logged()[0]["client_address"] == "198.51.100.7"


async def test_set_and_remove_over_http2(tmp_path: Path, echo: int) -> None:
    """An HTTP/2 request to an HTTP/2 app (h2c), and to an HTTP/1.1 one, edited the same
    way."""
    app = await H2Server("h2").start()
    proc = ProxyProcess(tmp_path, {"h2": [app.port], "echo": [echo]},
                        routes=[edits("h2"), edits("echo")])
    proc.start()
    try:
        resp = await h2_request(proc.outbound, "echo", "/set",
                                headers=[("x-forwarded-for", "198.51.100.7")])
        assert resp.status == 200, resp
        forwarding = [(k.lower(), v) for k, v in resp.json()["headers"]
                      if k.lower().startswith(("x-forwarded-", "x-request-id"))]
        assert sorted(forwarding) == [("x-forwarded-for", "192.0.2.1"),
                                      ("x-forwarded-proto", "https"),
                                      ("x-request-id", "pinned")]
        for path, expected in (
                ("/set", {"x-forwarded-for": ["192.0.2.1"], "x-forwarded-proto": ["https"],
                          "x-request-id": ["pinned"]}),
                ("/remove", {"x-forwarded-proto": ["http"]})):
            resp = await h2_request(proc.outbound, "h2", path,
                                    headers=[("x-forwarded-for", "198.51.100.7")])
            assert resp.status == 200, resp
            seen = app.requests[-1]
            got = {name: seen.all(name) for name in
                   ("x-forwarded-for", "x-forwarded-proto", "x-request-id") if seen.all(name)}
            assert got == expected, (path, seen.headers)
    finally:
        proc.stop()
        await app.stop()
