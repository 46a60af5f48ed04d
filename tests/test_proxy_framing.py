"""Message framing through the proxy: chunked, 100-continue, HEAD/204/304, close, HTTP/1.0, ws."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Iterator
from typing import Any

import aiohttp
import pytest

from tests.proxyharness import (
    Backends,
    ProxyProcess,
    RawBackend,
    at_eof,
    free_port,
    get,
    read_request,
    read_response,
    roundtrip,
    roundtrip_close,
)


async def _close_delimited(_: RawBackend, reader: asyncio.StreamReader,
                           writer: asyncio.StreamWriter) -> None:
    """An HTTP/1.0-style response: no length, the body ends when the connection closes."""
    await read_request(reader)
    writer.write(b"HTTP/1.1 200 OK\r\nConnection: close\r\n\r\n")
    for i in range(3):
        writer.write(b"until-close-%d;" % i)
        await writer.drain()


async def _odd_status_lines(_: RawBackend, reader: asyncio.StreamReader,
                            writer: asyncio.StreamWriter) -> None:
    """Status lines with a made-up phrase, an empty phrase and an unregistered code."""
    while (req := await read_request(reader)) is not None:
        line = {"/custom": b"HTTP/1.1 404 Nothing To See\r\n", "/empty": b"HTTP/1.1 404 \r\n",
                "/unregistered": b"HTTP/1.1 599 Whatever\r\n"}[req.target]
        writer.write(line + b"Content-Length: 2\r\n\r\nok")
        await writer.drain()


@pytest.fixture(scope="module")
def env(tmp_path_factory: pytest.TempPathFactory, backends: Backends,
        echo: int) -> Iterator[dict[str, Any]]:
    eof = backends.raw(_close_delimited)
    odd = backends.raw(_odd_status_lines)
    proxy = ProxyProcess(tmp_path_factory.mktemp("framing"),
                         {"echo": [echo], "eof": [eof.port], "odd": [odd.port],
                          "dead": [free_port()]}).start()  # nothing listens there
    yield {"proxy": proxy, "port": proxy.outbound}
    proxy.stop()


async def test_chunked_request_body_is_forwarded(env: dict[str, Any]) -> None:
    """A chunked upload arrives whole at the backend."""
    raw = (b"POST /up HTTP/1.1\r\nHost: echo\r\nTransfer-Encoding: chunked\r\n\r\n"
           b"5\r\nhello\r\n6\r\n world\r\n0\r\n\r\n")
    resp = await roundtrip(env["port"], raw)
    assert json.loads(resp.body)["body"] == "hello world"


@pytest.mark.parametrize(("path", "first"), [
    ("/custom", "HTTP/1.1 404 Not Found"),
    ("/empty", "HTTP/1.1 404 Not Found"),
    ("/unregistered", "HTTP/1.1 599 "),
])
async def test_status_line_has_the_standard_phrase(env: dict[str, Any], path: str,
                                                   first: str) -> None:
    """The upstream's reason phrase is not forwarded; the client gets the registered one."""
    resp = await roundtrip(env["port"], get("odd", path))
    assert (resp.first, resp.body) == (first, b"ok")


async def test_chunked_response_body_is_relayed_chunked(env: dict[str, Any]) -> None:
    """A chunked response reaches the client chunked and intact."""
    resp = await roundtrip(env["port"], get("echo", "/chunked"))
    assert resp.header("transfer-encoding") == "chunked"
    assert resp.body == b"part0;part1;part2;part3;part4;"


async def test_close_delimited_response_is_rechunked(env: dict[str, Any]) -> None:
    """A body ended by upstream EOF is sent to an HTTP/1.1 client chunked, complete."""
    resp = await roundtrip(env["port"], get("eof", "/"))
    assert resp.header("transfer-encoding") == "chunked"
    assert resp.body == b"until-close-0;until-close-1;until-close-2;"


async def test_expect_100_continue(env: dict[str, Any]) -> None:
    """The client gets `100 Continue` before sending its body, then the final response."""
    reader, writer = await asyncio.open_connection("127.0.0.1", env["port"])
    writer.write(b"PUT /e HTTP/1.1\r\nHost: echo\r\nExpect: 100-continue\r\n"
                 b"Content-Length: 4\r\n\r\n")
    interim = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 10)
    assert interim.startswith(b"HTTP/1.1 100")
    writer.write(b"data")
    resp = await asyncio.wait_for(read_response(reader), 10)
    writer.close()
    assert json.loads(resp.body)["body"] == "data"


