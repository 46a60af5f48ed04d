"""Hostile HTTP/2 input against the proxy, frame by frame over raw sockets.

The client here builds frames itself (hyperframe, hpack), so it sends exactly what an attacker
would, and reads what the proxy answers frame by frame. The upstream is a small h2 server
(h2 library) that counts the streams it saw opened and reset.
"""

from __future__ import annotations

import asyncio
import json
import signal
import socket
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from h2.config import H2Configuration
from h2.connection import H2Connection
from h2.errors import ErrorCodes
from hpack import Decoder, Encoder, NeverIndexedHeaderTuple
from hyperframe.frame import (
    ContinuationFrame,
    DataFrame,
    Frame,
    GoAwayFrame,
    HeadersFrame,
    PingFrame,
    RstStreamFrame,
    SettingsFrame,
    WindowUpdateFrame,
)

from tests.proxyharness import Backends, ProxyProcess, eventually, metric_value

PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"
Headers = list[tuple[bytes, bytes]]


# --- the upstream: an h2 server that answers by path ----------------------------------------
@dataclass
class H2Backend:
    """`/big?n=N` N bytes, `/slow?s=S` after S seconds, `/hang` never, `/goaway?n=N` N bytes
    with a graceful GOAWAY sent after the head; anything else: the request as JSON."""

    port: int = 0
    opened: int = 0  # streams whose HEADERS arrived
    reset: int = 0  # streams the proxy reset
    active: set[tuple[int, int]] = field(default_factory=set)  # (connection, stream) open
    server: asyncio.base_events.Server | None = None

    async def serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        # (cookie fields left as the proxy sent them: the test of their joining reads them)
        conn = H2Connection(H2Configuration(client_side=False, header_encoding=None,
                                            normalize_inbound_headers=False))
        conn.initiate_connection()
        writer.write(conn.data_to_send())
        cid = id(writer)
        tasks: set[asyncio.Task[None]] = set()
        bodies: dict[int, bytearray] = {}
        pending: dict[int, list[bytes]] = {}  # held DATA beyond the window
        import h2.events as ev

        def flush() -> None:
            writer.write(conn.data_to_send())

        def send(sid: int, data: bytes, end: bool) -> None:
            pending.setdefault(sid, []).append(data)
            pump(sid, end)

        def pump(sid: int, end: bool = False) -> None:
            chunks = pending.get(sid)
            while chunks:
                room = min(conn.local_flow_control_window(sid), conn.max_outbound_frame_size)
                if room <= 0:
                    flush()
                    return
                head, chunks[0] = chunks[0][:room], chunks[0][room:]
                conn.send_data(sid, head)
                if not chunks[0]:
                    chunks.pop(0)
            if end or chunks == []:
                pending.pop(sid, None)
                conn.end_stream(sid)
                self.active.discard((cid, sid))
            flush()

        async def answer(sid: int, headers: Headers) -> None:
            h = dict(headers)
            path, _, query = h[b":path"].decode().partition("?")
            args = dict(p.split("=", 1) for p in query.split("&") if "=" in p)
            if path == "/hang":
                return
            if path == "/slow":
                await asyncio.sleep(float(args.get("s", "1")))  # the slowness under test
            if path == "/goaway-first":
                # a graceful GOAWAY sparing this stream, then its answer, in one write (nginx
                # says goodbye this way after keepalive_requests answers)
                conn.send_headers(sid, [(b":status", b"200")])
                conn.send_data(sid, b"ok", end_stream=True)
                frame = GoAwayFrame(0, last_stream_id=sid, error_code=0)
                writer.write(frame.serialize() + conn.data_to_send())
                self.active.discard((cid, sid))
                return
            if path == "/bad-head":
                # a malformed response head (RFC 9113 8.2, 8.3), past h2's own checks
                bad = {"upper": [(b":status", b"200"), (b"X-Upper", b"1")],
                       "crlf": [(b":status", b"200"), (b"x-a", b"1\r\nx-injected: 1")],
                       "connection": [(b":status", b"200"), (b"connection", b"close")],
                       "no_status": [(b"x-a", b"1")],
                       "request_pseudo": [(b":status", b"200"), (b":path", b"/")],
                       "status_text": [(b":status", b"abc")],
                       "status_digits": [(b":status", b"2_00")],
                       "status_long": [(b":status", b"2000")]}[args["h"]]
                config = conn.config
                config.validate_outbound_headers = config.normalize_outbound_headers = False
                conn.send_headers(sid, bad, end_stream=True)
                config.validate_outbound_headers = config.normalize_outbound_headers = True
                flush()
                self.active.discard((cid, sid))
                return
            if path == "/bad-body":
                # a head that is fine, then a malformed rest: DATA past its content-length, or
                # trailers with a pseudo-header (RFC 9113 8.1.1)
                conn.send_headers(sid, [(b":status", b"200"), (b"content-length", b"3")])
                if args["h"] == "past_length":
                    conn.send_data(sid, b"abcdef", end_stream=True)
                else:
                    conn.send_data(sid, b"abc")
                    config = conn.config
                    config.validate_outbound_headers = config.normalize_outbound_headers = False
                    conn.send_headers(sid, [(b":status", b"200")], end_stream=True)
                    config.validate_outbound_headers = config.normalize_outbound_headers = True
                flush()
                self.active.discard((cid, sid))
                return
            if path in ("/big", "/goaway"):
                conn.send_headers(sid, [(b":status", b"200")])
                if path == "/goaway":
                    # graceful: this stream may finish, no new one (h2's close_connection
                    # would refuse to send anything more, so the frame goes out as is)
                    flush()
                    frame = GoAwayFrame(0, last_stream_id=sid, error_code=0)
                    writer.write(frame.serialize())
                    await asyncio.sleep(0.05)  # the body comes after the GOAWAY
                send(sid, b"x" * int(args.get("n", "1000")), True)
                return
            body = json.dumps({"path": h[b":path"].decode(), "method": h[b":method"].decode(),
                               "authority": h.get(b":authority", b"").decode(),
                               "body": bytes(bodies.get(sid, b"")).decode("latin-1"),
                               "headers": [[k.decode(), v.decode("latin-1")]
                                           for k, v in headers],
                               "never_indexed": [h[0].decode() for h in headers
                                                 if isinstance(h, NeverIndexedHeaderTuple)]})
            conn.send_headers(sid, [(b":status", b"200"),
                                    (b"content-type", b"application/json")])
            send(sid, body.encode(), True)

        requests: dict[int, Headers] = {}
        try:
            while True:
                data = await reader.read(65536)
                if not data:
                    break
                for event in conn.receive_data(data):
                    if isinstance(event, ev.RequestReceived):
                        self.opened += 1
                        self.active.add((cid, event.stream_id))
                        requests[event.stream_id] = list(event.headers)
                        if event.stream_ended is not None:
                            tasks.add(asyncio.ensure_future(
                                answer(event.stream_id, requests[event.stream_id])))
                    elif isinstance(event, ev.DataReceived):
                        bodies.setdefault(event.stream_id, bytearray()).extend(event.data)
                        conn.acknowledge_received_data(event.flow_controlled_length,
                                                       event.stream_id)
                        if event.stream_ended is not None:
                            tasks.add(asyncio.ensure_future(
                                answer(event.stream_id, requests[event.stream_id])))
                    elif isinstance(event, ev.StreamReset):
                        self.reset += 1
                        self.active.discard((cid, event.stream_id))
                        pending.pop(event.stream_id, None)
                    elif isinstance(event, ev.WindowUpdated):
                        for sid in list(pending):
                            pump(sid)
                flush()
        finally:
            for task in tasks:
                task.cancel()
            for key in [k for k in self.active if k[0] == cid]:
                self.active.discard(key)


