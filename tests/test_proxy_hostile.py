"""Hostile HTTP/1.1 input against the proxy, byte for byte over raw sockets."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.proxyharness import (
    ProxyProcess,
    at_eof,
    get,
    metric_value,
    read_response,
    roundtrip,
    roundtrip_close,
)


@pytest.fixture(scope="module")
def proxy(tmp_path_factory: pytest.TempPathFactory, echo: int) -> Iterator[ProxyProcess]:
    p = ProxyProcess(tmp_path_factory.mktemp("hostile"), {"echo": [echo]}).start()
    yield p
    p.stop()


SMUGGLING = {
    "cl_and_te": b"POST / HTTP/1.1\r\nHost: echo\r\nContent-Length: 4\r\n"
                 b"Transfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
    "te_and_cl": b"POST / HTTP/1.1\r\nHost: echo\r\nTransfer-Encoding: chunked\r\n"
                 b"Content-Length: 4\r\n\r\n0\r\n\r\n",
    "conflicting_cl": b"POST / HTTP/1.1\r\nHost: echo\r\nContent-Length: 4\r\n"
                      b"Content-Length: 5\r\n\r\nabcde",
    "cl_list": b"POST / HTTP/1.1\r\nHost: echo\r\nContent-Length: 4, 5\r\n\r\nabcde",
    "unknown_coding": b"POST / HTTP/1.1\r\nHost: echo\r\nTransfer-Encoding: gzip\r\n\r\nxx",
    "coding_list": b"POST / HTTP/1.1\r\nHost: echo\r\nTransfer-Encoding: gzip, chunked\r\n\r\n"
                   b"0\r\n\r\n",
    "two_te_headers": b"POST / HTTP/1.1\r\nHost: echo\r\nTransfer-Encoding: chunked\r\n"
                      b"Transfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
}


@pytest.mark.parametrize("name", sorted(SMUGGLING))
async def test_ambiguous_framing_is_400_and_close(proxy: ProxyProcess, name: str) -> None:
    """Requests whose body length is ambiguous get 400 and the connection is closed."""
    resp, closed = await roundtrip_close(proxy.outbound, SMUGGLING[name])
    assert resp.status == 400
    assert resp.header("x-ami-reason") in ("request_smuggling", "bad_request")
    assert closed


BAD_HEADERS = {
    "nul_in_value": b"GET / HTTP/1.1\r\nHost: echo\r\nX-A: a\x00b\r\n\r\n",
    "cr_in_value": b"GET / HTTP/1.1\r\nHost: echo\r\nX-A: a\rb\r\n\r\n",
    "lf_in_value": b"GET / HTTP/1.1\r\nHost: echo\r\nX-A: a\nX-B: b\r\n\r\n",
    "obs_fold": b"GET / HTTP/1.1\r\nHost: echo\r\nX-A: a\r\n folded\r\n\r\n",
    "space_before_colon": b"GET / HTTP/1.1\r\nHost: echo\r\nX-A : a\r\n\r\n",
    "space_in_name": b"GET / HTTP/1.1\r\nHost: echo\r\nX A: a\r\n\r\n",
    "two_hosts": b"GET / HTTP/1.1\r\nHost: echo\r\nHost: other\r\n\r\n",
    "no_host_http11": b"GET / HTTP/1.1\r\nX-A: a\r\n\r\n",
}


@pytest.mark.parametrize("name", sorted(BAD_HEADERS))
async def test_malformed_header_is_400(proxy: ProxyProcess, name: str) -> None:
    """Control characters in values, folding and odd names are refused with 400 and close."""
    resp, closed = await roundtrip_close(proxy.outbound, BAD_HEADERS[name])
    assert resp.status == 400
    assert resp.header("x-ami-reason") in ("invalid_header", "bad_request")
    assert closed


async def test_connect_outside_the_mesh_is_refused(proxy: ProxyProcess) -> None:
    """CONNECT to a host that is no mesh service (no ExternalService, no ALLOW_ANY) is not
    tunnelled: 405 `method_not_allowed`. (Into the mesh: tests/test_proxy_connect.py.)"""
    resp = await roundtrip(proxy.outbound,
                           b"CONNECT example.com:443 HTTP/1.1\r\nHost: example.com:443\r\n\r\n")
    assert (resp.status, resp.header("x-ami-reason")) == (405, "method_not_allowed")


async def test_oversized_header_section_is_431(proxy: ProxyProcess) -> None:
    """More than 64 KiB of headers gets 431 `headers_too_large`."""
    many = b"".join(b"X-H%d: %s\r\n" % (i, b"v" * 1000) for i in range(80))
    resp, closed = await roundtrip_close(proxy.outbound,
                                         b"GET / HTTP/1.1\r\nHost: echo\r\n" + many + b"\r\n")
    assert (resp.status, resp.header("x-ami-reason")) == (431, "headers_too_large")
    assert closed


async def test_rejected_client_still_sending_reads_the_whole_reply(proxy: ProxyProcess) -> None:
    """A client that keeps sending after its 431 still reads the reply (lingering close: no RST
    destroys it), and the proxy closes once the client is done."""
    reader, writer = await asyncio.open_connection("127.0.0.1", proxy.outbound)
    try:
        writer.write(b"GET / HTTP/1.1\r\nHost: echo\r\n")
        for i in range(120):  # ~120 KB of headers in small writes, well past the rejection
            writer.write(b"X-H%d: %s\r\n" % (i, b"v" * 1000))
            await writer.drain()
        resp = await asyncio.wait_for(read_response(reader), 10)
        assert (resp.status, resp.header("x-ami-reason")) == (431, "headers_too_large")
        writer.write_eof()
        assert await at_eof(reader, 5)
    finally:
        writer.close()


async def test_a_client_ending_its_half_mid_body_is_gone_not_waited_for(
        proxy: ProxyProcess) -> None:
    """A FIN in the middle of a request body: the body can never complete, so the request
    ends at once as `downstream_disconnect` (and its upstream connection with it) instead of
    waiting for the stream idle timeout; a FIN after a whole request still gets its answer."""
    before = metric_value(await proxy.metrics(), "ami_requests_total",
                          response_flags="downstream_disconnect")
    reader, writer = await asyncio.open_connection("127.0.0.1", proxy.outbound)
    try:
        writer.write(b"POST /echo HTTP/1.1\r\nHost: echo\r\nContent-Length: 100\r\n\r\n"
                     + b"x" * 10)
        await writer.drain()
        writer.write_eof()
        assert await at_eof(reader, 5)
    finally:
        writer.close()
    after = metric_value(await proxy.metrics(), "ami_requests_total",
                         response_flags="downstream_disconnect")
    assert after == before + 1

    reader, writer = await asyncio.open_connection("127.0.0.1", proxy.outbound)
    try:
        writer.write(b"POST /echo HTTP/1.1\r\nHost: echo\r\nContent-Length: 3\r\n\r\nabc")
        writer.write_eof()
        resp = await asyncio.wait_for(read_response(reader), 10)
        assert resp.status == 200 and json.loads(resp.body)["body"] == "abc"
    finally:
        writer.close()


async def test_one_huge_header_is_431(proxy: ProxyProcess) -> None:
    """A single 70 KiB header value gets 431 even before the header section ends."""
    raw = b"GET / HTTP/1.1\r\nHost: echo\r\nX-Big: " + b"v" * 70_000 + b"\r\nX-Next: 1\r\n"
    resp, closed = await roundtrip_close(proxy.outbound, raw)
    assert (resp.status, resp.header("x-ami-reason")) == (431, "headers_too_large")
    assert closed


async def test_long_request_line_is_414(proxy: ProxyProcess) -> None:
    """A request target over 8 KiB gets 414 `uri_too_long` and close."""
    resp, closed = await roundtrip_close(proxy.outbound, get("echo", "/" + "a" * 9000))
    assert (resp.status, resp.header("x-ami-reason")) == (414, "uri_too_long")
    assert closed


async def test_garbage_is_400(proxy: ProxyProcess) -> None:
    """Bytes that are not HTTP get 400 `bad_request`."""
    resp, closed = await roundtrip_close(proxy.outbound, b"\x16\x03\x01\x02\x00garbage\r\n\r\n")
    assert (resp.status, resp.header("x-ami-reason")) == (400, "bad_request")
    assert closed


async def test_error_after_pipelined_request_keeps_order(proxy: ProxyProcess) -> None:
    """A good request followed by a bad one: the good response first, then 400, then close."""
    smuggled_before = metric_value(await proxy.metrics(), "ami_requests_total",
                                   response_flags="request_smuggling")
    reader, writer = await asyncio.open_connection("127.0.0.1", proxy.outbound)
    writer.write(get("echo", "/slow?s=0.2") + SMUGGLING["cl_and_te"])
    first = await asyncio.wait_for(read_response(reader), 10)
    second = await asyncio.wait_for(read_response(reader), 10)
    closed = await at_eof(reader, 5)
    writer.close()
    assert (first.status, first.body) == (200, b"slow done")
    assert second.status == 400 and closed
    # Counted like any rejection, though answered later.
    assert metric_value(await proxy.metrics(), "ami_requests_total",
                        response_flags="request_smuggling") == smuggled_before + 1


CHUNKED_HEAD = b"POST /upload HTTP/1.1\r\nHost: echo\r\nTransfer-Encoding: chunked\r\n\r\n"
BROKEN_BODIES = {
    "bad_chunk_size": CHUNKED_HEAD + b"3 x\r\nabc\r\n0\r\n\r\n",
    "hex_prefix": CHUNKED_HEAD + b"0x3\r\nabc\r\n0\r\n\r\n",
    "data_without_crlf": CHUNKED_HEAD + b"3\r\nabcXX0\r\n\r\n",
    "overflowing_size": CHUNKED_HEAD + b"FFFFFFFFFFFFFFFFFFFF\r\nabc\r\n",
    "bad_extension": CHUNKED_HEAD + b'3;foo="bar\r\nabc\r\n0\r\n\r\n',
    "nul_in_trailer": CHUNKED_HEAD + b"1\r\na\r\n0\r\nX-T: a\x00b\r\n\r\n",
    # llhttp refuses the coding only once the head was taken (the tab after `chunked`)
    "tab_after_chunked": b"POST /upload HTTP/1.1\r\nHost: echo\r\n"
                         b"Transfer-Encoding: chunked\t\r\n\r\n1\r\na\r\n0\r\n\r\n",
}


@pytest.mark.parametrize("name", sorted(BROKEN_BODIES))
async def test_a_body_breaking_its_framing_after_the_head_is_400_at_once(
        proxy: ProxyProcess, name: str) -> None:
    """A chunked body that turns malformed after its head was taken (and perhaps sent
    upstream) is answered 400 and closed at once, not left to the 300 s stream idle timeout
    with both connections held; the upstream attempt is dropped, and the proxy serves on."""
    resp, closed = await roundtrip_close(proxy.outbound, BROKEN_BODIES[name])
    assert resp.status == 400
    assert resp.header("x-ami-reason") in ("bad_request", "request_smuggling", "invalid_header")
    assert closed
    after = await roundtrip(proxy.outbound, get("echo", "/after"))
    assert after.status == 200 and json.loads(after.body)["path"] == "/after"


async def test_request_trailers_never_reach_the_app_as_headers(
        tmp_path: Path, echo: int) -> None:
    """Trailers of a chunked request are dropped. On a fresh proxy the upstream connection is
    still opening while the body (and its trailers) arrive, so the head is written only then:
    a trailer must not become a header there, unseen by the route rules and policies."""
    proxy = ProxyProcess(tmp_path, {"echo": [echo]}).start()
    try:
        raw = (CHUNKED_HEAD + b"1\r\na\r\n0\r\nX-Role: admin\r\n"
               b"Authorization: Bearer forged\r\n\r\n")
        resp = await roundtrip(proxy.outbound, raw)
        got = json.loads(resp.body)
        names = {name.lower() for name, _ in got["headers"]}
        assert resp.status == 200 and got["body"] == "a"
        assert not names & {"x-role", "authorization"}
    finally:
        proxy.stop()


BAD_AUTHORITIES = {
    "userinfo_in_host": get("echo:80@evil.example"),
    "path_in_host": get("echo:x/evil"),
    "space_in_host": get("echo:1 evil"),
    "long_port": get("echo:99999999"),
    "slash_in_host": get("echo/x"),
    "userinfo_in_target": b"GET http://echo:1@evil.example/x HTTP/1.1\r\nHost: echo\r\n\r\n",
}


@pytest.mark.parametrize("name", sorted(BAD_AUTHORITIES))
async def test_an_authority_that_is_not_host_and_port_is_400(proxy: ProxyProcess,
                                                             name: str) -> None:
    """A Host (or absolute-form authority) that is not RFC 3986 `host[:port]` is 400 and
    close (RFC 9112 3.2), not routed by whatever stands before its last colon."""
    resp, closed = await roundtrip_close(proxy.outbound, BAD_AUTHORITIES[name])
    assert (resp.status, resp.header("x-ami-reason")) == (400, "bad_request")
    assert closed


@pytest.mark.parametrize("host", ["echo:80", "ECHO", "echo:"])
async def test_valid_authorities_are_routed(proxy: ProxyProcess, host: str) -> None:
    resp = await roundtrip(proxy.outbound, get(host, "/valid"))
    assert resp.status == 200 and json.loads(resp.body)["path"] == "/valid"


async def test_connection_cannot_remove_the_request_id_or_keep_a_forged_xff(
        proxy: ProxyProcess) -> None:
    """`x-request-id` and `x-forwarded-for` named in Connection go as hop-by-hop, and the
    proxy's own take their place: the app still gets an id, and only the real client address."""
    resp = await roundtrip(proxy.outbound, get(
        "echo", "/rid", "Connection: x-request-id, x-forwarded-for\r\n"
        "X-Request-Id: client-id-123\r\nX-Forwarded-For: 1.2.3.4\r\n"))
    sent = {name.lower(): value for name, value in json.loads(resp.body)["headers"]}
    assert sent["x-request-id"] not in ("", "client-id-123")
    assert sent["x-forwarded-for"] == "127.0.0.1"


