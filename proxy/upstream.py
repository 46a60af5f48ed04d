"""Upstream HTTP/1.1 connections: response parsing and relaying to the exchange.

A connection carries one exchange at a time (no upstream pipelining); its endpoint's
`proxy.pools.EndpointPool` opens it and keeps it between requests.
"""

from __future__ import annotations

import asyncio
import logging
import socket
from typing import TYPE_CHECKING, Any, Protocol

import httptools

from proxy import recvbuf
from proxy.origination import log_ended
from proxy.responsehead import UpstreamProtocolError

log = logging.getLogger("ami.proxy")

if TYPE_CHECKING:
    from proxy.pools import EndpointPool


# Response header names handled apart from the pass-through lines (lower-case).
_R_HOP, _R_LENGTH, _R_TE, _R_CONNECTION, _R_UPGRADE = range(5)
_RESPONSE_SPECIAL: dict[bytes, int] = {
    b"content-length": _R_LENGTH,
    b"transfer-encoding": _R_TE,
    b"connection": _R_CONNECTION,
    b"upgrade": _R_UPGRADE,
    b"keep-alive": _R_HOP,
    b"proxy-connection": _R_HOP,
    b"te": _R_HOP,
    b"trailer": _R_HOP,
    b"proxy-authenticate": _R_HOP,
}



class ResponseSink(Protocol):
    """What a connection hands the response to: the request's Exchange, or a mirror's copy
    (proxy.mirror.MirrorRequest). Typed, so that mypy holds every sink to all of it."""

    interim: bool  # a 1xx head came: the final response is still to come
    response_started: bool
    status: int
    upstream_keep_alive: bool

    def upstream_headers(self, conn: UpstreamConnection, status: int) -> bool: ...
    def upstream_body(self, chunk: bytes) -> None: ...
    def flush_out(self) -> None: ...
    def upstream_complete(self, conn: UpstreamConnection) -> None: ...
    def upstream_failed(self, conn: UpstreamConnection, reason: str) -> None: ...
    def upstream_lost(self, conn: UpstreamConnection) -> None: ...
    def upstream_upgraded(self, conn: UpstreamConnection, rest: bytes) -> None: ...
    def upstream_write_paused(self, paused: bool) -> None: ...


class SkipBody(Exception):
    """Raised from the parser callback to stop parsing after the head (HEAD responses)."""


class StrayBytes(Exception):
    """Raised from the parser callback when bytes follow the complete response in one read."""