def start_h2_backend(backends: Backends) -> H2Backend:
    backend = H2Backend()

    async def start() -> None:
        async def on_conn(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            try:
                await backend.serve(reader, writer)
            except (ConnectionError, asyncio.CancelledError):
                pass
            finally:
                writer.close()

        backend.server = await asyncio.start_server(on_conn, "127.0.0.1", 0)
        backend.port = int(backend.server.sockets[0].getsockname()[1])

    backends.call(start())
    return backend


# --- the client: raw frames -----------------------------------------------------------------
class Peer:
    """A raw HTTP/2 client: sends the frames it is told to, records what comes back."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader = reader
        self.writer = writer
        self.encoder = Encoder()
        self.decoder = Decoder()
        self.decoder.max_header_list_size = 1 << 30
        self.buf = b""
        self.heads: dict[int, list[Headers]] = {}  # every header block (response, trailers)
        self.data: dict[int, bytearray] = {}
        # each stream's HEADERS and DATA frames in short: `H`, `D<size>`, `+` if it ended it
        self.shapes: dict[int, list[str]] = {}
        self.ended: set[int] = set()
        self.resets: dict[int, int] = {}
        self.goaway: GoAwayFrame | None = None
        self.eof = False
        self.auto_window = True
        self.received = 0
        self.pings_acked: set[bytes] = set()  # the opaque data of our PINGs answered
        self._block: tuple[int, bytes, set[str]] | None = None

    @classmethod
    async def open(cls, port: int, settings: dict[int, int] | None = None,
                   preface: bytes = PREFACE) -> Peer:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        peer = cls(reader, writer)
        frame = SettingsFrame(0)
        frame.settings = settings or {}
        writer.write(preface + frame.serialize())
        return peer

    def close(self) -> None:
        self.writer.close()

    # sending
    def send(self, *frames: Frame) -> None:
        self.writer.write(b"".join(f.serialize() for f in frames))

    def request(self, sid: int, path: str = "/", *, method: str = "GET",
                authority: str | None = "echo", extra: Headers = (),  # type: ignore[assignment]
                end_stream: bool = True, pseudo: Headers | None = None) -> None:
        headers = pseudo if pseudo is not None else [
            (b":method", method.encode()), (b":scheme", b"http"), (b":path", path.encode())]
        if authority is not None and pseudo is None:
            headers.append((b":authority", authority.encode()))
        frame = HeadersFrame(sid)
        frame.data = self.encoder.encode([*headers, *extra])
        frame.flags.add("END_HEADERS")
        if end_stream:
            frame.flags.add("END_STREAM")
        self.send(frame)

    def trailers(self, sid: int, headers: Headers) -> None:
        """A header block that ends stream `sid` (trailers, after its DATA)."""
        self.send(HeadersFrame(sid, data=self.encoder.encode(headers),
                               flags=["END_HEADERS", "END_STREAM"]))

    def rst(self, sid: int, code: int = ErrorCodes.CANCEL) -> None:
        self.send(RstStreamFrame(sid, error_code=code))

    # reading
    async def read_until(self, done: Callable[[], bool], timeout: float = 10.0) -> None:
        """Read frames until `done()` holds (or EOF, or the deadline: then fail)."""
        end = asyncio.get_running_loop().time() + timeout
        while not done():
            if self.eof:
                raise AssertionError("connection closed before the condition held")
            left = end - asyncio.get_running_loop().time()
            if left <= 0:
                raise AssertionError(f"condition not met within {timeout}s")
            try:
                chunk = await asyncio.wait_for(self.reader.read(65536), left)
            except TimeoutError:
                continue
            except ConnectionError:
                chunk = b""
            if not chunk:
                self.eof = True
                continue
            self.buf += chunk
            self._parse()

    async def closed(self, timeout: float = 10.0) -> bool:
        """Read until the proxy closes the connection; True if it did within the timeout."""
        try:
            await self.read_until(lambda: self.eof, timeout)
        except AssertionError:
            return False
        return True

    def _parse(self) -> None:
        while len(self.buf) >= 9:
            frame, length = Frame.parse_frame_header(memoryview(self.buf[:9]))
            if len(self.buf) < 9 + length:
                return
            frame.parse_body(memoryview(self.buf[9:9 + length]))
            self.buf = self.buf[9 + length:]
            self._frame(frame)

    def _frame(self, frame: Frame) -> None:
        sid = frame.stream_id
        if isinstance(frame, SettingsFrame) and "ACK" not in frame.flags:
            self.send(SettingsFrame(0, flags=["ACK"]))
        elif isinstance(frame, HeadersFrame):
            self._block = (sid, frame.data, set(frame.flags))
            if "END_HEADERS" in frame.flags:
                self._headers_done()
        elif isinstance(frame, ContinuationFrame):
            assert self._block is not None
            sid0, data, flags = self._block
            self._block = (sid0, data + frame.data, flags)
            if "END_HEADERS" in frame.flags:
                self._headers_done()
        elif isinstance(frame, DataFrame):
            self.data.setdefault(sid, bytearray()).extend(frame.data)
            self.shapes.setdefault(sid, []).append(
                f"D{len(frame.data)}" + ("+" if "END_STREAM" in frame.flags else ""))
            self.received += frame.flow_controlled_length
            if "END_STREAM" in frame.flags:
                self.ended.add(sid)
            if self.auto_window and frame.flow_controlled_length:
                self.send(WindowUpdateFrame(0, window_increment=frame.flow_controlled_length))
                if "END_STREAM" not in frame.flags:
                    self.send(WindowUpdateFrame(
                        sid, window_increment=frame.flow_controlled_length))
        elif isinstance(frame, RstStreamFrame):
            self.resets[sid] = frame.error_code
        elif isinstance(frame, GoAwayFrame):
            self.goaway = frame
        elif isinstance(frame, PingFrame):
            if "ACK" in frame.flags:
                self.pings_acked.add(bytes(frame.opaque_data))
            else:
                self.send(PingFrame(0, opaque_data=frame.opaque_data, flags=["ACK"]))

    def _headers_done(self) -> None:
        assert self._block is not None
        sid, data, flags = self._block
        self._block = None
        self.heads.setdefault(sid, []).append(list(self.decoder.decode(data, raw=True)))
        self.shapes.setdefault(sid, []).append("H+" if "END_STREAM" in flags else "H")
        if "END_STREAM" in flags:
            self.ended.add(sid)

    # results
    def status(self, sid: int) -> int | None:
        heads = self.heads.get(sid)
        return int(dict(heads[0])[b":status"]) if heads else None

    def header(self, sid: int, name: bytes) -> bytes | None:
        for block in self.heads.get(sid, ()):
            for k, v in block:
                if k == name:
                    return v
        return None

    def finished(self, sid: int) -> bool:
        return sid in self.ended or sid in self.resets

    async def response(self, sid: int, timeout: float = 10.0) -> tuple[int | None, bytes]:
        await self.read_until(lambda: self.finished(sid), timeout)
        return self.status(sid), bytes(self.data.get(sid, b""))

    def json(self, sid: int) -> dict[str, Any]:
        result: dict[str, Any] = json.loads(bytes(self.data[sid]))
        return result


# --- fixtures ---------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def backends() -> Iterator[Backends]:
    b = Backends()
    yield b
    b.close()


@pytest.fixture(scope="module")
def upstream(backends: Backends) -> H2Backend:
    return start_h2_backend(backends)


# `/admin` is refused at the route (as a DENY would): a path must be normalised before it is
# matched, or `/x/../admin` reaches the upstream's /admin.
ROUTES = [{"host": "echo", "rules": [
    {"matches": [{"path": {"prefix": "/admin"}}], "backends": [{"service": "echo"}],
     "fault": {"abort": {"httpStatus": 403}}},
    {"backends": [{"service": "echo"}]}]}]


@pytest.fixture(scope="module")
def proxy(tmp_path_factory: pytest.TempPathFactory, upstream: H2Backend) -> Iterator[ProxyProcess]:
    p = ProxyProcess(tmp_path_factory.mktemp("h2hostile"), {"echo": [upstream.port]},
                     args=("--stream-idle-timeout", "2", "--idle-timeout", "3"),
                     routes=ROUTES).start()
    yield p
    p.stop()


async def served(proxy: ProxyProcess, peer: Peer | None = None, sid: int = 1) -> None:
    """The proxy still answers: on `peer`'s connection (stream `sid`) or a new one."""
    own = peer is None
    if peer is None:
        peer = await Peer.open(proxy.outbound)
    try:
        peer.request(sid, "/ok")
        status, _ = await peer.response(sid)
        assert status == 200
    finally:
        if own:
            peer.close()


# --- the tests ------------------------------------------------------------------------------
async def test_plain_request_is_served(proxy: ProxyProcess) -> None:
    """The harness itself: a request over prior-knowledge h2c reaches the upstream."""
    peer = await Peer.open(proxy.outbound)
    try:
        peer.request(1, "/hello?x=1")
        status, _ = await peer.response(1)
        assert status == 200
        assert peer.json(1)["path"] == "/hello?x=1"
    finally:
        peer.close()


def goaway_code(peer: Peer) -> int | None:
    return peer.goaway.error_code if peer.goaway is not None else None


# 1. rapid reset (CVE-2023-44487)
async def test_rapid_reset_gets_goaway_enhance_your_calm(proxy: ProxyProcess,
                                                         upstream: H2Backend) -> None:
    """Streams opened and reset at once, over and over: after enough of them, mostly reset
    before their answer, the proxy says GOAWAY ENHANCE_YOUR_CALM and closes; the upstream
    streams those requests opened are all cancelled; other clients are still served."""
    peer = await Peer.open(proxy.outbound)
    try:
        sid = 1
        for batch in range(40):  # up to 2000 streams, in batches of 50
            for _ in range(50):
                peer.request(sid, "/hang")
                peer.rst(sid)
                sid += 2
            # The proxy answers a PING after the frames sent before it: the next batch waits
            # until this one was dealt with (else a loaded proxy let the client race ahead).
            mark = b"batch%03d" % batch
            peer.send(PingFrame(0, opaque_data=mark))
            try:
                await peer.writer.drain()
                await peer.read_until(
                    lambda mark=mark: mark in peer.pings_acked or peer.goaway is not None, 30)
            except ConnectionError:
                break  # cut off (with a reset, the GOAWAY may be lost)
            except AssertionError:
                if not peer.eof:
                    raise
            if peer.goaway is not None or peer.eof:
                break
        assert await peer.closed()
        # (a reset may destroy the GOAWAY in flight: the counter below is the proof)
        assert goaway_code(peer) in (None, ErrorCodes.ENHANCE_YOUR_CALM)
        assert sid < 1200  # cut off well before the client stopped on its own
    finally:
        peer.close()
    await eventually(lambda: not upstream.active)
    await served(proxy)
    assert metric_value(await proxy.metrics(), "ami_http2_flood_closes_total",
                        kind="premature_reset") >= 1


async def test_some_resets_are_tolerated(proxy: ProxyProcess) -> None:
    """A client that cancels a minority of its calls is a normal client: never cut off."""
    peer = await Peer.open(proxy.outbound)
    try:
        answered = []
        for sid in range(1, 2 * 240, 2):
            if sid % 6 == 1:
                peer.request(sid, "/hang")
                peer.rst(sid)
            else:
                peer.request(sid, "/ok")
                answered.append(sid)
        await peer.read_until(lambda: all(peer.finished(s) for s in answered))
        assert all(peer.status(s) == 200 for s in answered)
        assert peer.goaway is None
        await served(proxy, peer, 2 * 240 + 1)
    finally:
        peer.close()


async def test_reset_cancels_the_upstream_stream(proxy: ProxyProcess,
                                                 upstream: H2Backend) -> None:
    """A client's RST_STREAM reaches the upstream stream its request opened."""
    peer = await Peer.open(proxy.outbound)
    try:
        before = upstream.reset
        opened = upstream.opened
        peer.request(1, "/hang")
        await eventually(lambda: upstream.opened > opened)
        peer.rst(1)
        await eventually(lambda: upstream.reset > before and not upstream.active)
        await served(proxy, peer, 3)
    finally:
        peer.close()


# 2. control-frame floods
async def flood_closes(proxy: ProxyProcess) -> float:
    """ami_http2_flood_closes_total{kind=unread_output}, waiting out a proxy busy with a flood
    (its admin listener shares the event loop)."""
    end = asyncio.get_running_loop().time() + 30
    while True:
        try:
            return metric_value(await proxy.metrics(), "ami_http2_flood_closes_total",
                                kind="unread_output")
        except OSError:
            assert asyncio.get_running_loop().time() < end, "admin listener never answered"


async def test_ping_flood_without_reading_is_cut_off(proxy: ProxyProcess) -> None:
    """PING frames sent fast by a client that never reads the acks: cut off once it took none
    of the proxy's output over a thousand of them, while the kernel's send buffer could still
    hold their acks (before, the proxy answered until that buffer was full: megabytes of acks,
    tens of seconds of its event loop on a loaded machine). (SETTINGS acks count the same.)"""
    before = await flood_closes(proxy)
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)  # fills up quickly
    sock.setblocking(False)
    await asyncio.get_running_loop().sock_connect(sock, ("127.0.0.1", proxy.outbound))
    reader, writer = await asyncio.open_connection(sock=sock)
    peer = Peer(reader, writer)
    batch = PingFrame(0, opaque_data=b"floodpin").serialize() * 1000
    writer.write(PREFACE + SettingsFrame(0).serialize())
    try:
        # 100 000 frames: their acks (1.7 MB) fit in the kernel's send buffer, so a proxy that
        # only counts what backs up in its own buffer answers them all and is never cut off
        for _ in range(100):
            writer.write(batch)
            await asyncio.wait_for(writer.drain(), 30)
        # never reading (reading would be taking the acks): wait for the proxy's verdict
        end = asyncio.get_running_loop().time() + 60
        while await flood_closes(proxy) == before:
            assert asyncio.get_running_loop().time() < end, "never cut off"
            await asyncio.sleep(0.1)  # poll interval of a deadline-bounded wait
        assert await peer.closed()
    except ConnectionError:
        pass  # cut off while still sending: as good
    finally:
        writer.close()
    assert await flood_closes(proxy) == before + 1
    await served(proxy)


