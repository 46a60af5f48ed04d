"""A push changing `mesh.mtls` (or one service's mode) on running sidecars: no plaintext
survives a switch to mTLS.

In-process sidecars (ProxyServer, real sockets and handshakes on 127.0.0.1) with identities
minted by a CA in tmp; a push is `ProxyServer.apply` of a new snapshot, as the control-plane
agent does. The echo backend reports the headers it got: `x-forwarded-client-cert` is present
only for requests that arrived over mTLS.
"""

from __future__ import annotations

import asyncio
import json
import struct
from collections.abc import AsyncIterator
from dataclasses import dataclass, replace
from pathlib import Path

import pytest
from aiohttp import web
from h2.config import H2Configuration
from h2.connection import H2Connection
from h2.errors import ErrorCodes

from meshctl.ca import CertificateAuthority, init_ca
from proxy.config import Address, Snapshot
from proxy.server import ProxyOptions, ProxyServer
from proxy.tcpwire import PREAMBLE, first_frame
from tests.h2app import H2Client, H2Server
from tests.proxyharness import (
    Backends,
    Message,
    RawBackend,
    echo_app,
    eventually,
    free_port,
    get,
    read_response,
)
from tests.test_mtls_static import client_ctx, mint, sid
from tests.test_tcp_hostile import unread

DEADLINE = 10.0
FRAME_HEAD = struct.Struct(">IBBI")  # an HTTP/2 frame header, its 24-bit length padded
RST_STREAM = 0x3
REFUSED = (ConnectionError, asyncio.IncompleteReadError, EOFError)


@dataclass
class Pair:
    """productpage (outbound) -> reviews (inbound) -> echo app."""

    ca: CertificateAuthority
    backends: Backends
    reviews: ProxyServer
    productpage: ProxyServer
    inbound: int
    outbound: int
    app: int
    versions: list[int]
    app_protocol: str = "auto"

    def push_reviews(self, mode: str, own: str | None = None) -> None:
        """The mesh's mode, and reviews' own (a PeerAuthentication's) if ``own``."""
        self.versions[0] += 1
        self.reviews.apply(Snapshot.from_dict({
            "version": f"r{self.versions[0]}", "node": {"service": "reviews"},
            "app": f"127.0.0.1:{self.app}", "appProtocol": self.app_protocol,
            "mesh": {"mtls": mode}, "inbound": {"mtls": own} if own else {}}))

    def push_productpage(self, mode: str, reviews: str | None = None) -> None:
        """The mesh's mode, and that of the reviews service if ``reviews``."""
        self.versions[1] += 1
        self.productpage.apply(Snapshot.from_dict({
            "version": f"p{self.versions[1]}", "node": {"service": "productpage"},
            "mesh": {"mtls": mode},
            "services": {"reviews": {"endpoints": [
                {"address": f"127.0.0.1:{self.inbound}", "identity": sid("reviews")}],
                **({"mtls": reviews} if reviews else {})}}}))


@pytest.fixture
async def pair(tmp_path: Path) -> AsyncIterator[Pair]:
    init_ca(tmp_path / "ca")
    ca = CertificateAuthority(tmp_path / "ca")
    backends = Backends()
    servers: list[ProxyServer] = []
    try:
        app = backends.aiohttp(echo_app())
        inbound, outbound = free_port(), free_port()
        reviews = ProxyServer(ProxyOptions(listeners={"inbound": Address("127.0.0.1", inbound)}))
        productpage = ProxyServer(ProxyOptions(
            listeners={"outbound": Address("127.0.0.1", outbound)}))
        pair = Pair(ca, backends, reviews, productpage, inbound, outbound, app, [0, 0])
        pair.push_reviews("PERMISSIVE")
        pair.push_productpage("DISABLE")
        for server, service in ((reviews, "reviews"), (productpage, "productpage")):
            server.set_identity(mint(ca, service))
            await server.start_listeners()
            servers.append(server)
        yield pair
    finally:
        for server in servers:
            await server.shutdown(deadline=1.0)
        backends.close()


async def ask(reader: asyncio.StreamReader, writer: asyncio.StreamWriter,
              path: str) -> Message:
    writer.write(get("reviews", path))
    await writer.drain()
    return await asyncio.wait_for(read_response(reader), DEADLINE)


def xfcc(resp: Message) -> list[str]:
    return [v for k, v in json.loads(resp.body)["headers"]
            if k.lower() == "x-forwarded-client-cert"]


