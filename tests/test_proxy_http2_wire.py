"""HTTP/2 on the wire through a real proxy: how it encodes header fields, how streams end.

The client (the hostile tests' `Peer`) and the upstream here read the proxy's frames one by
one (hyperframe) and decode its header blocks with hpack's own decoder, so what matters is
seen as it is on the wire: a field sent as "literal never indexed" (RFC 7541 7.1.3) or not, a
stream ended on its last DATA or trailers frame or by an empty DATA frame after them, a
request whose DATA frames do not add up to its content-length (RFC 9113 8.1.1) refused
before an app reads it, and a malformed request costing its own stream alone (8.1.1), the
connection's HPACK table kept in step, with a budget for a client that sends only those.
"""

from __future__ import annotations

import asyncio
import itertools
import json
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import pytest
import yaml
from h2.config import H2Configuration
from h2.connection import H2Connection
from h2.errors import ErrorCodes
from h2.events import DataReceived, RequestReceived, StreamEnded
from hpack import Decoder, NeverIndexedHeaderTuple
from hyperframe.frame import (
    ContinuationFrame,
    DataFrame,
    Frame,
    HeadersFrame,
    PingFrame,
    SettingsFrame,
    WindowUpdateFrame,
)

from proxy.h2downstream import MAX_MALFORMED_STREAMS
from tests.proxyharness import (
    Backends,
    ProxyProcess,
    RawBackend,
    eventually,
    metric_value,
    read_request,
)
from tests.test_proxy_http2_hostile import PREFACE, Peer

Headers = list[tuple[bytes, bytes]]
SECRET = NeverIndexedHeaderTuple


_ARRIVALS = itertools.count()  # the order of streams' first heads, over every connection


class FrameLog:
    """What the upstream received on one connection, frame by frame, as `Peer` records what
    the client receives: each stream's header blocks decoded (`heads`) and its frames in short
    (`shapes`)."""

    def __init__(self) -> None:
        self.decoder = Decoder()
        self.decoder.max_header_list_size = 1 << 20
        self.buf = b""
        self.heads: dict[int, list[Headers]] = {}
        self.shapes: dict[int, list[str]] = {}
        self.arrived: dict[int, int] = {}  # stream -> when its first head came, of all streams
        self._block: tuple[int, bool, bytes] | None = None

    def feed(self, data: bytes) -> None:
        self.buf += data
        while len(self.buf) >= 9:
            frame, length = Frame.parse_frame_header(memoryview(self.buf[:9]))
            if len(self.buf) < 9 + length:
                return
            frame.parse_body(memoryview(self.buf[9:9 + length]))
            self.buf = self.buf[9 + length:]
            self._record(frame)

    def _record(self, frame: Frame) -> None:
        sid, end = frame.stream_id, "END_STREAM" in frame.flags
        if isinstance(frame, HeadersFrame):
            self._block = (sid, end, frame.data)
        elif isinstance(frame, ContinuationFrame) and self._block is not None:
            self._block = (self._block[0], self._block[1], self._block[2] + frame.data)
        elif isinstance(frame, DataFrame):
            self.shapes.setdefault(sid, []).append(f"D{len(frame.data)}" + ("+" if end else ""))
        if "END_HEADERS" in frame.flags and self._block is not None:
            sid, end, block = self._block
            self._block = None
            self.arrived.setdefault(sid, next(_ARRIVALS))
            self.heads.setdefault(sid, []).append(list(self.decoder.decode(block, raw=True)))
            self.shapes.setdefault(sid, []).append("H+" if end else "H")


def never_indexed(block: Headers) -> set[bytes]:
    return {bytes(h[0]) for h in block if isinstance(h, NeverIndexedHeaderTuple)}