# 4. too many streams
async def test_streams_beyond_the_limit_are_refused(proxy: ProxyProcess) -> None:
    """Above SETTINGS_MAX_CONCURRENT_STREAMS (256) a new stream gets REFUSED_STREAM (the client
    may retry it); the streams below the limit are all answered."""
    peer = await Peer.open(proxy.outbound)
    sids = list(range(1, 2 * 300, 2))
    try:
        for sid in sids:
            peer.request(sid, "/slow?s=1")
        await peer.read_until(lambda: all(peer.finished(s) for s in sids), 30)
        refused = [s for s in sids if peer.resets.get(s) == ErrorCodes.REFUSED_STREAM]
        assert len(refused) == 300 - 256
        assert all(peer.status(s) == 200 and s in peer.ended for s in sids if s not in refused)
        assert peer.goaway is None
    finally:
        peer.close()


# 5. slow and idle clients
async def test_zero_window_client_is_reset_after_stream_idle(proxy: ProxyProcess,
                                                             upstream: H2Backend) -> None:
    """A client that opens no window: a response the upstream finished (held by the proxy),
    one it could not finish (held back by flow control) and the proxy's own answer to a
    refused head are all reset once the stream idle timeout passes; the connection then
    closes once idle."""
    peer = await Peer.open(proxy.outbound, settings={SettingsFrame.INITIAL_WINDOW_SIZE: 0})
    peer.auto_window = False
    try:
        peer.request(1, "/big?n=100000")  # fits the proxy's upstream window: upstream done
        peer.request(3, "/big?n=20000000")  # does not: the upstream waits for window
        peer.request(5, pseudo=[(b":method", b"CONNECT"), (b":authority", b"echo:443")])
        await peer.read_until(lambda: all(sid in peer.resets for sid in (1, 3, 5)), 15)
        assert peer.resets[5] == ErrorCodes.CANCEL and peer.status(5) == 405
        assert peer.received == 0
        assert await peer.closed(15)
    finally:
        peer.close()
    await eventually(lambda: not upstream.active)