@pytest.mark.parametrize("before", ["PERMISSIVE", "DISABLE"])
async def test_plaintext_connection_is_closed_when_inbound_turns_strict(
        pair: Pair, before: str) -> None:
    """A plaintext keep-alive connection admitted before the switch carries no request after
    it: an idle one is closed at once, and nothing more is served on it."""
    pair.push_reviews(before)
    reader, writer = await asyncio.open_connection("127.0.0.1", pair.inbound)
    try:
        first = await ask(reader, writer, "/before")
        assert first.status == 200 and xfcc(first) == []
        pair.push_reviews("STRICT")
        with pytest.raises(REFUSED):
            await ask(reader, writer, "/after")
    finally:
        writer.close()
    # mTLS still gets in, on a new connection.
    reader, writer = await asyncio.open_connection(
        "127.0.0.1", pair.inbound, ssl=client_ctx(mint(pair.ca, "ratings"), pair.ca.trust_bundle()))
    try:
        resp = await ask(reader, writer, "/tls")
        assert resp.status == 200 and xfcc(resp) == [f"By={sid('reviews')};URI={sid('ratings')}"]
    finally:
        writer.close()


async def test_request_in_flight_at_the_switch_finishes_and_closes_the_connection(
        pair: Pair) -> None:
    """The plaintext request being served when STRICT arrives completes (it began under the
    old mode), with `connection: close`; a request pipelined behind it is not served."""
    release = asyncio.Event()
    seen: list[str] = []

    async def held(request: web.Request) -> web.Response:
        seen.append(request.path)
        await release.wait()
        return web.Response(text="held done")

    app = web.Application()
    app.router.add_get("/{tail:.*}", held)
    pair.app = pair.backends.aiohttp(app)
    pair.push_reviews("PERMISSIVE")
    reader, writer = await asyncio.open_connection("127.0.0.1", pair.inbound)
    try:
        writer.write(get("reviews", "/held"))
        await writer.drain()
        await eventually(lambda: seen == ["/held"], DEADLINE, what="the request to reach the app")
        pair.push_reviews("STRICT")
        writer.write(get("reviews", "/pipelined"))
        await writer.drain()
        pair.backends.loop.call_soon_threadsafe(release.set)
        resp = await asyncio.wait_for(read_response(reader), DEADLINE)
        assert (resp.status, resp.body) == (200, b"held done")
        assert (resp.header("connection") or "").lower() == "close"
        with pytest.raises(REFUSED):
            await asyncio.wait_for(read_response(reader), DEADLINE)
    finally:
        writer.close()
    assert seen == ["/held"]


async def test_plaintext_stream_is_closed_after_the_grace_period(pair: Pair) -> None:
    """A plaintext response that never ends (a stream) is cut once the drain grace passes."""
    # the grace (--drain-timeout): how long a plaintext stream may go on after the switch
    pair.reviews.options = replace(pair.reviews.options, drain_timeout=0.2)
    release = asyncio.Event()

    async def endless(request: web.Request) -> web.StreamResponse:
        resp = web.StreamResponse()
        await resp.prepare(request)
        await resp.write(b"tick\n")
        await release.wait()
        return resp

    app = web.Application()
    app.router.add_get("/{tail:.*}", endless)
    pair.app = pair.backends.aiohttp(app)
    pair.push_reviews("PERMISSIVE")
    reader, writer = await asyncio.open_connection("127.0.0.1", pair.inbound)
    try:
        writer.write(get("reviews", "/stream"))
        await writer.drain()
        head = await asyncio.wait_for(reader.readuntil(b"tick\n"), DEADLINE)
        assert head.startswith(b"HTTP/1.1 200")
        pair.push_reviews("STRICT")
        rest = await asyncio.wait_for(reader.read(), DEADLINE)  # EOF once the grace is over
        assert b"tick" not in rest
    finally:
        writer.close()
        pair.backends.loop.call_soon_threadsafe(release.set)


async def test_plaintext_http2_connection_is_closed_when_inbound_turns_strict(
        pair: Pair) -> None:
    """The same for HTTP/2 in plaintext (h2c, prior knowledge): an idle connection admitted
    under PERMISSIVE is closed at the switch, its next stream never reaches the app."""
    app = await H2Server("reviews").start()
    try:
        pair.app, pair.app_protocol = app.port, "http2"
        pair.push_reviews("PERMISSIVE")
        async with H2Client(pair.inbound) as client:
            assert (await client.request("reviews", "/before")).status == 200
            pair.push_reviews("STRICT")
            assert client.task is not None
            await asyncio.wait_for(client.task, DEADLINE)  # its reader saw the proxy's close
        assert app.paths() == ["/before"]
    finally:
        await app.stop()