# --- the upstream: an h2 server whose received frames are logged ----------------------------
@dataclass
class H2Upstream:
    """Answers by path; `logs` holds the frames the proxy sent on each connection."""

    port: int = 0
    logs: list[FrameLog] = field(default_factory=list)

    def requests(self) -> list[tuple[list[Headers], list[str]]]:
        """Every request's header blocks and frames, in arrival order across connections (the
        proxy keeps one per destination: `echo` and `mirrored` each have theirs)."""
        streams = sorted((log.arrived[sid], log, sid) for log in self.logs for sid in log.heads)
        return [(log.heads[sid], log.shapes[sid]) for _, log, sid in streams]

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
    """`echo` is the HTTP/2 upstream (`mirrored` too, its requests copied to `echo`);
    `h1.example:<port>` the HTTP/1.1 app, an outside host whose `HTTP` port the proxy reaches
    in HTTP/1.1 (HTTP/2 requests downgraded)."""
    p = ProxyProcess(tmp_path_factory.mktemp("h2wire"),
                     {"echo": [upstream.port], "mirrored": [upstream.port]}, access_log=True,
                     routes=[{"host": "mirrored", "rules": [{
                         "backends": [{}], "mirror": {"service": "echo", "percent": 100}}]}])
    config = yaml.safe_load(p.config.read_text())
    config["external"] = {"h1.example": {
        "ports": [{"number": http1_app.port, "protocol": "HTTP"}], "endpoints": ["127.0.0.1"]}}
    p.config.write_text(yaml.safe_dump(config))
    p.start()
    yield p
    p.stop()


async def exchange(proxy: ProxyProcess, upstream: H2Upstream, send: Callable[[Peer], None]
                   ) -> tuple[tuple[list[Headers], list[str]], tuple[list[Headers], list[str]]]:
    """One request (stream 1) on a new client connection: (its header blocks and frames as the
    upstream got them, the answer's as the client got them)."""
    before = len(upstream.requests())
    peer = await Peer.open(proxy.outbound)
    try:
        send(peer)
        await peer.read_until(lambda: 1 in peer.ended)
    finally:
        peer.close()
    requests = upstream.requests()
    assert len(requests) == before + 1
    return requests[-1], (peer.heads[1], peer.shapes[1])


# --- never-indexed fields (RFC 7541 7.1.3, RFC 9113 8.2.2) ----------------------------------
async def test_never_indexed_request_fields_stay_never_indexed(
        proxy: ProxyProcess, upstream: H2Upstream) -> None:
    """A request field the client sent never-indexed reaches the upstream never-indexed, in the
    head and in the trailers; an ordinary one does not; `authorization` and a short cookie are
    sent never-indexed whatever the client used (nghttp2's rule)."""
    def send(peer: Peer) -> None:
        peer.request(1, "/", method="POST", end_stream=False, extra=[
            SECRET(b"x-api-key", b"k-123"), (b"x-plain", b"p"), (b"authorization", b"Bearer t"),
            (b"cookie", b"s=1")])
        peer.send(DataFrame(1, data=b"body"))
        peer.trailers(1, [SECRET(b"x-sig", b"abc"), (b"x-sum", b"42")])

    (heads, shapes), _ = await exchange(proxy, upstream, send)
    assert shapes == ["H", "D4", "H+"]  # (the trailers end the stream)
    assert never_indexed(heads[0]) == {b"x-api-key", b"authorization", b"cookie"}
    assert (b"x-plain", b"p") in heads[0]
    assert never_indexed(heads[1]) == {b"x-sig"}


async def test_never_indexed_response_fields_stay_never_indexed(
        proxy: ProxyProcess, upstream: H2Upstream) -> None:
    """An answer's fields the upstream sent never-indexed reach the client never-indexed, in
    the head and in the trailers, on every request (never from the compression table)."""
    for _ in range(2):  # the second time, an indexed field would come from the table
        _, (heads, shapes) = await exchange(proxy, upstream, lambda p: p.request(1, "/secret"))
        assert shapes[-1] == "H+"
        assert never_indexed(heads[0]) == {b"x-resp-secret"}
        assert (b"x-resp-plain", b"p1") in heads[0]
        assert never_indexed(heads[1]) == {b"x-trailer-secret"}