async def test_idle_connection_is_closed(proxy: ProxyProcess) -> None:
    """An HTTP/2 connection with no stream closes after the idle timeout, with a GOAWAY."""
    peer = await Peer.open(proxy.outbound)
    try:
        await served(proxy, peer, 1)
        assert await peer.closed(15)
        assert goaway_code(peer) == ErrorCodes.NO_ERROR
    finally:
        peer.close()


async def test_preface_only_connection_is_closed(proxy: ProxyProcess) -> None:
    """The preface and then nothing (not even SETTINGS): closed after the idle timeout."""
    reader, writer = await asyncio.open_connection("127.0.0.1", proxy.outbound)
    try:
        writer.write(PREFACE)
        peer = Peer(reader, writer)
        assert await peer.closed(15)
    finally:
        writer.close()


# 7. drain
async def test_sigterm_finishes_streams_in_flight(tmp_path: Path, upstream: H2Backend) -> None:
    """SIGTERM with HTTP/2 streams in flight: GOAWAY, the streams still finish (their body and
    a request body still being sent), then the proxy exits."""
    proxy = ProxyProcess(tmp_path, {"echo": [upstream.port]}).start()
    try:
        peer = await Peer.open(proxy.outbound)
        peer.request(1, "/slow?s=1.5")
        peer.request(3, "/upload", method="POST", end_stream=False)
        await eventually(lambda: len(upstream.active) >= 2)
        assert proxy.proc is not None
        proxy.proc.send_signal(signal.SIGTERM)
        await peer.read_until(lambda: peer.goaway is not None)
        assert goaway_code(peer) == ErrorCodes.NO_ERROR
        assert peer.goaway.last_stream_id == 3
        peer.send(DataFrame(3, data=b"rest of the body", flags=["END_STREAM"]))
        peer.send(PingFrame(0, opaque_data=b"12345678"))
        peer.request(5, "/late")  # after the GOAWAY: not processed
        await peer.read_until(lambda: peer.finished(1) and peer.finished(3) and peer.finished(5))
        assert (peer.status(1), peer.status(3)) == (200, 200)
        assert peer.json(3)["body"] == "rest of the body"
        assert peer.resets.get(5) == ErrorCodes.REFUSED_STREAM or peer.status(5) is None
        assert await peer.closed()
        peer.close()
        assert await asyncio.to_thread(proxy.proc.wait, 15) == 0
    finally:
        proxy.stop()


