"""The lean request path's shortcuts keep the contract: per-request state, routing, metrics, ids.

The HTTP/1.1 path skips work a request does not need (docs/benchmarks.md, branch
`hotpath-lean`): parse fields are reset only after a header that set them, an authority's host
rules and a request's metrics series are looked up from caches, request ids come in batches.
These tests drive a real proxy process where a shortcut taken wrongly would show.
"""

from __future__ import annotations

import asyncio
import random
import re
import signal
import uuid
from collections.abc import Iterator
from types import SimpleNamespace
from typing import Any

import pytest
import yaml

from proxy.headers import _request_id_batch
from proxy.routing import _AUTHORITY_CACHE, Decision, HostRoute, Router
from tests.proxyharness import (
    Backends,
    Message,
    ProxyProcess,
    RawBackend,
    eventually,
    metric_value,
    read_request,
    read_response,
)

_RELOADS = "ami_config_reloads_total"
_UUID4 = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-4[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}")


def _answering(name: bytes) -> Any:
    """A keep-alive backend that records each request and answers with its own name."""

    async def handler(backend: RawBackend, reader: asyncio.StreamReader,
                      writer: asyncio.StreamWriter) -> None:
        while (req := await read_request(reader)) is not None:
            backend.requests.append(req)
            writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n%s" % (len(name), name))
            await writer.drain()

    return handler


# Response heads of `gamma`, by request path: framing and hop-by-hop headers in title, upper,
# lower and mixed case.
_SPELLED_HEADS = {
    "/length": (b"HTTP/1.1 200 OK\r\nSERVER: gamma\r\nKeep-Alive: timeout=5\r\n"
                b"KEEP-ALIVE: max=9\r\nkEeP-aLiVe: x\r\nPROXY-CONNECTION: keep-alive\r\n"
                b"CONNECTION: keep-alive, X-Hop\r\nX-HOP: gone\r\nDATE: today\r\n"
                b"CONTENT-LENGTH: 5\r\n\r\nhello"),
    "/chunked": (b"HTTP/1.1 200 OK\r\nTRANSFER-ENCODING: chunked\r\nTrailer: x\r\n"
                 b"Server: gamma\r\n\r\n3\r\nabc\r\n2\r\nde\r\n0\r\n\r\n"),
    "/mixed": (b"HTTP/1.1 200 OK\r\ntRaNsFeR-EnCoDiNg: chunked\r\ncOnNeCtIoN: keep-alive\r\n"
               b"\r\n2\r\nxy\r\n0\r\n\r\n"),
    "/gzip": b"HTTP/1.1 200 OK\r\nTRANSFER-ENCODING: gzip\r\n\r\n",
}


async def _spelled(backend: RawBackend, reader: asyncio.StreamReader,
                   writer: asyncio.StreamWriter) -> None:
    """A keep-alive backend answering with the head its request's path names."""
    while (req := await read_request(reader)) is not None:
        backend.requests.append(req)
        writer.write(_SPELLED_HEADS[req.first.split(" ")[1]])
        await writer.drain()


@pytest.fixture(scope="module")
def env(tmp_path_factory: pytest.TempPathFactory, backends: Backends) -> Iterator[dict[str, Any]]:
    raws = {"alpha": backends.raw(_answering(b"alpha")),
            "beta": backends.raw(_answering(b"beta")),
            "gamma": backends.raw(_spelled)}
    proxy = ProxyProcess(tmp_path_factory.mktemp("hotpath"),
                         {name: [b.port] for name, b in raws.items()})
    proxy.start()
    yield {"proxy": proxy, "backends": backends, **raws}
    proxy.stop()


async def _exchange(reader: asyncio.StreamReader, writer: asyncio.StreamWriter,
                    raw: bytes) -> Message:
    writer.write(raw)
    return await asyncio.wait_for(read_response(reader), 10)