# --- how streams end: on the last DATA or trailers frame, never an empty DATA after -----------
async def test_grpc_call_ends_on_its_last_frames_both_ways(
        proxy: ProxyProcess, upstream: H2Upstream) -> None:
    """A gRPC call: the request's message ends the upstream stream on its own DATA frame, and
    the answer ends on its trailers, with no empty END_STREAM DATA frame either way (as Envoy
    forwards them)."""
    def send(peer: Peer) -> None:
        peer.request(1, "/grpc", method="POST", end_stream=False, extra=[
            (b"content-type", b"application/grpc"), (b"te", b"trailers")])
        peer.send(DataFrame(1, data=b"\x00\x00\x00\x00\x02hi", flags=["END_STREAM"]))

    (_, request), (heads, answer) = await exchange(proxy, upstream, send)
    assert request == ["H", "D7+"]
    assert answer == ["H", "D7", "H+"]
    assert (b"grpc-status", b"0") in heads[-1]


async def test_a_mirrored_call_ends_on_its_last_data_frame_too(
        proxy: ProxyProcess, upstream: H2Upstream) -> None:
    """A call a route mirrors: the copy, like the call itself, ends on the message's own DATA
    frame."""
    before = len(upstream.requests())
    peer = await Peer.open(proxy.outbound)
    try:
        peer.request(1, "/grpc", method="POST", authority="mirrored", end_stream=False,
                     extra=[(b"content-type", b"application/grpc"), (b"te", b"trailers")])
        peer.send(DataFrame(1, data=b"\x00\x00\x00\x00\x02hi", flags=["END_STREAM"]))
        await peer.read_until(lambda: 1 in peer.ended)
    finally:
        peer.close()
    await eventually(lambda: len(upstream.requests()) == before + 2)
    copies = upstream.requests()[before:]
    assert sorted(dict(heads[0])[b":authority"] for heads, _ in copies) == [
        b"mirrored", b"mirrored-shadow"]
    assert [shapes for _, shapes in copies] == [["H", "D7+"]] * 2


async def test_a_body_held_for_the_window_ends_on_its_last_data_frame(
        proxy: ProxyProcess) -> None:
    """An answer held back by the client's flow-control window ends, once the window opens, on
    the DATA frame that carries the rest of it."""
    peer = await Peer.open(proxy.outbound, settings={SettingsFrame.INITIAL_WINDOW_SIZE: 16})
    peer.auto_window = False
    try:
        peer.request(1, "/big")
        await peer.read_until(lambda: peer.received == 16)
        assert peer.shapes[1] == ["H", "D16"]  # the window's worth, the rest held
        peer.send(WindowUpdateFrame(1, window_increment=1000))
        await peer.read_until(lambda: 1 in peer.ended)
        assert peer.shapes[1] == ["H", "D16", "D84+"]
    finally:
        peer.close()


async def test_an_answer_of_the_proxy_ends_on_its_data_frame(proxy: ProxyProcess) -> None:
    """A local answer (404 no_route) is a HEADERS frame and one DATA frame that ends it."""
    peer = await Peer.open(proxy.outbound)
    try:
        peer.request(1, "/", authority="nowhere")
        status, body = await peer.response(1)
    finally:
        peer.close()
    assert status == 404 and peer.shapes[1] == ["H", f"D{len(body)}+"]


@pytest.mark.parametrize(("path", "body"), [("/length", b"hello"), ("/chunked", b"abcdef")])
async def test_an_http1_answer_ends_on_its_last_data_frame(
        proxy: ProxyProcess, http1_app: RawBackend, path: str, body: bytes) -> None:
    """An HTTP/1.1 app's answer, read in one piece, ends the client's stream on its last DATA
    frame; a chunked answer's trailers are dropped (as Envoy's HTTP/1 codec does by default)."""
    peer = await Peer.open(proxy.outbound)
    try:
        peer.request(1, path, authority=f"h1.example:{http1_app.port}")
        assert await peer.response(1) == (200, body)
    finally:
        peer.close()
    shapes = peer.shapes[1]
    assert shapes[0] == "H" and all(s[0] == "D" for s in shapes[1:]), shapes
    assert shapes[-1].endswith("+") and shapes[-1] != "D0+", shapes
    assert len(peer.heads[1]) == 1  # no trailers