async def test_a_connection_turning_http2_during_a_drain_is_drained_too(
        tmp_path: Path, upstream: H2Backend) -> None:
    """A connection accepted before SIGTERM whose client sends the HTTP/2 preface after it
    (within the 2 s an idle connection is left during a drain): the request that came with the
    preface is served, then GOAWAY and close, long before the 20 s drain deadline; a request
    sent later would get GOAWAY's last stream below its id, safe to retry elsewhere."""
    proxy = ProxyProcess(tmp_path, {"echo": [upstream.port]}, ("--drain-timeout", "20")).start()
    try:
        reader, writer = await asyncio.open_connection("127.0.0.1", proxy.outbound)
        assert proxy.proc is not None
        proxy.proc.send_signal(signal.SIGTERM)
        await eventually(lambda: _ready_status(proxy.admin) == 503)
        peer = Peer(reader, writer)
        first = HeadersFrame(1, flags=["END_HEADERS", "END_STREAM"])
        first.data = peer.encoder.encode([(b":method", b"GET"), (b":scheme", b"http"),
                                          (b":path", b"/ok"), (b":authority", b"echo")])
        # As gRPC clients do: the preface, SETTINGS and the first request in one write.
        writer.write(PREFACE + SettingsFrame(0).serialize() + first.serialize())
        await peer.read_until(lambda: peer.goaway is not None and peer.finished(1))
        assert peer.status(1) == 200 and goaway_code(peer) == ErrorCodes.NO_ERROR
        assert peer.goaway is not None and peer.goaway.last_stream_id == 1
        assert await peer.closed()
        peer.close()
        assert await asyncio.to_thread(proxy.proc.wait, 15) == 0
    finally:
        proxy.stop()


def _ready_status(admin: int) -> int:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{admin}/ready", timeout=2) as resp:
            return int(resp.status)
    except urllib.error.HTTPError as exc:
        return exc.code


# 8. the upstream's graceful GOAWAY
async def test_upstream_goaway_lets_the_stream_finish(proxy: ProxyProcess) -> None:
    """An upstream that says GOAWAY (NO_ERROR, this stream included) and then sends the body:
    the response arrives whole, and the next request goes on a new upstream connection."""
    peer = await Peer.open(proxy.outbound)
    try:
        peer.request(1, "/goaway?n=300000")
        status, body = await peer.response(1)
        assert (status, len(body), 1 in peer.resets) == (200, 300000, False)
        await served(proxy, peer, 3)
    finally:
        peer.close()


async def test_upstream_goaway_before_the_answer_in_one_read(proxy: ProxyProcess) -> None:
    """GOAWAY (NO_ERROR) and then the spared stream's answer in the same read: the answer is
    relayed (h2 alone took the frames after a GOAWAY for a protocol error: a 502)."""
    peer = await Peer.open(proxy.outbound)
    try:
        peer.request(1, "/goaway-first")
        assert await peer.response(1) == (200, b"ok")
        await served(proxy, peer, 3)
    finally:
        peer.close()


