"""HTTP/2 on the wire through a real proxy: how it encodes header fields, how streams end.

The client and the upstream here read the proxy's frames one by one (hyperframe) and decode its
header blocks with hpack's own decoder, so what matters is seen as it is on the wire: a field
sent as "literal never indexed" (RFC 7541 7.1.3) or not, a stream ended on its last DATA or
trailers frame or by an empty DATA frame after them, and a request whose DATA frames do not
add up to its content-length (RFC 9113 8.1.1) refused before an app reads it.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

import pytest
import yaml
from h2.config import H2Configuration
from h2.connection import H2Connection
from h2.events import DataReceived, RequestReceived, StreamEnded
from hpack import Decoder, Encoder, NeverIndexedHeaderTuple
from hyperframe.frame import (
    ContinuationFrame,
    DataFrame,
    Frame,
    HeadersFrame,
    PingFrame,
    SettingsFrame,
    WindowUpdateFrame,
)

from tests.proxyharness import Backends, ProxyProcess, RawBackend, read_request

PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"
Headers = list[tuple[bytes, bytes]]
SECRET = NeverIndexedHeaderTuple


@dataclass
class Seen:
    """A frame as it arrived: its type, stream, flags, payload size, and a header block's
    fields as hpack decodes them (never-indexed ones as NeverIndexedHeaderTuple)."""

    kind: str
    sid: int
    flags: frozenset[str]
    size: int
    headers: list[tuple[bytes, bytes]] | None = None

    @property
    def end(self) -> bool:
        return "END_STREAM" in self.flags


class FrameLog:
    """The frames of one direction of a connection, parsed as they arrive."""

    def __init__(self) -> None:
        self.decoder = Decoder()
        self.decoder.max_header_list_size = 1 << 20
        self.buf = b""
        self.frames: list[Seen] = []
        self._block: tuple[int, frozenset[str], bytes] | None = None

    def feed(self, data: bytes) -> list[Frame]:
        self.buf += data
        out = []
        while len(self.buf) >= 9:
            frame, length = Frame.parse_frame_header(memoryview(self.buf[:9]))
            if len(self.buf) < 9 + length:
                break
            frame.parse_body(memoryview(self.buf[9:9 + length]))
            self.buf = self.buf[9 + length:]
            out.append(frame)
            self._record(frame, length)
        return out

    def _record(self, frame: Frame, length: int) -> None:
        flags = frozenset(frame.flags)
        if isinstance(frame, HeadersFrame | ContinuationFrame):
            if isinstance(frame, HeadersFrame):
                self._block = (frame.stream_id, flags, frame.data)
            else:
                assert self._block is not None
                sid, first, data = self._block
                self._block = (sid, first, data + frame.data)
            if "END_HEADERS" in flags:
                sid, first, data = self._block  # type: ignore[misc]
                self._block = None
                headers = list(self.decoder.decode(data, raw=True))
                self.frames.append(Seen("HEADERS", sid, first, len(data), headers))
        elif isinstance(frame, DataFrame):
            self.frames.append(Seen("DATA", frame.stream_id, flags, len(frame.data)))
        else:
            self.frames.append(Seen(type(frame).__name__, frame.stream_id, flags, length))

    def stream(self, sid: int) -> list[Seen]:
        return [f for f in self.frames if f.sid == sid and f.kind in ("HEADERS", "DATA")]


def shape(frames: list[Seen]) -> list[str]:
    """A stream's frames in short: `H` / `D<size>`, `+` when it ends the stream."""
    return [(f"D{f.size}" if f.kind == "DATA" else "H") + ("+" if f.end else "")
            for f in frames]


def never_indexed(block: list[tuple[bytes, bytes]] | None) -> set[bytes]:
    return {bytes(h[0]) for h in block or () if isinstance(h, NeverIndexedHeaderTuple)}