# --- content-length against the DATA frames (RFC 9113 8.1.1) ---------------------------------
def _post(peer: Peer, method: str, authority: str, length: int, end: bool) -> None:
    peer.request(1, "/cl", method=method, authority=authority, end_stream=end,
                 extra=[(b"content-length", b"%d" % length)])


MISMATCHES: dict[str, Callable[[Peer, str], None]] = {
    # a body announced, none sent: the HEADERS frame ends the stream
    "headers_end": lambda p, a: _post(p, "POST", a, 10, True),
    "head_headers_end": lambda p, a: _post(p, "HEAD", a, 10, True),
    # fewer bytes than announced, then trailers end the stream
    "trailers_end": lambda p, a: (_post(p, "POST", a, 10, False),
                                  p.send(DataFrame(1, data=b"abc")),
                                  p.trailers(1, [(b"x-sum", b"1")])),
    # (DATA frames that end the stream short or run past it: h2's own check)
    "data_short": lambda p, a: (_post(p, "POST", a, 10, False),
                                p.send(DataFrame(1, data=b"abc", flags=["END_STREAM"]))),
    "data_long": lambda p, a: (_post(p, "POST", a, 3, False),
                               p.send(DataFrame(1, data=b"abcdef", flags=["END_STREAM"]))),
}


@pytest.mark.parametrize("case", list(MISMATCHES))
async def test_a_body_not_matching_its_content_length_is_refused(
        proxy: ProxyProcess, http1_app: RawBackend, case: str) -> None:
    """A request whose DATA frames do not add up to its content-length is malformed: refused
    on its stream alone (a 400 when the client ended it on its HEADERS or trailers, else
    RST_STREAM PROTOCOL_ERROR), and the HTTP/1.1 app never gets it whole: forwarded, it would
    read its connection's next request as this one's body. The same connection goes on."""
    seen = len(http1_app.requests)
    authority = f"h1.example:{http1_app.port}"
    peer = await Peer.open(proxy.outbound)
    try:
        MISMATCHES[case](peer, authority)
        await peer.read_until(lambda: peer.finished(1) or peer.goaway is not None or peer.eof)
        if case.startswith("data_"):
            assert peer.resets.get(1) == ErrorCodes.PROTOCOL_ERROR and peer.status(1) is None
        else:
            assert peer.status(1) == 400
        if case == "head_headers_end":
            assert peer.shapes[1] == ["H+"]  # an answer to HEAD has no body
        assert http1_app.requests[seen:] == []
        peer.request(3, "/after", authority=authority)
        assert (await peer.response(3))[0] == 200
        assert peer.goaway is None
    finally:
        peer.close()
    assert [r.target for r in http1_app.requests[seen:]] == ["/after"]


async def test_empty_data_frames_do_not_end_a_chunked_body_early(
        proxy: ProxyProcess, http1_app: RawBackend) -> None:
    """Empty DATA frames (legal, and what curl ends an upload of unknown length with) are no
    chunk on the way to an HTTP/1.1 app: chunked, an empty one would be the last-chunk marker,
    ending the body early and leaving the rest to be read as the connection's next request."""
    seen = len(http1_app.requests)
    peer = await Peer.open(proxy.outbound)
    try:
        peer.request(1, "/upload", method="POST", authority=f"h1.example:{http1_app.port}",
                     end_stream=False)
        peer.send(DataFrame(1, data=b"abc"), DataFrame(1, data=b""), DataFrame(1, data=b"def"),
                  DataFrame(1, data=b"", flags=["END_STREAM"]))
        assert (await peer.response(1))[0] == 200
        peer.request(3, "/next", authority=f"h1.example:{http1_app.port}")
        assert (await peer.response(3))[0] == 200
    finally:
        peer.close()
    assert [(r.first, r.body) for r in http1_app.requests[seen:]] == [
        ("POST /upload HTTP/1.1", b"abcdef"), ("GET /next HTTP/1.1", b"")]