# 3. header abuse
async def test_header_block_over_the_limit_in_continuations(proxy: ProxyProcess) -> None:
    """More than max_header_bytes (64 KiB) spread over CONTINUATION frames: a 431 on the stream
    or a connection error, at once; the proxy goes on serving."""
    peer = await Peer.open(proxy.outbound)
    try:
        block = peer.encoder.encode([
            (b":method", b"GET"), (b":scheme", b"http"), (b":path", b"/"),
            (b":authority", b"echo"),
            *((b"x-h%d" % i, b"v" * 1000) for i in range(80))], huffman=False)
        pieces = [block[i:i + 16000] for i in range(0, len(block), 16000)]
        frames: list[Frame] = [HeadersFrame(1, data=pieces[0], flags=["END_STREAM"])]
        frames += [ContinuationFrame(1, data=p) for p in pieces[1:]]
        frames[-1].flags.add("END_HEADERS")
        peer.send(*frames)
        await peer.read_until(lambda: peer.finished(1) or peer.goaway is not None)
        assert peer.status(1) == 431 or goaway_code(peer) is not None
    finally:
        peer.close()
    await served(proxy)


async def test_continuation_flood_is_a_connection_error(proxy: ProxyProcess) -> None:
    """HEADERS without END_HEADERS, then CONTINUATION frames without end (the 2024 flood):
    the connection ends after a bounded number of them."""
    peer = await Peer.open(proxy.outbound)
    try:
        peer.request(1, "/ok")  # an earlier stream, answered
        await peer.response(1)
        peer.send(HeadersFrame(3, data=peer.encoder.encode([(b":method", b"GET")])))
        try:
            for _ in range(100):
                peer.send(*(ContinuationFrame(3, data=b"\x40\x01a\x01b" * 2000)
                            for _ in range(10)))
                await peer.writer.drain()
        except ConnectionError:
            pass
        assert await peer.closed()
        assert goaway_code(peer) in (None, ErrorCodes.PROTOCOL_ERROR,
                                     ErrorCodes.ENHANCE_YOUR_CALM)
    finally:
        peer.close()
    await served(proxy)


@pytest.mark.parametrize("kind", [0x0, 0x1, 0x4])  # DATA, HEADERS, SETTINGS
async def test_a_frame_announced_over_the_size_limit_is_refused_at_its_header(
        proxy: ProxyProcess, kind: int) -> None:
    """A frame header announcing 16 MiB (over our SETTINGS_MAX_FRAME_SIZE of 16 KiB), then
    only its first bytes: GOAWAY FRAME_SIZE_ERROR at once, as nghttp2 does, not after the
    peer has sent (and the proxy held) all 16 MiB of it."""
    peer = await Peer.open(proxy.outbound)
    try:
        peer.request(1, "/ok")
        await peer.response(1)
        stream = 0 if kind == 0x4 else 3
        peer.writer.write((2**24 - 1).to_bytes(3, "big") + bytes([kind, 0])
                          + stream.to_bytes(4, "big") + b"x" * 1000)
        await peer.read_until(lambda: peer.goaway is not None)
        assert goaway_code(peer) == ErrorCodes.FRAME_SIZE_ERROR
        assert await peer.closed()
    finally:
        peer.close()
    await served(proxy)


async def test_hpack_bomb_is_refused(proxy: ProxyProcess) -> None:
    """A 4 KB header indexed once, then referenced thousands of times (small encoded, huge
    decoded): refused without decoding it all; the proxy goes on serving."""
    peer = await Peer.open(proxy.outbound)
    try:
        first = peer.encoder.encode([(b"x-bomb", b"b" * 4000)], huffman=False)  # indexed: 62
        block = peer.encoder.encode([
            (b":method", b"GET"), (b":scheme", b"http"), (b":path", b"/"),
            (b":authority", b"echo")]) + first + b"\xbe" * 10000
        peer.send(HeadersFrame(1, data=block[:16000], flags=["END_STREAM", "END_HEADERS"]))
        await peer.read_until(lambda: peer.finished(1) or peer.goaway is not None)
        assert peer.status(1) == 431 or goaway_code(peer) is not None
    finally:
        peer.close()
    await served(proxy)


# 6. malformed requests
@pytest.mark.parametrize("cut", [3, 16, 17, 20])
async def test_a_preface_split_across_reads_is_still_http2(proxy: ProxyProcess,
                                                           cut: int) -> None:
    """TCP may deliver the preface in pieces: a first read holding only the start of its
    `PRI` line is not a 400, the connection is HTTP/2 once the rest arrives."""
    from tests.test_tcp_hostile import unread

    reader, writer = await asyncio.open_connection("127.0.0.1", proxy.outbound)
    peer = Peer(reader, writer)
    try:
        writer.write(PREFACE[:cut])
        await writer.drain()
        here, there = writer.get_extra_info("sockname")[1], proxy.outbound
        end = asyncio.get_running_loop().time() + 10
        while unread(there, here) != 0:  # the proxy read the first piece: the next is a read
            assert asyncio.get_running_loop().time() < end, "the proxy never read"
            await asyncio.sleep(0.01)  # poll interval of a deadline-bounded wait
        writer.write(PREFACE[cut:] + SettingsFrame(0).serialize())
        peer.request(1, "/split")
        status, _ = await peer.response(1)
        assert status == 200 and peer.json(1)["path"] == "/split"
    finally:
        peer.close()


async def test_bad_preface_closes(proxy: ProxyProcess) -> None:
    """`PRI * HTTP/2.0` with a wrong rest of the preface: closed, nothing else happens."""
    peer = await Peer.open(proxy.outbound, preface=b"PRI * HTTP/2.0\r\n\r\nXX\r\n\r\n")
    try:
        assert await peer.closed()
    finally:
        peer.close()
    await served(proxy)


@pytest.mark.parametrize(("path", "status"), [
    ("/x/../admin", 403), ("/%61dmin", 403), ("/./admin/", 403), ("//admin", 403),
    ("/x/%2e%2e/admin", 403)])