async def test_plaintext_http2_stream_opened_after_strict_is_refused(pair: Pair) -> None:
    """A plaintext HTTP/2 connection busy at the switch (a stream in flight) gets GOAWAY: a
    client that ignores it and opens another stream has it refused (REFUSED_STREAM), and the
    app never sees it; the one in flight is cut after the grace at most."""
    app = await H2Server("reviews").start()
    reader, writer = await asyncio.open_connection("127.0.0.1", pair.inbound)
    try:
        pair.app, pair.app_protocol = app.port, "http2"
        pair.push_reviews("PERMISSIVE")
        h2 = H2Connection(H2Configuration(client_side=True, header_encoding=None))
        h2.initiate_connection()

        def head(path: str) -> list[tuple[bytes, bytes]]:
            return [(b":method", b"GET"), (b":scheme", b"http"), (b":authority", b"reviews"),
                    (b":path", path.encode())]

        h2.send_headers(1, head("/hang"), end_stream=True)
        writer.write(h2.data_to_send())
        await eventually(lambda: app.paths() == ["/hang"], DEADLINE, what="the held stream")
        pair.push_reviews("STRICT")
        # Sent before reading anything: as a client that never reads the GOAWAY would.
        h2.send_headers(3, head("/after"), end_stream=True)
        writer.write(h2.data_to_send())
        # Frames read raw: h2's state machine takes nothing after the GOAWAY it ignored.
        while True:
            length, kind, _flags, stream = FRAME_HEAD.unpack(
                b"\0" + await asyncio.wait_for(reader.readexactly(9), DEADLINE))
            payload = await asyncio.wait_for(reader.readexactly(length), DEADLINE)
            if kind == RST_STREAM and stream & 0x7FFFFFFF == 3:
                break
        assert int.from_bytes(payload, "big") == ErrorCodes.REFUSED_STREAM
        assert app.paths() == ["/hang"]
    finally:
        writer.close()
        await app.stop()


async def test_a_plaintext_tcp_connection_without_its_hello_is_closed_at_the_switch(
        pair: Pair) -> None:
    """A plaintext `ami-tcp` connection whose preamble was read under PERMISSIVE but whose
    hello had not come has been admitted to nothing: it is closed at the switch, as an idle
    HTTP connection is, and a hello sent after it opens no connection to the app (it once
    did, carrying bytes until the grace)."""
    accepted: list[int] = []

    async def banner(backend: RawBackend, reader: asyncio.StreamReader,
                     writer: asyncio.StreamWriter) -> None:
        accepted.append(1)
        writer.write(b"hello from db\n")
        await reader.read()

    pair.app, pair.app_protocol = pair.backends.raw(banner).port, "tcp"
    pair.push_reviews("PERMISSIVE")
    reader, writer = await asyncio.open_connection("127.0.0.1", pair.inbound)
    try:
        writer.write(PREAMBLE)
        await writer.drain()
        here = writer.get_extra_info("sockname")[1]
        await eventually(lambda: unread(pair.inbound, here) == 0, DEADLINE,
                         what="the preamble read")
        pair.push_reviews("STRICT")
        writer.write(first_frame(b"v1"))
        try:  # closed without an answer (reset, when the hello met the close)
            assert await asyncio.wait_for(reader.read(), DEADLINE) == b""
        except ConnectionResetError:
            pass
    finally:
        writer.close()
    assert accepted == []


async def test_outbound_stops_reusing_plaintext_connections_once_mtls_is_on(pair: Pair) -> None:
    """productpage switches DISABLE -> PERMISSIVE (mTLS to mesh endpoints): its next request
    goes over mTLS, not over the pooled plaintext connection (reviews, PERMISSIVE, would
    take either, so only the caller's side decides here)."""
    reader, writer = await asyncio.open_connection("127.0.0.1", pair.outbound)
    try:
        plain = await ask(reader, writer, "/plain")
        assert plain.status == 200 and xfcc(plain) == []
        pair.push_productpage("PERMISSIVE")
        secured = await ask(reader, writer, "/secured")
        assert secured.status == 200
        assert xfcc(secured) == [f"By={sid('reviews')};URI={sid('productpage')}"]
    finally:
        writer.close()


async def test_a_service_mode_switch_works_as_the_mesh_switch(pair: Pair) -> None:
    """The same for one service's mode (a PeerAuthentication) in a STRICT mesh: reviews'
    inbound, PERMISSIVE of its own, cuts its plaintext connection once that mode is gone;
    productpage, sending plaintext while reviews is DISABLE, stops reusing that pooled
    connection once it is not."""
    pair.push_reviews("STRICT", own="PERMISSIVE")
    reader, writer = await asyncio.open_connection("127.0.0.1", pair.inbound)
    try:
        assert (await ask(reader, writer, "/before")).status == 200
        pair.push_reviews("STRICT")
        with pytest.raises(REFUSED):
            await ask(reader, writer, "/after")
    finally:
        writer.close()
    pair.push_reviews("STRICT", own="PERMISSIVE")  # takes either: productpage decides
    pair.push_productpage("STRICT", reviews="DISABLE")
    reader, writer = await asyncio.open_connection("127.0.0.1", pair.outbound)
    try:
        plain = await ask(reader, writer, "/plain")
        assert plain.status == 200 and xfcc(plain) == []
        pair.push_productpage("STRICT")
        secured = await ask(reader, writer, "/secured")
        assert secured.status == 200
        assert xfcc(secured) == [f"By={sid('reviews')};URI={sid('productpage')}"]
    finally:
        writer.close()