# --- malformed requests: stream errors, not connection errors (RFC 9113 8.1.1) --------------
def _head(*extra: tuple[bytes, bytes], path: bytes = b"/") -> Headers:
    return [(b":method", b"POST"), (b":scheme", b"http"), (b":path", path),
            (b":authority", b"echo"), *extra]


# A request marked `x-bad: 1`, malformed in its header block (proxy.h2headers, h2's own
# content-length check) or after it (its DATA against its content-length, its trailers).
BAD_HEADS: dict[str, Headers] = {
    "uppercase_name": _head((b"X-Upper", b"1")),
    "connection": _head((b"connection", b"close")),
    "transfer_encoding": _head((b"transfer-encoding", b"chunked")),
    "te_gzip": _head((b"te", b"gzip")),
    "crlf_value": _head((b"x-a", b"1\r\nx-injected: 1")),
    "nul_value": _head((b"x-a", b"1\x002")),
    "leading_space": _head((b"x-a", b" 1")),
    "space_in_name": _head((b"x a", b"1")),
    "duplicate_path": _head((b":path", b"/again")),
    "unknown_pseudo": _head((b":foo", b"1")),
    "pseudo_after_regular": [(b":method", b"GET"), (b":scheme", b"http"), (b"x-a", b"1"),
                             (b":path", b"/"), (b":authority", b"echo")],
    "no_path": [(b":method", b"GET"), (b":scheme", b"http"), (b":authority", b"echo")],
    "empty_path": _head(path=b""),
    "no_authority": [(b":method", b"GET"), (b":scheme", b"http"), (b":path", b"/")],
    "no_authority_head": [(b":method", b"HEAD"), (b":scheme", b"http"), (b":path", b"/")],
    "host_differs": _head((b"host", b"other")),
    "length_not_a_number": _head((b"content-length", b"ten")),
    "two_lengths": _head((b"content-length", b"3"), (b"content-length", b"4")),
    # a response pseudo-header in a request (RFC 9113 8.3): h2 reads a block whose first
    # `:status` is 1xx as an interim response, which a server's stream cannot take
    "status_1xx_first": [(b":status", b"100"), *_head()],
    "status_1xx_after_pseudo": _head((b":status", b"103")),
    "status_final": _head((b":status", b"200")),
    "status_bare_1": [(b":status", b"1"), *_head()],
    "connect_without_authority": [(b":method", b"CONNECT")],
    "connect_with_path": [(b":method", b"CONNECT"), (b":authority", b"echo:443"),
                          (b":path", b"/")],
    "connect_with_scheme": [(b":method", b"CONNECT"), (b":authority", b"echo:443"),
                            (b":scheme", b"http")],
}
BAD_AFTER_HEAD: dict[str, Callable[[Peer, int], None]] = {
    "data_past_length": lambda p, sid: (
        p.request(sid, "/", method="POST", end_stream=False,
                  extra=[(b"content-length", b"3"), (b"x-bad", b"1")]),
        p.send(DataFrame(sid, data=b"abcdef"))),
    "data_short_of_length": lambda p, sid: (
        p.request(sid, "/", method="POST", end_stream=False,
                  extra=[(b"content-length", b"10"), (b"x-bad", b"1")]),
        p.send(DataFrame(sid, data=b"abc", flags=["END_STREAM"]))),
    "trailers_not_ending": lambda p, sid: (
        p.request(sid, "/", method="POST", end_stream=False, extra=[(b"x-bad", b"1")]),
        p.send(DataFrame(sid, data=b"abc"),
               HeadersFrame(sid, data=p.encoder.encode([(b"x-sum", b"1")]),
                            flags=["END_HEADERS"]))),
    "pseudo_in_trailers": lambda p, sid: (
        p.request(sid, "/", method="POST", end_stream=False, extra=[(b"x-bad", b"1")]),
        p.send(DataFrame(sid, data=b"abc")), p.trailers(sid, [(b":path", b"/x")])),
    # a `:status` in trailers: 1xx with or without END_STREAM, and final
    "status_1xx_in_trailers": lambda p, sid: (
        p.request(sid, "/", method="POST", end_stream=False, extra=[(b"x-bad", b"1")]),
        p.send(DataFrame(sid, data=b"abc"),
               HeadersFrame(sid, data=p.encoder.encode([(b":status", b"100")]),
                            flags=["END_HEADERS"]))),
    "status_1xx_trailers_ending": lambda p, sid: (
        p.request(sid, "/", method="POST", end_stream=False, extra=[(b"x-bad", b"1")]),
        p.send(DataFrame(sid, data=b"abc")), p.trailers(sid, [(b":status", b"100")])),
    "status_in_trailers": lambda p, sid: (
        p.request(sid, "/", method="POST", end_stream=False, extra=[(b"x-bad", b"1")]),
        p.send(DataFrame(sid, data=b"abc")), p.trailers(sid, [(b":status", b"200")])),
}
# Malformed in the HEADERS frame that opens the stream, but not ending it (a body would follow)
BAD_OPENING: dict[str, Callable[[Peer, int], None]] = {
    "status_1xx_not_ending": lambda p, sid: p.send(HeadersFrame(
        sid, data=p.encoder.encode([(b":status", b"101"), *_head(), (b"x-bad", b"1")]),
        flags=["END_HEADERS"])),
    "status_final_not_ending": lambda p, sid: p.request(
        sid, pseudo=_head((b":status", b"204"), (b"x-bad", b"1")), end_stream=False),
}
# Decoded and checked whole but naming no authority, or two: answered 400, as nginx does
ANSWERED = {"no_authority", "no_authority_head", "host_differs", "connect_without_authority"}
MALFORMED: dict[str, Callable[[Peer, int], None]] = {
    **{name: (lambda p, sid, head=head: p.request(sid, pseudo=[*head, (b"x-bad", b"1")]))
       for name, head in BAD_HEADS.items()},
    **BAD_OPENING,
    **BAD_AFTER_HEAD,
}


