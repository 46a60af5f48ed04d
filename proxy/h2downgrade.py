"""An HTTP/2 request sent to an HTTP/1.1 upstream: the downgrade on the last hop.

`H2Exchange` binds these as its methods for an attempt whose endpoint speaks HTTP/1.1 only
(`EndpointPool.h1_only`: declared `http1`, or learned). The upstream side is the HTTP/1.1
machinery of `Exchange` and `UpstreamConnection` (pool, keep-alive, retries, timeouts,
outlier detection); here only the translation: the request head (pseudo-headers to a request
line and Host, cookies joined, `te` dropped, a body of unknown length chunked), and the
response head and body as HTTP/2 frames. Request trailers cannot be carried (dropped, as
Envoy's HTTP/1 codec does by default); a gRPC call, which needs them, is refused.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from typing import TYPE_CHECKING

from proxy.exchange import _CRLF, _LAST_CHUNK
from proxy.exchangepolicy import MAX_REPLAY as _MAX_REPLAY
from proxy.responsehead import (
    FRAME_CHUNKED,
    FRAME_CLOSE,
    FRAME_LENGTH,
    FRAME_NONE,
    UpstreamProtocolError,
)

if TYPE_CHECKING:
    from proxy.h2exchange import H2Exchange
    from proxy.h2flow import Headers
    from proxy.pools import EndpointPool
    from proxy.upstream import UpstreamConnection

# What an HTTP/1.1 request line can carry: a method that is a token, a target of visible
# ASCII (HTTP/2 lets a space or a DEL through in :path and :method; on a request line they
# would let the client write a line of its choosing).
_TOKEN = re.compile(rb"[!#$%&'*+\-.^_`|~0-9A-Za-z]+")
_TARGET = re.compile(rb"[\x21-\x7e]+")
_PLAIN_CONNECTION = frozenset({b"keep-alive", b"close"})


def choose_upstream(ex: H2Exchange, pool: EndpointPool) -> bool:
    """HTTP/2 to `pool`, or HTTP/1.1 if it speaks only that; False when the request cannot go
    there and was answered (a gRPC call, or a request line HTTP/1.1 cannot carry)."""
    if not pool.h1_only:
        ex.upstream_h2 = True
        return True
    if ex.grpc or not _TOKEN.fullmatch(ex.method) or not _TARGET.fullmatch(ex.target):
        ex._release_pool()
        ex.reply("protocol_mismatch" if ex.grpc else "bad_request")
        return False
    ex.upstream_h2 = False
    # Framed by its Content-Length if it has one, else chunked (unless it has no body at all).
    ex.chunk_h1 = not (ex.request_done and ex.bytes_in == 0) and ex.header(
        "content-length") is None
    return True


def h1_request_head(ex: H2Exchange, pool: EndpointPool) -> bytes:
    """The request line and headers for the HTTP/1.1 upstream."""
    parts = [ex.method + b" " + ex.target + b" HTTP/1.1\r\n"]
    headers, tail = ex.headers, ex.head_tail  # (`host` first: the authority)
    decision = ex.decision
    if decision is not None and decision.request_headers is not None:
        headers = decision.request_headers.edit_pairs(headers)
        tail = decision.request_headers.edit_tail(tail)
    _field_lines(headers, parts)
    parts.extend(tail)
    if ex.chunk_h1:
        parts.append(b"transfer-encoding: chunked\r\n")
    if pool.tls is not None:
        parts.append(ex.downstream.listener.peer_line)  # see Exchange._upstream_head
    parts.append(_CRLF)
    return b"".join(parts)


def _field_lines(headers: Iterable[tuple[bytes, bytes]], parts: list[bytes]) -> None:
    """HTTP/2 fields as HTTP/1.1 header lines, appended to ``parts``."""
    cookies: list[bytes] = []
    for name, value in headers:
        if name == b"cookie":
            cookies.append(value)  # HTTP/2 may split it; HTTP/1.1 wants one (RFC 9113 8.2.3)
        elif name != b"te":  # `trailers`: hop-by-hop, and no trailers go over this hop
            parts.append(name + b": " + value + _CRLF)
    if cookies:
        parts.append(b"cookie: " + b"; ".join(cookies) + _CRLF)


def copy_head(headers: Headers, chunked: bool) -> bytes | None:
    """A request's upstream fields as `H2Exchange._upstream_headers` makes them (the four
    pseudo-headers first) as an HTTP/1.1 head, for a mirrored copy to an endpoint that speaks
    HTTP/1.1 only; None when a request line cannot carry them."""
    method, path = headers[0][1], headers[3][1]
    if not _TOKEN.fullmatch(method) or not _TARGET.fullmatch(path):
        return None
    parts = [method + b" " + path + b" HTTP/1.1\r\nhost: " + headers[2][1] + _CRLF]
    _field_lines(headers[4:], parts)
    if chunked:
        parts.append(b"transfer-encoding: chunked\r\n")
    parts.append(_CRLF)
    return b"".join(parts)


def send_h1(ex: H2Exchange, conn: UpstreamConnection) -> None:
    """As Exchange._send_on, the body held so far framed for HTTP/1.1."""
    ex.conn = conn
    conn.send(ex, h1_request_head(ex, conn.pool))
    held = ex._replay or ex._body_buffer
    if held:
        conn.writelines(chunks(held) if ex.chunk_h1 else held)
        if ex._replay and ex.bytes_in > _MAX_REPLAY:
            ex._replay = None  # sent whole once more; too large for another retry
    if ex._body_buffer is not None:
        ex._body_buffer = None
        ex._buffered = 0
        ex.downstream.pause_for_buffer(False)
    if ex.request_done and ex.chunk_h1:
        conn.write(_LAST_CHUNK)


def chunks(parts: list[bytes]) -> list[bytes]:
    """`parts` as chunks; an empty one (an empty DATA frame) is none: it would be the
    last-chunk marker, ending the body early (the rest read as the next request)."""
    out: list[bytes] = []
    for part in parts:
        if part:
            out.extend((b"%x\r\n" % len(part), part, _CRLF))
    return out


def h1_request_chunk(ex: H2Exchange, chunk: bytes) -> None:
    """A chunk of a body of unknown length, on its way to the HTTP/1.1 upstream (the replay
    and the mirror keep it as it came)."""
    if not chunk:
        return  # an empty DATA frame: no chunk (see chunks)
    conn = ex.conn
    assert conn is not None
    ex.bytes_in += len(chunk)
    if ex.mirror is not None:
        ex.mirror.body(chunk, False)
    replay = ex._replay
    if replay is not None:
        if ex.bytes_in > _MAX_REPLAY:
            ex._replay = None  # too large to keep: not retried
        else:
            replay.append(chunk)
    conn.writelines((b"%x\r\n" % len(chunk), chunk, _CRLF))


def h1_response_head(ex: H2Exchange, conn: UpstreamConnection, status: int) -> bool:
    """The HTTP/1.1 response head as HTTP/2 headers, held until the end of this read (as
    Exchange holds its head): a malformed body in the same read still gets a clean 502."""
    head_only = ex.method == b"HEAD" or status in (204, 304)
    out: Headers = [(b":status", b"%d" % status)]
    drop: frozenset[bytes] | set[bytes] = frozenset()
    connection = conn.connection_header
    if connection is not None and (connection.find(b",") >= 0
                                   or connection.strip().lower() not in _PLAIN_CONNECTION):
        drop = {t.strip().lower() for t in connection.split(b",")}  # hop-by-hop too
    for name, value in conn.header_pairs():
        name = name.lower()
        if name not in drop:
            out.append((name, value.strip()))
    edits = ex.response_edits
    if edits is not None:
        out = [out[0], *((n.lower(), v) for n, v in edits.edit_pairs(out[1:]))]
    length = conn.content_length
    if length is not None and not conn.transfer_encoding and status not in (204, 304):
        out.append((b"content-length", length.strip()))
    if sum(len(n) + len(v) + 4 for n, v in out) > conn.pool.max_head_bytes:
        # As Exchange.upstream_headers for an HTTP/1.1 client: a complete head over the limit
        raise UpstreamProtocolError("response head over the size limit")
    ex._frame = (FRAME_NONE if head_only else FRAME_CHUNKED if conn.transfer_encoding
                 else FRAME_LENGTH if length is not None else FRAME_CLOSE)
    ex.response_started = True
    ex.held_head = out
    ex._out = []
    return ex.method == b"HEAD"


def h1_response_body(ex: H2Exchange, chunk: bytes) -> None:
    """Held until the end of the read (h1_flush): if the answer ends in the same read, its
    last DATA frame carries END_STREAM, with no empty DATA frame after it."""
    ex.bytes_out += len(chunk)
    out = ex._out
    if out is not None:
        out.append(chunk)
    else:
        ex._out = [chunk]


def h1_flush(ex: H2Exchange, end: bool = False) -> None:
    """Send what this read produced (called after each upstream read); with `end`, the
    stream ends with it."""
    head = ex.held_head
    if head is not None:
        ex.held_head = None
        ex.downstream.send_headers(head, False)
    out = ex._out
    ex._out = None
    if not out:
        if end:
            ex.downstream.end()  # (the body went out in earlier reads)
        return
    last = len(out) - 1
    for i, chunk in enumerate(out):
        ex.downstream.send_data(chunk, end and i == last)


def h1_response_complete(ex: H2Exchange, conn: UpstreamConnection) -> None:
    """The response ended: end the stream, and the connection goes back to the pool. (A
    chunked answer's trailers are dropped, as Envoy's HTTP/1 codec does by default.)"""
    head = ex.held_head
    if head is not None and not ex._out:
        ex.held_head = ex._out = None
        ex.downstream.send_headers(head, True)  # the whole answer in one HEADERS frame
    else:
        h1_flush(ex, True)
    ex.conn = None
    if ex.upstream_keep_alive and ex.request_done and ex.pool is not None:
        if ex._upstream_paused:
            # (only the client's window was full, and the answer is all in: the connection
            # may read again, for its next request)
            ex._upstream_paused = False
            conn.pause_reading(False)
        ex.pool.release(conn)
    else:
        conn.exchange = None
        conn.close()
    ex._release_pool()
    ex.finish()