@pytest.mark.parametrize("version", [b"HTTP/2.0", b"HTTP/0.9"])
async def test_a_request_line_of_another_http_version_is_505(proxy: ProxyProcess,
                                                             version: bytes) -> None:
    resp, closed = await roundtrip_close(
        proxy.outbound, b"GET / " + version + b"\r\nHost: echo\r\n\r\n")
    assert (resp.status, resp.header("x-ami-reason")) == (505, "version_not_supported")
    assert closed


# --- limits that need their own proxy flags ---------------------------------------------------
@pytest.fixture(scope="module")
def slow_limits(tmp_path_factory: pytest.TempPathFactory, echo: int) -> Iterator[ProxyProcess]:
    p = ProxyProcess(tmp_path_factory.mktemp("timeouts"), {"echo": [echo]},
                     args=("--header-timeout", "1", "--idle-timeout", "1")).start()
    yield p
    p.stop()


async def test_unfinished_header_section_is_408_and_close(slow_limits: ProxyProcess) -> None:
    """A client that never finishes its headers gets 408 `request_timeout` and is closed."""
    loop = asyncio.get_running_loop()
    reader, writer = await asyncio.open_connection("127.0.0.1", slow_limits.outbound)
    started = loop.time()
    writer.write(b"GET / HTTP/1.1\r\nHost: echo\r\nX-Slow: ")
    resp = await asyncio.wait_for(read_response(reader), 10)
    elapsed = loop.time() - started
    closed = await at_eof(reader, 5)
    writer.close()
    assert (resp.status, resp.header("x-ami-reason")) == (408, "request_timeout")
    assert closed and elapsed >= 0.9  # not before --header-timeout (a lower bound only)