@pytest.mark.parametrize("case", list(MALFORMED))
async def test_a_malformed_request_resets_its_stream_alone(
        proxy: ProxyProcess, upstream: H2Upstream, case: str) -> None:
    """A malformed request gets RST_STREAM PROTOCOL_ERROR on its own stream (no GOAWAY), or
    `400 bad_request` if it names no authority or two: a request opened before it and still
    sending its body, and one opened after it, both get 200 on the same connection; the one
    after reuses, as indexed fields, entries the malformed block added to the HPACK table (so
    the proxy decoded it); no upstream gets it whole; it is counted as
    `downstream_protocol_error` (or `bad_request`)."""
    before = len(upstream.requests())
    flag = "bad_request" if case in ANSWERED else "downstream_protocol_error"
    counted = await _count(proxy, "ami_requests_total", response_flags=flag)
    # every request counted so far is logged (the log is written in batches after the count):
    # the next line with this word is this case's own
    await eventually(lambda: len(logged_with(proxy, flag)) == counted,
                     what="the earlier cases' lines logged")
    logged = len(logged_with(proxy, flag))
    peer = await Peer.open(proxy.outbound)
    try:
        peer.request(1, "/before", method="POST", end_stream=False)
        MALFORMED[case](peer, 3)
        await peer.read_until(lambda: peer.finished(3) or peer.goaway is not None)
        assert peer.goaway is None
        if case in ANSWERED:
            assert peer.status(3) == 400 and 3 in peer.ended
            assert peer.header(3, b"x-ami-reason") == b"bad_request"
            assert peer.shapes[3][0] == ("H+" if case == "no_authority_head" else "H")
        else:
            assert peer.resets.get(3) == ErrorCodes.PROTOCOL_ERROR and peer.status(3) is None
        # `x-bad: 1` is in the encoder's table now: sent again, it is an index into it
        peer.request(5, "/after", extra=[(b"x-bad", b"1"), (b"x-seq", b"5")])
        peer.send(DataFrame(1, data=b"body", flags=["END_STREAM"]))
        assert (await peer.response(5))[0] == 200
        assert (await peer.response(1))[0] == 200
        assert peer.goaway is None
    finally:
        peer.close()
    requests = upstream.requests()[before:]
    paths = {dict(heads[0])[b":path"]: (heads[0], shapes) for heads, shapes in requests}
    assert {b"/before", b"/after"} <= set(paths)
    assert (b"x-bad", b"1") in paths[b"/after"][0] and (b"x-seq", b"5") in paths[b"/after"][0]
    # the malformed one never reached an upstream, or (malformed after its head) never whole
    assert all(not shapes[-1].endswith("+") for path, (_, shapes) in paths.items()
               if path not in (b"/before", b"/after"))
    await eventually_async(lambda: _count(proxy, "ami_requests_total", response_flags=flag),
                           counted + 1)
    await eventually(lambda: len(logged_with(proxy, flag)) == logged + 1)
    if case in BAD_HEADS or case in BAD_OPENING:  # refused from its head: no fields logged
        assert logged_with(proxy, flag)[-1]["path"] is None
    else:
        assert logged_with(proxy, flag)[-1]["path"] == "/"