async def test_a_request_does_not_inherit_the_previous_ones_headers(
        env: dict[str, Any]) -> None:
    """On one keep-alive connection, a request whose headers set per-request state (XFF,
    request id, chunked framing, Connection-named headers, a timeout) is followed by plain
    ones (the second with a request id of its own, so its head takes the general path): those
    get their own forwarding headers and id, no framing and the headers they send."""
    proxy, backend = env["proxy"], env["alpha"]
    before = len(backend.requests)
    reader, writer = await asyncio.open_connection("127.0.0.1", proxy.outbound)
    try:
        first = await _exchange(reader, writer, (
            b"POST /one HTTP/1.1\r\nHost: alpha\r\nX-Forwarded-For: 10.0.0.9\r\n"
            b"X-Request-Id: rid-1\r\nTransfer-Encoding: chunked\r\n"
            b"Connection: keep-alive, X-Hop\r\nX-Hop: secret\r\nX-Ami-Timeout-Ms: 5000\r\n\r\n"
            b"5\r\nhello\r\n0\r\n\r\n"))
        second = await _exchange(reader, writer, b"GET /two HTTP/1.1\r\nHost: alpha\r\n"
                                 b"X-Request-Id: rid-2\r\nX-Hop: visible\r\n\r\n")
        third = await _exchange(reader, writer, b"GET /three HTTP/1.1\r\nHost: alpha\r\n\r\n")
    finally:
        writer.close()
    assert (first.status, second.status, third.status) == (200, 200, 200)
    await eventually(lambda: len(backend.requests) >= before + 3)
    one, two, three = backend.requests[before:before + 3]
    assert one.header("x-forwarded-for") == "10.0.0.9, 127.0.0.1"
    assert one.header("x-request-id") == "rid-1"
    assert one.header("x-hop") is None and one.body == b"hello"
    assert two.header("x-request-id") == "rid-2"
    assert _UUID4.fullmatch(three.header("x-request-id") or "")
    for plain in (two, three):
        assert plain.header("x-forwarded-for") == "127.0.0.1"
        assert plain.header("transfer-encoding") is None
        assert plain.header("content-length") is None and plain.body == b""
    assert two.header("x-hop") == "visible"  # no Connection header names it this time
    assert three.header("x-hop") is None


async def test_each_authority_spelling_reaches_its_service_and_is_counted_there(
        env: dict[str, Any]) -> None:
    """Hosts in several spellings, interleaved with an unknown one, each go to (and are
    counted against) their own service, also when asked for again (the cached lookups)."""
    proxy = env["proxy"]
    hosts = [b"alpha", b"BETA:8080", b"nowhere", b"alpha:80", b"beta", b"nowhere", b"ALPHA"]
    before = await proxy.metrics()
    reader, writer = await asyncio.open_connection("127.0.0.1", proxy.outbound)
    try:
        answers = [await _exchange(reader, writer, b"GET / HTTP/1.1\r\nHost: %s\r\n\r\n" % h)
                   for h in hosts * 2]
    finally:
        writer.close()
    assert [(a.status, a.body if a.status == 200 else b"") for a in answers] == [
        (200, b"alpha"), (200, b"beta"), (404, b""), (200, b"alpha"), (200, b"beta"),
        (404, b""), (200, b"alpha")] * 2
    after = await proxy.metrics()

    def counted(service: str, code: str) -> float:
        labels = {"destination_service": service, "response_code": code,
                  "reporter": "source"}
        return (metric_value(after, "ami_requests_total", **labels)
                - metric_value(before, "ami_requests_total", **labels))

    assert (counted("alpha", "200"), counted("beta", "200"), counted("nowhere", "404")) \
        == (6, 4, 4)


async def test_a_reload_counts_under_the_new_labels(env: dict[str, Any]) -> None:
    """A config reload that relabels an endpoint (same address: the pool object stays, its
    version changes) counts the next requests under the new version, not in a series a
    listener kept from before (kept by backend as well as pool: backends are rebuilt)."""
    proxy, backend = env["proxy"], env["beta"]
    reader, writer = await asyncio.open_connection("127.0.0.1", proxy.outbound)
    try:
        assert (await _exchange(reader, writer, b"GET / HTTP/1.1\r\nHost: beta\r\n\r\n")).status \
            == 200
        applied = metric_value(await proxy.metrics(), _RELOADS, result="applied")
        config = yaml.safe_load(proxy.config.read_text())
        config.pop("version", None)  # (the content's digest)
        config["services"]["beta"]["endpoints"][0]["labels"]["version"] = "v7"
        proxy.config.write_text(yaml.safe_dump(config))
        assert proxy.proc is not None
        proxy.proc.send_signal(signal.SIGHUP)
        end = asyncio.get_running_loop().time() + 10
        while metric_value(await proxy.metrics(), _RELOADS, result="applied") <= applied:
            assert asyncio.get_running_loop().time() < end, proxy.stderr()
            await asyncio.sleep(0.02)  # poll interval of a deadline-bounded wait
        for _ in range(3):
            resp = await _exchange(reader, writer, b"GET / HTTP/1.1\r\nHost: beta\r\n\r\n")
            assert resp.status == 200
    finally:
        writer.close()
    exposition = await proxy.metrics()
    assert metric_value(exposition, "ami_requests_total", destination_service="beta",
                        destination_version="v7") == 3
    assert backend.accepted >= 1