# --- the upstream: an h2 server whose received frames are logged ----------------------------
@dataclass
class H2Upstream:
    """Answers by path; `logs` holds the frames the proxy sent on each connection."""

    port: int = 0
    logs: list[FrameLog] = field(default_factory=list)

    def requests(self) -> list[list[Seen]]:
        """Every request's frames, in arrival order (connection by connection)."""
        out = []
        for log in self.logs:
            for sid in sorted({f.sid for f in log.frames if f.sid}):
                out.append(log.stream(sid))
        return out

    async def serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        config = H2Configuration(client_side=False, header_encoding=None,
                                 validate_outbound_headers=False,
                                 normalize_outbound_headers=False)
        conn = H2Connection(config)
        conn.initiate_connection()
        writer.write(conn.data_to_send())
        log = FrameLog()
        self.logs.append(log)
        preface = await reader.readexactly(len(PREFACE))
        conn_data = preface
        heads: dict[int, Headers] = {}
        while True:
            if conn_data:
                for event in conn.receive_data(conn_data):
                    if isinstance(event, RequestReceived):
                        heads[event.stream_id] = list(event.headers)
                    elif isinstance(event, DataReceived):
                        conn.acknowledge_received_data(event.flow_controlled_length,
                                                       event.stream_id)
                    elif isinstance(event, StreamEnded):
                        self._answer(conn, event.stream_id, heads[event.stream_id])
                writer.write(conn.data_to_send())
            conn_data = await reader.read(65536)
            if not conn_data:
                return
            log.feed(conn_data)

    @staticmethod
    def _answer(conn: H2Connection, sid: int, head: Headers) -> None:
        path = dict(head)[b":path"]
        if path == b"/secret":
            # never-indexed fields in the answer's head and trailers, next to ordinary ones
            conn.send_headers(sid, [(b":status", b"200"), SECRET(b"x-resp-secret", b"s1"),
                                    (b"x-resp-plain", b"p1")])
            conn.send_data(sid, b"body")
            conn.send_headers(sid, [SECRET(b"x-trailer-secret", b"s2"),
                                    (b"x-trailer-plain", b"p2")], end_stream=True)
        elif path == b"/grpc":
            conn.send_headers(sid, [(b":status", b"200"),
                                    (b"content-type", b"application/grpc")])
            conn.send_data(sid, b"\x00\x00\x00\x00\x02hi")
            conn.send_headers(sid, [(b"grpc-status", b"0"), (b"grpc-message", b"")],
                              end_stream=True)
        elif path == b"/big":
            conn.send_headers(sid, [(b":status", b"200")])
            conn.send_data(sid, b"x" * 100, end_stream=True)
        else:
            conn.send_headers(sid, [(b":status", b"200")])
            conn.send_data(sid, b"ok", end_stream=True)