@pytest.mark.parametrize("status", [b"100", b"200"])
async def test_a_late_status_block_on_a_reset_stream_spares_the_connection(
        proxy: ProxyProcess, status: bytes) -> None:
    """A HEADERS frame carrying `:status` on a stream the proxy has reset (a late frame, RFC
    9113 5.1) costs nothing but that stream (`RST_STREAM STREAM_CLOSED` at most), whether h2
    reads it as an interim response (1xx) or not: the connection serves on."""
    peer = await Peer.open(proxy.outbound)
    try:
        peer.request(1, extra=[(b"X-Upper", b"1")], end_stream=False)
        await peer.read_until(lambda: peer.finished(1))
        assert peer.resets.get(1) == ErrorCodes.PROTOCOL_ERROR
        peer.send(HeadersFrame(1, data=peer.encoder.encode([(b":status", status)]),
                               flags=["END_HEADERS"]))
        peer.request(3, "/after")
        assert (await peer.response(3))[0] == 200
        assert peer.goaway is None and not peer.eof
    finally:
        peer.close()


# Refused from the head by the proxy itself (proxy.h2downstream's _refuse): `405` from the
# request's head, `400` from a head h2headers found naming no authority
REFUSALS: dict[str, tuple[Headers, int, bytes]] = {
    "connect": ([(b":method", b"CONNECT"), (b":authority", b"echo:443")], 405,
                b"method_not_allowed"),
    "no_authority": ([(b":method", b"GET"), (b":scheme", b"http"), (b":path", b"/")], 400,
                     b"bad_request"),
}


@pytest.mark.parametrize("ended", [True, False], ids=["request_ended", "request_sending"])
@pytest.mark.parametrize("window", [0, 5])
@pytest.mark.parametrize("case", list(REFUSALS))
async def test_a_refusal_held_for_the_window_completes_once_it_opens(
        proxy: ProxyProcess, case: str, window: int, ended: bool) -> None:
    """The proxy's own answer to a refused head (`405`, `400`) waits for a client whose stream
    window (SETTINGS_INITIAL_WINDOW_SIZE 0, or 5 bytes) holds back its body: what fits goes,
    and once the client opens the window (WINDOW_UPDATE) the rest follows, ending the stream
    on its last DATA frame; a client still sending its request is then told to stop
    (RST_STREAM NO_ERROR). The connection serves on."""
    head, status, reason = REFUSALS[case]
    peer = await Peer.open(proxy.outbound, settings={SettingsFrame.INITIAL_WINDOW_SIZE: window})
    peer.auto_window = False
    try:
        peer.request(1, pseudo=head, end_stream=ended)
        await peer.read_until(lambda: 1 in peer.heads)
        peer.send(PingFrame(0, opaque_data=b"heldback"))  # answered after all that could go
        await peer.read_until(lambda: b"heldback" in peer.pings_acked)
        assert peer.status(1) == status and peer.header(1, b"x-ami-reason") == reason
        assert peer.received == window and not peer.finished(1)
        peer.send(WindowUpdateFrame(1, window_increment=1 << 16))
        await peer.read_until(lambda: 1 in peer.ended)
        body = bytes(peer.data[1])
        assert body.startswith(reason + b": ") and body.endswith(b"\n")
        assert len(body) == int(peer.header(1, b"content-length") or 0)
        assert peer.shapes[1][-1].endswith("+")  # ended on its last DATA frame
        if not ended:
            await peer.read_until(lambda: 1 in peer.resets)
            assert peer.resets[1] == ErrorCodes.NO_ERROR
        peer.auto_window = True
        peer.request(3, "/after")
        peer.send(WindowUpdateFrame(3, window_increment=1 << 16))
        assert (await peer.response(3))[0] == 200
        assert peer.goaway is None
        if ended:
            assert 1 not in peer.resets
    finally:
        peer.close()