class UpstreamConnection(asyncio.BaseProtocol):
    """One connection to an endpoint; parses responses and hands events to the exchange.

    Plain TCP; TLS connections are TlsUpstreamConnection (BaseProtocol, not Protocol, for the
    same reason as DownstreamProtocol).
    """

    __slots__ = (
        "_closed_by_us",
        "_detached",
        "_done",
        "_peek_sock",
        "_tunnel_eof",
        "closed",
        "connection_header",
        "content_length",
        "early",
        "exchange",
        "expired",
        "expiry",
        "head_bytes",
        "header_parts",
        "idle_since",
        "parser",
        "peer_identity",
        "pool",
        "requests",
        "transfer_encoding",
        "transport",
        "tunnel_peer",
        "upgrade_header",
    )

    def __init__(self, pool: EndpointPool) -> None:
        self.pool = pool
        self.transport: asyncio.Transport | None = None
        self.exchange: ResponseSink | None = None
        self.parser = httptools.HttpResponseParser(self)
        # The response head being parsed: each forwardable header as four parts (name, `: `,
        # value, CRLF) for the client head's join, framing apart.
        self.header_parts: list[bytes] = []
        self.content_length: bytes | None = None
        self.transfer_encoding = False
        self.connection_header: bytes | None = None
        self.upgrade_header: bytes | None = None
        self._peek_sock: socket.socket | None = None
        self.idle_since = 0.0
        self.requests = 0
        self.closed = False
        self.expired = False  # past the destination's maxConnectionDuration: no more requests
        self.expiry: asyncio.TimerHandle | None = None  # the timer that sets it
        self.tunnel_peer: Any = None  # downstream protocol once upgraded to a raw tunnel
        self.early: list[bytes] = []  # a tunnel server's bytes before the tunnel was joined
        self._tunnel_eof = False  # one end of the tunnel has half-closed (see half_close)
        self.peer_identity: str | None = None
        self._detached = False
        self._closed_by_us = False
        self._done = False  # the final response ended in the read being parsed
        self.head_bytes = 0  # bytes read before the final response head was complete

    # --- asyncio.Protocol -------------------------------------------------------------------
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]  # uvloop's TCPTransport
        sock = transport.get_extra_info("socket")
        if sock is not None and transport.get_extra_info("sslcontext") is None:
            try:
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
                # A dup of the fd lets us peek for a FIN before reusing the connection.
                self._peek_sock = socket.socket(fileno=socket.dup(sock.fileno()))
                self._peek_sock.setblocking(False)
            except OSError:
                self._peek_sock = None

    def data_received(self, data: bytes | memoryview) -> None:
        """Parse what arrived; ``data`` may be a view of the shared receive buffer."""
        if self.tunnel_peer is not None:
            self.tunnel_peer.tunnel_write(bytes(data))
            return
        ex = self.exchange
        if ex is None:
            if self.pool.tunnel and self.transport is not None:
                # A CONNECT tunnel's server speaking first (a banner), before the tunnel is
                # joined to its client: kept for it (start_tunnel), no more read till then.
                self.early.append(bytes(data))
                self.transport.pause_reading()
                return
            # Bytes on an idle connection: the server broke protocol; do not reuse it.
            self.close()
            return
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserUpgrade as upgrade:
            offset = upgrade.args[0]
            ex.upstream_upgraded(self, bytes(data[offset:]))
            return
        except httptools.HttpParserError as exc:
            self._parse_error(ex, exc)
            return
        if self._done:
            # Completed only now that the whole read is parsed: the connection may go back to
            # the pool, even to a pipelined request of the same client, at once.
            self._done = False
            if self.exchange is ex:
                ex.upstream_complete(self)
        else:
            ex.flush_out()
            if not ex.response_started and self.exchange is ex:
                # The head is still arriving (or 1xx ones keep coming): bounded like a
                # request's, whatever the upstream sends, so memory is too.
                self.head_bytes += len(data)
                if self.head_bytes > self.pool.max_head_bytes:
                    log.debug("response head from %s over %d bytes", self.pool.address,
                              self.pool.max_head_bytes)
                    ex.upstream_failed(self, "upstream_protocol_error")

    def _parse_error(self, ex: ResponseSink, exc: httptools.HttpParserError) -> None:
        # httptools wraps an exception raised in a callback in HttpParserCallbackError.
        cause = exc.__context__
        if isinstance(cause, SkipBody):
            self._reset_parser()
            ex.flush_out()
            ex.upstream_complete(self)
        elif isinstance(cause, StrayBytes) or self._done:
            # More bytes after the complete response, in the same read: the server broke
            # protocol (a body on a 204/304, a second, unrequested response...). The client
            # has its whole response; the connection is not reused, so the rest is parsed by
            # no one, and never taken for the answer to the next request.
            self._done = False
            ex.upstream_keep_alive = False
            if self.exchange is ex:
                ex.upstream_complete(self)
        else:
            if cause is not None and not isinstance(
                    cause, (httptools.HttpParserError, UpstreamProtocolError)):
                log.error("internal error while relaying a response", exc_info=cause)
            else:
                log.debug("malformed response from %s: %s", self.pool.address, cause or exc)
            ex.upstream_failed(self, "upstream_protocol_error")

    def eof_received(self) -> bool | None:
        peer = self.tunnel_peer
        if peer is not None:
            return self.half_close(peer.transport, from_client=False)
        if self.exchange is None:
            # The server closed an idle connection: it leaves the pool now, not at
            # connection_lost (called soon, but after the other reads of this wake-up), so a
            # request read in between is never written into this closing transport (where
            # nothing of it would go out, and a POST would then fail as upstream_reset).
            self._detach()
        return False  # close the transport; connection_lost does the rest of the accounting

    def half_close(self, client: asyncio.Transport | None, from_client: bool) -> bool:
        """A FIN from one end of this tunnel: pass it on and keep the other direction open, as
        TCP lets either end finish sending first (Envoy's tcp_proxy does the same). False, to
        close (and with it the other end), once both ends have finished, or when either side
        cannot half-close (TLS)."""
        own = self.transport
        if (self._tunnel_eof or own is None or client is None or not own.can_write_eof()
                or not client.can_write_eof()):
            return False
        self._tunnel_eof = True
        (own if from_client else client).write_eof()
        return True

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        # This protocol and its parser refer to each other, so only the cyclic GC frees them,
        # late for a long-lived connection; without this the transport - and over TLS its
        # 256 KiB buffer and OpenSSL state - would wait with them.
        self.transport = None
        self._detach()
        if self.tunnel_peer is not None:
            self.tunnel_peer.tunnel_closed()
            self.tunnel_peer = None
            return
        ex = self.exchange
        if ex is not None:
            self.exchange = None
            ex.upstream_lost(self)
        elif not self._closed_by_us and self.requests:
            self.pool.note_idle_close(self.idle_since)

    def pause_writing(self) -> None:
        if self.exchange is not None:
            self.exchange.upstream_write_paused(True)
        elif self.tunnel_peer is not None:
            self.tunnel_peer.pause(True)

    def resume_writing(self) -> None:
        if self.exchange is not None:
            self.exchange.upstream_write_paused(False)
        elif self.tunnel_peer is not None:
            self.tunnel_peer.pause(False)

    # --- httptools callbacks ----------------------------------------------------------------
    # No on_status (one callback less per response): the client gets the standard reason
    # phrase (responsehead.status_line).
    def on_message_begin(self) -> None:
        if self._done:
            raise StrayBytes  # this connection carries one exchange at a time: no one asked
        self.header_parts = []
        self.content_length = None
        self.transfer_encoding = False
        self.connection_header = None
        self.upgrade_header = None

    def on_header(self, name: bytes, value: bytes) -> None:
        kind = _RESPONSE_SPECIAL.get(name.lower())
        if kind is None:
            # Parts, not `name + b": " + value + b"\r\n"`: each `+` makes a bytes object
            self.header_parts.extend((name, b": ", value, b"\r\n"))
        elif kind == _R_LENGTH:
            self.content_length = value
        elif kind == _R_TE:
            if self.transfer_encoding or value.strip().lower() != b"chunked":
                # Another coding (gzip, chunked / chunked, gzip / gzip: read until close) would
                # be lost, since Transfer-Encoding is hop-by-hop here and the body re-chunked,
                # or end in a truncated message. Refused like the request side does (Envoy too).
                raise UpstreamProtocolError(b"transfer-encoding: " + value)
            self.transfer_encoding = True
        elif kind == _R_CONNECTION:
            self.connection_header = value
        elif kind == _R_UPGRADE:
            self.upgrade_header = value
        # _R_HOP: hop-by-hop, never forwarded

    def on_headers_complete(self) -> None:
        ex = self.exchange
        assert ex is not None
        status = self.parser.get_status_code()
        if ex.upstream_headers(self, status):
            raise SkipBody  # HEAD: no body follows whatever Content-Length says

    def on_body(self, body: bytes) -> None:
        ex = self.exchange
        if ex is not None:
            ex.upstream_body(body)

    def on_message_complete(self) -> None:
        ex = self.exchange
        if ex is None:
            return
        if ex.interim:
            ex.interim = False
            return  # a 1xx interim response ended; the final one follows
        if ex.status == 101:
            # An accepted upgrade (upstream_headers refuses any other 101): llhttp "completes"
            # the message, then feed_data raises the upgrade.
            return
        self._done = True  # data_received completes the exchange once the read is parsed

    def header_lines(self) -> list[bytes]:
        """The forwardable headers as whole lines (for the rarer edits and filters)."""
        parts = self.header_parts
        return [b"".join(parts[i:i + 4]) for i in range(0, len(parts), 4)]

    def header_pairs(self) -> list[tuple[bytes, bytes]]:
        """The forwardable headers as (name, value) pairs."""
        parts = self.header_parts
        return [(parts[i], parts[i + 2]) for i in range(0, len(parts), 4)]

    # --- used by the exchange and the pool --------------------------------------------------
    def send(self, exchange: ResponseSink, head: bytes) -> None:
        self.exchange = exchange
        self.requests += 1
        self.head_bytes = 0
        assert self.transport is not None
        self.transport.write(head)

    def write(self, data: bytes) -> None:
        if self.transport is not None:  # None once lost: the bytes go nowhere, like a closed socket
            self.transport.write(data)

    def writelines(self, parts: list[bytes] | tuple[bytes, ...]) -> None:
        if self.transport is not None:
            self.transport.writelines(parts)

    def pause_reading(self, paused: bool) -> None:
        t = self.transport
        if t is None or t.is_closing():
            return
        if paused:
            t.pause_reading()
        else:
            t.resume_reading()

    def looks_alive(self) -> bool:
        """False if the peer already sent FIN or RST while the connection sat in the pool."""
        t = self.transport
        if self.closed or t is None or t.is_closing():
            return False
        sock = self._peek_sock
        if sock is None:
            return True
        try:
            data = sock.recv(1, socket.MSG_PEEK | socket.MSG_DONTWAIT)
        except BlockingIOError:
            return True
        except OSError:
            return False
        # b"" is a FIN; unsolicited bytes on an idle HTTP connection are a protocol error.
        del data
        return False

    def _reset_parser(self) -> None:
        self.parser = httptools.HttpResponseParser(self)

    def _detach(self) -> None:
        if not self._detached:
            self._detached = True
            self._close_peek()  # the dup must go first or the socket stays open
            self.pool.forget(self)

    def _close_peek(self) -> None:
        if self._peek_sock is not None:
            self._peek_sock.close()
            self._peek_sock = None

    def close(self) -> None:
        self._closed_by_us = True
        if not self.closed:
            self.closed = True
            self._detach()
            if self.transport is not None:
                self.transport.close()

    def expire(self) -> None:
        """The destination's maxConnectionDuration is up: closed now if idle, else once its
        request ends (PoolRegistry.release)."""
        self.expired = True
        if self.exchange is None and self.tunnel_peer is None:
            self.close()

    def abort(self) -> None:
        self._closed_by_us = True
        self.exchange = None
        if not self.closed:
            self.closed = True
            self._detach()
            if self.transport is not None:
                self.transport.abort()


class TlsUpstreamConnection(UpstreamConnection, recvbuf.BufferedReads):
    """A connection to an endpoint over mTLS (or TLS this sidecar originates to an outside
    host): uvloop decrypts into the shared buffer."""

    __slots__ = ()

    def connection_lost(self, exc: Exception | None) -> None:
        origination = self.pool.origination
        if origination is not None and (exc is not None or self.exchange is not None):
            log_ended(origination, self.pool.address, exc)
        super().connection_lost(exc)