async def test_head_keeps_content_length_without_body(env: dict[str, Any]) -> None:
    """HEAD gets the GET's Content-Length and no body; the connection stays usable."""
    reader, writer = await asyncio.open_connection("127.0.0.1", env["port"])
    writer.write(get("echo", "/h", method="HEAD"))
    head = await asyncio.wait_for(read_response(reader, "HEAD"), 10)
    assert head.status == 200 and int(head.header("content-length") or 0) > 0
    writer.write(get("echo", "/after-head"))
    resp = await asyncio.wait_for(read_response(reader), 10)
    writer.close()
    assert json.loads(resp.body)["path"] == "/after-head"


async def test_local_reply_to_head_has_no_body(env: dict[str, Any]) -> None:
    """A reply the proxy makes itself (503 upstream_connect_failure) to a HEAD keeps its
    Content-Length but sends no body: the next response on the kept-alive connection must not
    start inside one."""
    reader, writer = await asyncio.open_connection("127.0.0.1", env["port"])
    writer.write(get("dead", "/h", method="HEAD"))
    head = await asyncio.wait_for(read_response(reader, "HEAD"), 10)
    assert (head.status, head.header("x-ami-reason")) == (503, "upstream_connect_failure")
    assert int(head.header("content-length") or 0) > 0 and head.header("connection") is None
    writer.write(get("echo", "/after-local-head"))
    resp = await asyncio.wait_for(read_response(reader), 10)
    writer.close()
    assert json.loads(resp.body)["path"] == "/after-local-head"


@pytest.mark.parametrize("code", [204, 304])
async def test_bodyless_statuses(env: dict[str, Any], code: int) -> None:
    """204 and 304 carry no body and no chunked framing; the next request works."""
    reader, writer = await asyncio.open_connection("127.0.0.1", env["port"])
    writer.write(get("echo", f"/status/{code}"))
    resp = await asyncio.wait_for(read_response(reader), 10)
    assert resp.status == code and resp.header("x-code") == str(code)
    assert resp.header("transfer-encoding") is None
    writer.write(get("echo", "/next"))
    nxt = await asyncio.wait_for(read_response(reader), 10)  # fails if stray body bytes came
    writer.close()
    assert nxt.status == 200 and json.loads(nxt.body)["path"] == "/next"


async def test_client_connection_close(env: dict[str, Any]) -> None:
    """`Connection: close` from the client: answered with `connection: close`, then closed."""
    resp, closed = await roundtrip_close(env["port"], get("echo", "/", "Connection: close\r\n"))
    assert resp.status == 200 and resp.header("connection") == "close"
    assert closed


async def test_upstream_connection_close_keeps_client(env: dict[str, Any]) -> None:
    """An upstream `Connection: close` is hop-by-hop: the client connection stays open."""
    reader, writer = await asyncio.open_connection("127.0.0.1", env["port"])
    writer.write(get("eof", "/"))
    first = await asyncio.wait_for(read_response(reader), 10)
    writer.write(get("echo", "/again"))
    second = await asyncio.wait_for(read_response(reader), 10)
    writer.close()
    assert first.status == 200 and first.header("connection") is None
    assert json.loads(second.body)["path"] == "/again"


async def test_http10_client(env: dict[str, Any]) -> None:
    """An HTTP/1.0 client gets a complete response and the proxy closes (no keep-alive asked)."""
    old = b"GET /old HTTP/1.0\r\nHost: echo\r\n\r\n"
    resp, closed = await roundtrip_close(env["port"], old)
    assert resp.status == 200 and json.loads(resp.body)["path"] == "/old"
    assert closed
    resp, closed = await roundtrip_close(env["port"], old.replace(b"/old", b"/chunked"))
    assert resp.header("transfer-encoding") is None  # 1.0 cannot read chunked: close-delimited
    assert resp.body == b"part0;part1;part2;part3;part4;" and closed