def logged_with(proxy: ProxyProcess, reason: str) -> list[dict[str, Any]]:
    """The access-log lines with this reason word."""
    lines = [json.loads(x) for x in proxy.stdout().splitlines() if x.startswith("{")]
    return [line for line in lines if line.get("reason") == reason]


async def _count(proxy: ProxyProcess, name: str, **labels: str) -> float:
    return metric_value(await proxy.metrics(), name, **labels)


async def eventually_async(read: Callable[[], Any], expected: float,
                           timeout: float = 10.0) -> None:
    """Until the awaitable `read()` gives `expected` (a deadline, not a sleep as a wait)."""
    loop = asyncio.get_running_loop()
    end = loop.time() + timeout
    while (value := await read()) != expected:
        assert loop.time() < end, f"{value} != {expected}"
        await asyncio.sleep(0.05)


async def test_malformed_streams_past_the_budget_close_the_connection(
        proxy: ProxyProcess) -> None:
    """A client that sends nothing but malformed requests is cut off at the budget: after
    MAX_MALFORMED_STREAMS - 1 of them it is still served, the next one gets GOAWAY
    ENHANCE_YOUR_CALM and the close, counted as a flood."""
    closes = await _count(proxy, "ami_http2_flood_closes_total", kind="malformed_streams")
    peer = await Peer.open(proxy.outbound)
    try:
        sid = 1
        for _ in range(MAX_MALFORMED_STREAMS - 1):
            peer.request(sid, extra=[(b"X-Upper", b"1")])
            sid += 2
        peer.request(sid, "/ok")
        assert (await peer.response(sid))[0] == 200
        assert peer.goaway is None and len(peer.resets) == MAX_MALFORMED_STREAMS - 1
        peer.request(sid + 2, extra=[(b"X-Upper", b"1")])
        assert await peer.closed()
        assert peer.goaway is not None
        assert peer.goaway.error_code == ErrorCodes.ENHANCE_YOUR_CALM
    finally:
        peer.close()
    await eventually_async(lambda: _count(proxy, "ami_http2_flood_closes_total",
                                          kind="malformed_streams"), closes + 1)


async def test_a_header_block_hpack_cannot_decode_ends_the_connection(
        proxy: ProxyProcess) -> None:
    """A header block HPACK cannot decode (an index past both tables) is still a connection
    error, of type COMPRESSION_ERROR (RFC 9113 4.3): the table may be out of step."""
    peer = await Peer.open(proxy.outbound)
    try:
        peer.request(1, "/ok")
        assert (await peer.response(1))[0] == 200
        peer.send(HeadersFrame(3, data=b"\xff\xff\x7f", flags=["END_HEADERS", "END_STREAM"]))
        assert await peer.closed()
        assert peer.goaway is not None
        assert peer.goaway.error_code == ErrorCodes.COMPRESSION_ERROR
    finally:
        peer.close()