async def test_path_is_normalised_before_routing(proxy: ProxyProcess, path: str,
                                                 status: int) -> None:
    """The `/admin` rule cannot be walked around over HTTP/2: the path is normalised as for
    HTTP/1.1 before it is matched."""
    peer = await Peer.open(proxy.outbound)
    try:
        peer.request(1, path)
        assert (await peer.response(1))[0] == status
    finally:
        peer.close()


async def test_connect_is_answered(proxy: ProxyProcess) -> None:
    """CONNECT (no extended CONNECT is offered) gets 405 on its stream; the connection goes
    on."""
    peer = await Peer.open(proxy.outbound)
    try:
        peer.request(1, pseudo=[(b":method", b"CONNECT"), (b":authority", b"echo:443")])
        assert (await peer.response(1))[0] == 405
        await served(proxy, peer, 3)
    finally:
        peer.close()


@pytest.mark.parametrize("headers", [
    [(b":method", b"GET"), (b":scheme", b"http"), (b":authority", b"echo")],  # no :path
    [(b":method", b"GET"), (b":scheme", b"http"), (b":path", b"/"), (b":authority", b"echo"),
     (b"X-Upper", b"1")],
    [(b":method", b"GET"), (b":scheme", b"http"), (b":path", b"/"), (b":authority", b"echo"),
     (b"connection", b"close")],
    [(b":method", b"GET"), (b":scheme", b"http"), (b":path", b"/"), (b":authority", b"echo"),
     (b"transfer-encoding", b"chunked")],
    [(b":method", b"GET"), (b":scheme", b"http"), (b":path", b"/"), (b":authority", b"echo"),
     (b"te", b"gzip")],
    [(b":method", b"GET"), (b":scheme", b"http"), (b":path", b"/"), (b":authority", b"echo"),
     (b"host", b"other")],
    *([(b":method", b"GET"), (b":scheme", b"http"), (b":path", b"/"), (b":authority", b"echo"),
       bad] for bad in [
        (b"x-a", b"1\r\nx-injected: 1"), (b"x-a", b"1\n2"), (b"x-a", b"1\x002"),
        (b"x-a", b" 1"), (b"x-a", b"1\t"), (b"", b"1"), (b"x:a", b"1"), (b"x a", b"1"),
        (b"x-\x7f", b"1"), (b":path", b"/again"), (b":foo", b"1"), (b":status", b"200"),
        (b":protocol", b"websocket"), (b"keep-alive", b"timeout=5"),
        (b"proxy-connection", b"keep-alive"), (b"upgrade", b"websocket"),
        (b"te", b"trailers, gzip")]),
    [(b":method", b"GET"), (b":scheme", b"http"), (b"x-a", b"1"), (b":path", b"/"),
     (b":authority", b"echo")],
    [(b":method", b"GET"), (b":scheme", b"http"), (b":path", b""), (b":authority", b"echo")],
    [(b":method", b"GET"), (b":scheme", b"http"), (b":path", b"/"), (b"host", b"echo"),
     (b"host", b"echo")],
    [(b":method", b"GET"), (b":scheme", b"http"), (b":path", b"/")],  # no authority at all
    [(b":method", b"CONNECT"), (b":scheme", b"http"), (b":path", b"/"),
     (b":authority", b"echo:443")],
], ids=["no_path", "uppercase", "connection", "transfer_encoding", "te_gzip", "host_differs",
        "crlf_value", "lf_value", "nul_value", "leading_space", "trailing_tab", "empty_name",
        "colon_in_name", "space_in_name", "del_in_name", "duplicate_path", "unknown_pseudo",
        "status_in_request", "protocol_without_connect", "keep_alive", "proxy_connection",
        "upgrade", "te_list", "pseudo_after_regular", "empty_path",
        "two_hosts", "no_authority", "connect_with_path"])
async def test_malformed_request_is_refused(proxy: ProxyProcess, upstream: H2Backend,
                                            headers: Headers) -> None:
    """A malformed request (RFC 9113 8.2, 8.3: the checks of proxy.h2headers) is a stream
    error (8.1.1): RST_STREAM PROTOCOL_ERROR on its stream (`400` when it names no authority,
    or two), never forwarded, and the same connection goes on serving (test_proxy_http2_wire
    has streams before and after it)."""
    opened = upstream.opened
    peer = await Peer.open(proxy.outbound)
    try:
        peer.request(1, pseudo=headers)
        await peer.read_until(lambda: peer.finished(1) or peer.goaway is not None or peer.eof)
        names = [name for name, _ in headers]
        if (b":authority" in names) == (b"host" in names):  # none, or both (and differing)
            assert peer.status(1) == 400 and 1 in peer.ended
        else:
            assert peer.resets.get(1) == ErrorCodes.PROTOCOL_ERROR and peer.status(1) is None
        await served(proxy, peer, 3)
        assert peer.goaway is None
    finally:
        peer.close()
    assert upstream.opened == opened + 1  # the one `served` sent: the malformed one never


@pytest.mark.parametrize(("fields", "routed"), [
    ([(b":authority", b"echo")], "echo"),
    ([(b"host", b"echo")], "echo"),
    ([(b":authority", b"echo"), (b"host", b"echo")], "echo"),
    ([(b":authority", b"echo"), (b"host", b"other")], None),
    ([(b":authority", b"other"), (b"host", b"echo")], None),
    ([], None),
], ids=["authority", "host", "both_same", "both_differ", "both_differ_host_routable", "none"])
async def test_a_request_is_routed_by_its_one_authority(proxy: ProxyProcess, upstream: H2Backend,
                                                        fields: Headers, routed: str | None
                                                        ) -> None:
    """The authority a request is routed by is its `:authority`, or its `Host` if it has no
    `:authority` (sent upstream as `:authority`); none, or two that differ, is `400
    bad_request` on its stream, never forwarded, the connection serving on. (Decided by
    proxy.h2headers alone: test_h2headers has every combination it passes.)"""
    opened = upstream.opened
    peer = await Peer.open(proxy.outbound)
    try:
        peer.request(1, pseudo=[(b":method", b"GET"), (b":scheme", b"http"),
                                (b":path", b"/who"), *fields])
        status, _ = await peer.response(1)
        if routed is None:
            assert status == 400 and peer.header(1, b"x-ami-reason") == b"bad_request"
            assert upstream.opened == opened
        else:
            assert status == 200 and peer.json(1)["authority"] == routed
            assert peer.json(1)["path"] == "/who"
        await served(proxy, peer, 3)
        assert peer.goaway is None
    finally:
        peer.close()