async def test_idle_keep_alive_connection_is_closed(slow_limits: ProxyProcess) -> None:
    """A kept-alive client that sends nothing more is closed after the idle timeout."""
    loop = asyncio.get_running_loop()
    reader, writer = await asyncio.open_connection("127.0.0.1", slow_limits.outbound)
    writer.write(get("echo", "/"))
    resp = await asyncio.wait_for(read_response(reader), 10)
    idle_from = loop.time()
    closed = await at_eof(reader, 5)
    writer.close()
    assert resp.status == 200 and json.loads(resp.body)["path"] == "/"
    assert closed and loop.time() - idle_from >= 0.9  # not before its time (lower bound)


async def test_silent_new_connection_is_closed_after_the_header_timeout(
        tmp_path_factory: pytest.TempPathFactory, echo: int) -> None:
    """A connection that never sends a byte is held for the header timeout, not the (longer)
    keep-alive idle timeout: idle sockets are the cheapest way to fill the connection limit.
    It is closed without an answer (nginx does the same): there was no request to answer."""
    proxy = ProxyProcess(tmp_path_factory.mktemp("silent"), {"echo": [echo]},
                         args=("--header-timeout", "1", "--idle-timeout", "60")).start()
    try:
        loop = asyncio.get_running_loop()
        reader, writer = await asyncio.open_connection("127.0.0.1", proxy.outbound)
        opened = loop.time()
        closed = await at_eof(reader, 10)
        writer.close()
        # Closed within the 10 s wait, so not at the 60 s idle timeout; not before 1 s.
        assert closed and loop.time() - opened >= 0.9
    finally:
        proxy.stop()