def test_the_authority_cache_is_bounded_and_keeps_hits_only() -> None:
    """A client choosing Host values cannot grow the router's cache: misses are not kept,
    hits stop being kept at the bound (and are still routed), long authorities never are."""
    decision = Decision((), (), random.Random(0))
    router = Router({"alpha": HostRoute(((None, decision),))})
    for i in range(3 * _AUTHORITY_CACHE):
        miss = SimpleNamespace(authority=f"miss-{i}", method=b"GET")
        assert router.route(miss) == "no_route"  # type: ignore[arg-type]
    assert not router._by_authority
    for i in range(3 * _AUTHORITY_CACHE):  # `alpha:<port>`: one host, many authorities
        ex = SimpleNamespace(authority=f"alpha:{i}", method=b"GET")
        assert router.route(ex) is decision  # type: ignore[arg-type]
    assert len(router._by_authority) == _AUTHORITY_CACHE
    long_one = SimpleNamespace(authority="alpha:" + "1" * 300, method=b"GET")
    router._by_authority.clear()
    assert router.route(long_one) is decision  # type: ignore[arg-type]
    assert not router._by_authority


def test_request_id_batches_are_distinct_uuid4_lines() -> None:
    """The batch-made ids: whole `x-request-id` lines, lower-case UUIDv4 (version 4, RFC 4122
    variant), no two alike."""
    lines = _request_id_batch(1000)
    assert len(lines) == 1000 and len(set(lines)) == 1000
    for line in lines:
        assert line.startswith(b"x-request-id: ") and line.endswith(b"\r\n")
        text = line[14:-2].decode()
        assert _UUID4.fullmatch(text), text
        parsed = uuid.UUID(text)
        assert parsed.version == 4 and parsed.variant == uuid.RFC_4122


async def test_headers_in_every_spelling_keep_their_rules(env: dict[str, Any]) -> None:
    """Special request and response headers in title, upper, lower and mixed case are handled
    alike (a shortcut keyed on a header's spelling must keep this): hop-by-hop and identity
    ones dropped, framing obeyed, a second Host refused, a coding other than chunked answered
    502."""
    proxy, backend = env["proxy"], env["gamma"]
    before = len(backend.requests)
    reader, writer = await asyncio.open_connection("127.0.0.1", proxy.outbound)
    try:
        length = await _exchange(reader, writer, (
            b"POST /length HTTP/1.1\r\nHOST: gamma\r\nX-FORWARDED-FOR: 10.1.1.1\r\n"
            b"USER-AGENT: ua\r\nPROXY-AUTHORIZATION: secret\r\nTe: trailers\r\n"
            b"X-Forwarded-Client-Cert: forged\r\nx-forwarded-proto: https\r\n"
            b"TRANSFER-ENCODING: chunked\r\n\r\n4\r\nbody\r\n0\r\n\r\n"))
        chunked = await _exchange(reader, writer, (
            b"GET /chunked HTTP/1.1\r\nhost: gamma\r\nx-Forwarded-For: 10.2.2.2\r\n\r\n"))
        mixed = await _exchange(reader, writer, b"GET /mixed HTTP/1.1\r\nHost: gamma\r\n\r\n")
        gzip = await _exchange(reader, writer, b"GET /gzip HTTP/1.1\r\nHost: gamma\r\n\r\n")
    finally:
        writer.close()
    assert length.status == 200 and length.body == b"hello"
    assert [n.lower() for n, _ in length.headers].count("content-length") == 1
    assert length.header("server") == "gamma" and length.header("date") == "today"
    for gone in ("keep-alive", "proxy-connection", "x-hop", "transfer-encoding"):
        assert length.header(gone) is None, gone
    assert chunked.status == 200 and chunked.body == b"abcde"
    assert chunked.header("trailer") is None and chunked.header("server") == "gamma"
    assert [n.lower() for n, _ in chunked.headers].count("transfer-encoding") == 1
    assert mixed.status == 200 and mixed.body == b"xy"
    assert [n.lower() for n, _ in mixed.headers].count("transfer-encoding") == 1
    assert gzip.status == 502
    await eventually(lambda: len(backend.requests) >= before + 4)
    sent, second = backend.requests[before:before + 2]
    assert sent.body == b"body" and sent.header("user-agent") == "ua"
    assert sent.header("x-forwarded-for") == "10.1.1.1, 127.0.0.1"
    assert sent.header("x-forwarded-proto") == "http"
    for gone in ("proxy-authorization", "te", "x-forwarded-client-cert"):
        assert sent.header(gone) is None, gone
    assert second.header("x-forwarded-for") == "10.2.2.2, 127.0.0.1"
    assert second.header("transfer-encoding") is None and second.body == b""
    reader, writer = await asyncio.open_connection("127.0.0.1", proxy.outbound)
    try:
        twice = await _exchange(reader, writer, b"GET /length HTTP/1.1\r\nHost: gamma\r\n"
                                b"HOST: gamma\r\n\r\n")
    finally:
        writer.close()
    assert twice.status == 400