@pytest.mark.parametrize("header", [b"Connection", b"Proxy-Connection"])
async def test_http10_keep_alive(env: dict[str, Any], header: bytes) -> None:
    """An HTTP/1.0 client that asks for keep-alive gets it, with a length-framed response.
    llhttp honours Proxy-Connection as Connection, so that request is HTTP/1.0 with keep-alive
    too (requesthead reads the version only when such a header came, or no keep-alive)."""
    reader, writer = await asyncio.open_connection("127.0.0.1", env["port"])
    for path in ("/k1", "/k2"):
        writer.write(b"GET %s HTTP/1.0\r\nHost: echo\r\n%s: keep-alive\r\n\r\n"
                     % (path.encode(), header))
        resp = await asyncio.wait_for(read_response(reader), 10)
        assert resp.header("connection") == "keep-alive"
        assert json.loads(resp.body)["path"] == path
    writer.close()


async def test_pipelined_requests_answered_in_order(env: dict[str, Any]) -> None:
    """Ten requests written at once come back in request order, the slow one included."""
    reader, writer = await asyncio.open_connection("127.0.0.1", env["port"])
    paths = [f"/p{i}" for i in range(10)]
    paths[2] = "/slow?s=0.3"
    writer.write(b"".join(get("echo", p) for p in paths))
    bodies = []
    for _ in paths:
        bodies.append((await asyncio.wait_for(read_response(reader), 10)).body)
    writer.close()
    assert bodies[2] == b"slow done"
    assert [json.loads(b)["raw_path"] for i, b in enumerate(bodies) if i != 2] == \
        [p for i, p in enumerate(paths) if i != 2]


async def test_websocket_upgrade_tunnels_both_ways(env: dict[str, Any]) -> None:
    """A WebSocket handshake through the proxy works and messages flow in both directions."""
    async with aiohttp.ClientSession() as session, session.ws_connect(
            f"http://127.0.0.1:{env['port']}/ws", headers={"Host": "echo"}) as ws:
        assert (await ws.receive_str(timeout=10)) == "hello from backend"
        for text in ("one", "two" * 10000):
            await ws.send_str(text)
            assert (await ws.receive_str(timeout=10)) == "echo:" + text


async def test_keep_alive_connection_serves_many_requests(env: dict[str, Any]) -> None:
    """One client connection carries several requests and stays open between them."""
    reader, writer = await asyncio.open_connection("127.0.0.1", env["port"])
    for i in range(5):
        writer.write(get("echo", f"/n{i}", body=b"x" * i, method="POST"))
        resp = await asyncio.wait_for(read_response(reader), 10)
        assert json.loads(resp.body)["body"] == "x" * i
    writer.close()


async def test_h2c_upgrade_is_not_tunnelled(env: dict[str, Any]) -> None:
    """`Upgrade: h2c` is not forwarded (h2c smuggling: a tunnel to an h2c-capable app would
    carry later requests past every per-request policy): the request is answered as
    HTTP/1.1, the upstream never sees the upgrade headers, and the connection closes."""
    raw = (b"GET /smuggle HTTP/1.1\r\nHost: echo\r\nConnection: Upgrade, HTTP2-Settings\r\n"
           b"Upgrade: h2c\r\nHTTP2-Settings: AAMAAABkAARAAAAAAAIAAAAA\r\n\r\n")
    reader, writer = await asyncio.open_connection("127.0.0.1", env["port"])
    writer.write(raw)
    resp = await asyncio.wait_for(read_response(reader), 10)
    assert resp.status == 200 and resp.header("connection") == "close"
    sent = {name.lower() for name, _ in json.loads(resp.body)["headers"]}
    assert not sent & {"upgrade", "http2-settings", "connection"}
    assert await at_eof(reader, 5)
    writer.close()


async def test_websocket_upgrade_answered_without_101_ends_the_connection(
        env: dict[str, Any]) -> None:
    """A WebSocket upgrade the app answers with a plain 200 (the echo route knows no
    WebSocket): the parser stopped after the upgrade's head, so the connection ends with
    that answer, and the answer says so rather than promising keep-alive."""
    raw = (b"GET /not-ws HTTP/1.1\r\nHost: echo\r\nConnection: Upgrade\r\n"
           b"Upgrade: websocket\r\nSec-WebSocket-Version: 13\r\n"
           b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n")
    reader, writer = await asyncio.open_connection("127.0.0.1", env["port"])
    writer.write(raw + get("echo", "/pipelined"))
    resp = await asyncio.wait_for(read_response(reader), 10)
    assert (resp.status, resp.header("connection")) == (200, "close")
    assert json.loads(resp.body)["path"] == "/not-ws"
    assert await at_eof(reader, 5)
    writer.close()