async def test_connection_limit(tmp_path_factory: pytest.TempPathFactory, echo: int) -> None:
    """With `--max-connections 2` a third concurrent client gets 503 `too_many_connections`."""
    proxy = ProxyProcess(tmp_path_factory.mktemp("maxconn"), {"echo": [echo]},
                         args=("--max-connections", "2")).start()
    try:
        held = []
        for i in range(2):
            reader, writer = await asyncio.open_connection("127.0.0.1", proxy.outbound)
            writer.write(get("echo", f"/held{i}"))
            assert (await asyncio.wait_for(read_response(reader), 10)).status == 200
            held.append(writer)
        # The refused client's request is unread when the proxy closes: a lingering close
        # (read and drop, FIN) lets it read the 503, where a plain close would reset it.
        reader, writer = await asyncio.open_connection("127.0.0.1", proxy.outbound)
        writer.write(get("echo", "/third"))
        await asyncio.sleep(0.2)  # the request lands before the proxy reads; not a readiness wait
        writer.write(b"X-More: 1\r\n")
        resp = await asyncio.wait_for(read_response(reader), 10)
        assert (resp.status, resp.header("x-ami-reason")) == (503, "too_many_connections")
        writer.write_eof()
        assert await asyncio.wait_for(reader.read(), 5) == b""  # a FIN, not a reset
        writer.close()
        assert metric_value(await proxy.metrics(), "ami_connections_refused_total",
                            listener="outbound") == 1
        held.pop().close()
        await eventually_admitted(proxy.outbound)
        for writer in held:
            writer.close()
    finally:
        proxy.stop()


async def eventually_admitted(port: int) -> None:
    """Once a held connection is closed, a new client is served again (within a deadline)."""
    loop = asyncio.get_running_loop()
    end = loop.time() + 5
    while True:
        resp = await roundtrip(port, get("echo", "/again"))
        if resp.status == 200:
            return
        assert loop.time() < end, "no slot freed after closing a connection"
        await asyncio.sleep(0.02)  # poll interval of a deadline-bounded wait