def start_upstream(backends: Backends) -> H2Upstream:
    upstream = H2Upstream()

    async def start() -> None:
        async def on_conn(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            try:
                await upstream.serve(reader, writer)
            except (ConnectionError, asyncio.IncompleteReadError, asyncio.CancelledError):
                pass
            finally:
                writer.close()

        server = await asyncio.start_server(on_conn, "127.0.0.1", 0)
        upstream.port = int(server.sockets[0].getsockname()[1])

    backends.call(start())
    return upstream


# --- the client: raw frames out, every frame in logged --------------------------------------
class Client:
    """A raw HTTP/2 client whose header blocks come from hpack's encoder (so a field can be
    sent never-indexed); it logs every frame the proxy sends back."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader = reader
        self.writer = writer
        self.encoder = Encoder()
        self.log = FrameLog()

    @classmethod
    async def open(cls, port: int, window: int | None = None) -> Client:
        """Connect; `window`: the stream window announced (SETTINGS_INITIAL_WINDOW_SIZE)."""
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        settings = SettingsFrame(0)
        if window is not None:
            settings.settings = {SettingsFrame.INITIAL_WINDOW_SIZE: window}
        writer.write(PREFACE + settings.serialize())
        return cls(reader, writer)

    def close(self) -> None:
        self.writer.close()

    def headers(self, sid: int, fields: list[tuple[bytes, bytes]], end: bool) -> None:
        frame = HeadersFrame(sid, data=self.encoder.encode(fields))
        frame.flags.add("END_HEADERS")
        if end:
            frame.flags.add("END_STREAM")
        self.writer.write(frame.serialize())

    def request(self, sid: int, path: bytes, extra: Headers = (),  # type: ignore[assignment]
                *, method: bytes = b"GET", end: bool = True) -> None:
        self.headers(sid, [(b":method", method), (b":scheme", b"http"),
                           (b":path", path), (b":authority", b"echo"), *extra], end)

    def data(self, sid: int, payload: bytes, end: bool) -> None:
        self.writer.write(DataFrame(sid, data=payload,
                                    flags=["END_STREAM"] if end else []).serialize())

    async def until(self, done: Callable[[], bool], timeout: float = 10.0) -> None:
        """Read frames until `done()` holds; fail at EOF or after `timeout` seconds."""
        end = asyncio.get_running_loop().time() + timeout
        while not done():
            left = end - asyncio.get_running_loop().time()
            if left <= 0:
                raise AssertionError(f"condition not met within {timeout}s: "
                                     f"{self.log.frames}")
            try:
                data = await asyncio.wait_for(self.reader.read(65536), left)
            except TimeoutError:
                continue
            if not data:
                raise AssertionError(f"connection closed: {self.log.frames}")
            for frame in self.log.feed(data):
                if isinstance(frame, SettingsFrame) and "ACK" not in frame.flags:
                    self.writer.write(SettingsFrame(0, flags=["ACK"]).serialize())
                elif isinstance(frame, PingFrame) and "ACK" not in frame.flags:
                    self.writer.write(PingFrame(0, opaque_data=frame.opaque_data,
                                                flags=["ACK"]).serialize())
                elif isinstance(frame, DataFrame) and frame.flow_controlled_length:
                    self.writer.write(WindowUpdateFrame(
                        0, window_increment=frame.flow_controlled_length).serialize())

    async def answer(self, sid: int) -> list[Seen]:
        await self.until(lambda: any(f.end for f in self.log.stream(sid)))
        return self.log.stream(sid)


# --- fixtures -----------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def backends() -> Iterator[Backends]:
    b = Backends()
    yield b
    b.close()


@pytest.fixture(scope="module")
def upstream(backends: Backends) -> H2Upstream:
    return start_upstream(backends)


async def http1_answer(backend: RawBackend, reader: asyncio.StreamReader,
                       writer: asyncio.StreamWriter) -> None:
    """An HTTP/1.1 app: `/chunked` answers in chunks with trailers, anything else with a
    Content-Length; each answer in one write."""
    while (request := await read_request(reader)) is not None:
        backend.requests.append(request)
        if request.target == "/chunked":
            writer.write(b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n"
                         b"3\r\nabc\r\n3\r\ndef\r\n0\r\nx-checksum: 42\r\n\r\n")
        else:
            writer.write(b"HTTP/1.1 200 OK\r\ncontent-length: 5\r\n\r\nhello")
        await writer.drain()


@pytest.fixture(scope="module")
def http1_app(backends: Backends) -> RawBackend:
    return backends.raw(http1_answer)


@pytest.fixture(scope="module")
def proxy(tmp_path_factory: pytest.TempPathFactory, upstream: H2Upstream,
          http1_app: RawBackend) -> Iterator[ProxyProcess]:
    """`echo` is the HTTP/2 upstream; `h1.example:<port>` the HTTP/1.1 app, an outside host
    whose `HTTP` port the proxy reaches in HTTP/1.1 (HTTP/2 requests downgraded)."""
    p = ProxyProcess(tmp_path_factory.mktemp("h2wire"), {"echo": [upstream.port]})
    config = yaml.safe_load(p.config.read_text())
    config["external"] = {"h1.example": {
        "ports": [{"number": http1_app.port, "protocol": "HTTP"}], "endpoints": ["127.0.0.1"]}}
    p.config.write_text(yaml.safe_dump(config))
    p.start()
    yield p
    p.stop()


async def exchange(proxy: ProxyProcess, upstream: H2Upstream,
                   send: Callable[[Client], None]) -> tuple[list[Seen], list[Seen]]:
    """One request on a new client connection: (the frames of the request as the upstream got
    them, the frames of the answer as the client got them)."""
    before = len(upstream.requests())
    client = await Client.open(proxy.outbound)
    try:
        send(client)
        answer = await client.answer(1)
    finally:
        client.close()
    requests = upstream.requests()
    assert len(requests) == before + 1
    return requests[-1], answer


# --- never-indexed fields (RFC 7541 7.1.3, RFC 9113 8.2.2) ----------------------------------
async def test_never_indexed_request_fields_stay_never_indexed(
        proxy: ProxyProcess, upstream: H2Upstream) -> None:
    """A request field the client sent never-indexed reaches the upstream never-indexed, in the
    head and in the trailers; an ordinary one does not; `authorization` and a short cookie are
    sent never-indexed whatever the client used (nghttp2's rule)."""
    def send(client: Client) -> None:
        client.request(1, b"/", [SECRET(b"x-api-key", b"k-123"), (b"x-plain", b"p"),
                                 (b"authorization", b"Bearer t"), (b"cookie", b"s=1")],
                       method=b"POST", end=False)
        client.data(1, b"body", False)
        client.headers(1, [SECRET(b"x-sig", b"abc"), (b"x-sum", b"42")], True)

    request, answer = await exchange(proxy, upstream, send)
    assert shape(answer)[-1].endswith("+")
    assert shape(request) == ["H", "D4", "H+"]  # the trailers end the stream
    head, trailers = request[0], request[-1]
    assert never_indexed(head.headers) == {b"x-api-key", b"authorization", b"cookie"}
    assert (b"x-plain", b"p") in (head.headers or ())
    assert trailers.kind == "HEADERS" and never_indexed(trailers.headers) == {b"x-sig"}


async def test_never_indexed_response_fields_stay_never_indexed(
        proxy: ProxyProcess, upstream: H2Upstream) -> None:
    """An answer's fields the upstream sent never-indexed reach the client never-indexed, in
    the head and in the trailers, on every request (never from the compression table)."""
    for _ in range(2):  # the second time, an indexed field would come from the table
        _, answer = await exchange(proxy, upstream, lambda c: c.request(1, b"/secret"))
        head, trailers = answer[0], answer[-1]
        assert never_indexed(head.headers) == {b"x-resp-secret"}
        assert (b"x-resp-plain", b"p1") in (head.headers or ())
        assert trailers.end and never_indexed(trailers.headers) == {b"x-trailer-secret"}


# --- how streams end: on the last DATA or trailers frame, never an empty DATA after -----------
async def test_grpc_call_ends_on_its_last_frames_both_ways(
        proxy: ProxyProcess, upstream: H2Upstream) -> None:
    """A gRPC call: the request's message ends the upstream stream on its own DATA frame, and
    the answer ends on its trailers, with no empty END_STREAM DATA frame either way (as Envoy
    forwards them)."""
    message = b"\x00\x00\x00\x00\x02hi"

    def send(client: Client) -> None:
        client.request(1, b"/grpc", [(b"content-type", b"application/grpc"),
                                     (b"te", b"trailers")], method=b"POST", end=False)
        client.data(1, message, True)

    request, answer = await exchange(proxy, upstream, send)
    assert shape(request) == ["H", "D7+"]
    assert shape(answer) == ["H", "D7", "H+"]
    assert (b"grpc-status", b"0") in (answer[-1].headers or ())


async def test_a_body_held_for_the_window_ends_on_its_last_data_frame(
        proxy: ProxyProcess, upstream: H2Upstream) -> None:
    """An answer held back by the client's flow-control window ends, once the window opens, on
    the DATA frame that carries the rest of it."""
    client = await Client.open(proxy.outbound, window=16)
    try:
        client.request(1, b"/big")
        await client.until(lambda: any(f.kind == "DATA" for f in client.log.stream(1)))
        assert shape(client.log.stream(1)) == ["H", "D16"]  # the window's worth, held
        client.writer.write(WindowUpdateFrame(1, window_increment=1000).serialize())
        assert shape(await client.answer(1)) == ["H", "D16", "D84+"]
    finally:
        client.close()


async def test_an_answer_of_the_proxy_ends_on_its_data_frame(proxy: ProxyProcess) -> None:
    """A local answer (404 no_route) is a HEADERS frame and one DATA frame that ends it."""
    client = await Client.open(proxy.outbound)
    try:
        client.headers(1, [(b":method", b"GET"), (b":scheme", b"http"), (b":path", b"/"),
                           (b":authority", b"nowhere")], True)
        answer = await client.answer(1)
    finally:
        client.close()
    assert dict(answer[0].headers or ())[b":status"] == b"404"
    assert [s[-1] for s in shape(answer)] == ["H", "+"] and answer[-1].kind == "DATA"


@pytest.mark.parametrize(("path", "body"), [("/length", b"hello"), ("/chunked", b"abcdef")])
async def test_an_http1_answer_ends_on_its_last_data_frame(
        proxy: ProxyProcess, http1_app: RawBackend, path: str, body: bytes) -> None:
    """An HTTP/1.1 app's answer, read in one piece, ends the client's stream on its last DATA
    frame; a chunked answer's trailers are dropped (as Envoy's HTTP/1 codec does by default)."""
    client = await Client.open(proxy.outbound)
    try:
        client.headers(1, [(b":method", b"GET"), (b":scheme", b"http"), (b":path", path.encode()),
                           (b":authority", f"h1.example:{http1_app.port}".encode())], True)
        answer = await client.answer(1)
    finally:
        client.close()
    assert dict(answer[0].headers or ())[b":status"] == b"200"
    assert [f.kind for f in answer][1:] == ["DATA"] * (len(answer) - 1)
    assert answer[-1].end and answer[-1].size > 0
    assert sum(f.size for f in answer[1:]) == len(body)


# --- content-length against the DATA frames (RFC 9113 8.1.1) ---------------------------------
def _post(client: Client, method: bytes, authority: bytes, length: int, end: bool) -> None:
    client.headers(1, [(b":method", method), (b":scheme", b"http"), (b":path", b"/cl"),
                       (b":authority", authority), (b"content-length", b"%d" % length)], end)


MISMATCHES: dict[str, Callable[[Client, bytes], None]] = {
    # a body announced, none sent: the HEADERS frame ends the stream
    "headers_end": lambda c, a: _post(c, b"POST", a, 10, True),
    "head_headers_end": lambda c, a: _post(c, b"HEAD", a, 10, True),
    # fewer bytes than announced, then trailers end the stream
    "trailers_end": lambda c, a: (_post(c, b"POST", a, 10, False), c.data(1, b"abc", False),
                                  c.headers(1, [(b"x-sum", b"1")], True)),
    # (DATA frames that end the stream short or run past it: h2's own check)
    "data_short": lambda c, a: (_post(c, b"POST", a, 10, False), c.data(1, b"abc", True)),
    "data_long": lambda c, a: (_post(c, b"POST", a, 3, False), c.data(1, b"abcdef", True)),
}


@pytest.mark.parametrize("case", list(MISMATCHES))
async def test_a_body_not_matching_its_content_length_is_refused(
        proxy: ProxyProcess, http1_app: RawBackend, case: str) -> None:
    """A request whose DATA frames do not add up to its content-length is malformed: refused
    (a 400 or a reset on its stream, or the connection ended with PROTOCOL_ERROR), and the
    HTTP/1.1 app never gets it whole: forwarded, it would read its connection's next request
    as this one's body. The proxy goes on serving."""
    seen = len(http1_app.requests)
    client = await Client.open(proxy.outbound)
    try:
        MISMATCHES[case](client, f"h1.example:{http1_app.port}".encode())
        await client.until(lambda: any(f.end for f in client.log.stream(1)) or any(
            f.kind in ("RstStreamFrame", "GoAwayFrame") for f in client.log.frames))
    finally:
        client.close()
    answer = client.log.stream(1)
    if answer:
        assert dict(answer[0].headers or ())[b":status"] == b"400"
    assert [r.target for r in http1_app.requests[seen:]] == []
    client = await Client.open(proxy.outbound)
    try:
        client.headers(1, [(b":method", b"GET"), (b":scheme", b"http"), (b":path", b"/after"),
                           (b":authority", f"h1.example:{http1_app.port}".encode())], True)
        assert dict((await client.answer(1))[0].headers or ())[b":status"] == b"200"
    finally:
        client.close()
    assert [r.target for r in http1_app.requests[seen:]] == ["/after"]