@pytest.mark.parametrize("status", [b"100", b"200"])
async def test_a_status_block_after_the_request_ended_costs_its_stream_alone(
        proxy: ProxyProcess, upstream: H2Backend, status: bytes) -> None:
    """A HEADERS frame carrying `:status` on a stream whose request had ended (half-closed on
    the proxy's side, its upstream still answering): that stream is reset (h2 reads a `1xx`
    block as an interim response and failed its state machine: the connection ended), its
    upstream stream cancelled, the connection serving on."""
    opened, before = upstream.opened, set(upstream.active)
    peer = await Peer.open(proxy.outbound)
    try:
        peer.request(1, "/hang")
        await eventually(lambda: upstream.opened == opened + 1)
        active = upstream.active - before  # (this request's upstream stream)
        assert len(active) == 1
        peer.send(HeadersFrame(1, data=peer.encoder.encode([(b":status", status)]),
                               flags=["END_HEADERS"]))
        await peer.read_until(lambda: 1 in peer.resets)
        await served(proxy, peer, 3)
        assert peer.goaway is None and peer.status(1) is None
    finally:
        peer.close()
    await eventually(lambda: not active & upstream.active)


@pytest.mark.parametrize("kind", ["upper", "crlf", "connection", "no_status", "request_pseudo",
                                  "status_text", "status_digits", "status_long"])
async def test_malformed_response_head_is_not_forwarded(proxy: ProxyProcess, kind: str) -> None:
    """An upstream's malformed response head (checked by proxy.h2headers on the upstream
    connection too) is a 502 for the client, nothing of it passed on; the proxy goes on."""
    peer = await Peer.open(proxy.outbound)
    try:
        peer.request(1, f"/bad-head?h={kind}")
        await peer.read_until(lambda: peer.finished(1))
        assert peer.status(1) in (None, 502)
        assert peer.status(1) == 502 or 1 in peer.resets
        assert peer.header(1, b"x-upper") is None and peer.header(1, b"x-a") is None
        assert peer.header(1, b"x-ami-reason") in (None, b"upstream_protocol_error")
        await served(proxy, peer, 3)
    finally:
        peer.close()


@pytest.mark.parametrize("bad", ["/bad-head?h=upper", "/bad-body?h=past_length",
                                 "/bad-body?h=pseudo_in_trailers"])
async def test_a_malformed_response_spares_the_other_streams_of_its_connection(
        tmp_path: Path, upstream: H2Backend, bad: str) -> None:
    """A malformed response (its head; DATA past its content-length; a pseudo-header in its
    trailers) costs that upstream stream alone (RFC 9113 8.1.1): its client gets `502
    upstream_protocol_error`, or a reset once the head was passed on; an answer in flight on
    the same upstream connection (held there: the client opens no more window, so the
    upstream's is not given back) completes in full once the client reads. (A proxy of its
    own: the module's stream idle timeout of 2 s would race a loaded machine.)"""
    proxy = ProxyProcess(tmp_path, {"echo": [upstream.port]}).start()
    peer = await Peer.open(proxy.outbound, settings={SettingsFrame.INITIAL_WINDOW_SIZE: 1024})
    peer.auto_window = False
    try:
        # 300000 bytes: past the proxy's 256 KiB upstream stream window, so the upstream
        # stream stays open until the client reads
        peer.request(1, "/big?n=300000")
        await peer.read_until(lambda: peer.received == 1024)
        in_flight = set(upstream.active)
        assert len(in_flight) == 1
        peer.request(3, bad)  # (its 502 fits in the client's window)
        await peer.read_until(lambda: peer.finished(3))
        if bad.startswith("/bad-head"):
            assert peer.status(3) == 502
            assert peer.header(3, b"x-ami-reason") == b"upstream_protocol_error"
        else:
            assert peer.resets.get(3) == ErrorCodes.INTERNAL_ERROR  # cut, as any broken answer
            assert 3 not in peer.ended
        assert in_flight <= upstream.active  # stream 1's upstream stream still open
        peer.auto_window = True
        peer.send(WindowUpdateFrame(0, window_increment=1 << 20),
                  WindowUpdateFrame(1, window_increment=1 << 20))
        status, body = await peer.response(1)
        assert status == 200 and len(body) == 300000
        assert peer.goaway is None and 1 not in peer.resets
    finally:
        peer.close()
        proxy.stop()


async def test_split_cookies_joined_and_credentials_never_indexed(proxy: ProxyProcess) -> None:
    """What h2's inbound and outbound normalisation did, done by proxy.h2headers and
    proxy.h2hpack: cookie fields joined in one, `te: trailers` and non-ASCII values passed,
    and credentials sent on never-indexed (RFC 7541 7.1.3)."""
    peer = await Peer.open(proxy.outbound)
    try:
        peer.request(1, "/echo", extra=[
            (b"cookie", b"a=1"), (b"x-b", b"caf\xe9"), (b"cookie", b"b=2"),
            (b"authorization", b"Bearer secret-token"), (b"te", b"trailers")])
        status, _ = await peer.response(1)
        assert status == 200
        seen = peer.json(1)
        headers = seen["headers"]
        assert [v for k, v in headers if k == "cookie"] == ["a=1; b=2"]
        assert ["x-b", "caf\xe9"] in headers and ["te", "trailers"] in headers
        assert {"authorization", "cookie"} <= set(seen["never_indexed"])
    finally:
        peer.close()
