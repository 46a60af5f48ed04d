"""Upstream HTTP/2 connections: many requests at once on one connection to an endpoint.

Used for requests that arrived over HTTP/2 (gRPC above all), unless the endpoint speaks
HTTP/1.1 only (`proxy.h2downgrade`). Between sidecars the connection is mTLS with ALPN `h2`;
to the local app it is h2c (prior knowledge); to an outside host's HTTP2/GRPC port h2c, or
TLS with ALPN `h2` when the sidecar originates it (`proxy.origination`). The endpoint's
`EndpointPool` keeps these connections apart from its HTTP/1.1 ones and opens another when
the server's SETTINGS_MAX_CONCURRENT_STREAMS is reached.
"""

from __future__ import annotations

import asyncio
import logging
from typing import TYPE_CHECKING, Any

import h2.events as ev
from h2.connection import H2Connection
from h2.errors import ErrorCodes
from h2.exceptions import H2Error
from h2.settings import SettingCodes, Settings

from proxy import h2flow, h2guard, recvbuf
from proxy.h2flow import Headers, StreamOut
from proxy.h2malformed import MessageMalformed
from proxy.origination import log_ended

if TYPE_CHECKING:
    from proxy.h2exchange import H2Exchange
    from proxy.pools import EndpointPool

log = logging.getLogger("ami.proxy")
# Receive windows: a stream may have this much in flight towards us before it waits for us to
# read (the client-facing side's backpressure decides when we do); the connection 16 of them.
STREAM_WINDOW = 256 * 1024
CONNECTION_WINDOW = 16 * STREAM_WINDOW


class Http1Answer(ConnectionError):
    """The server answered our HTTP/2 preface with anything but HTTP/2's SETTINGS frame: in
    HTTP/1.x (`HTTP/1.1 400`, `505`...), or with a bare error page (Python's http.server takes
    `PRI * HTTP/2.0` for HTTP/0.9 and writes its 505 without a status line). It speaks
    HTTP/1.1 only (EndpointPool.connect_h2 may learn that)."""


_SETTINGS = 0x4  # the frame type a server's preface must open with (RFC 9113 3.4)


def configure(h2: H2Connection, *, max_header_bytes: int,
              max_streams: int | None = None) -> None:
    """Settings both sides announce: receive windows and the header list size.

    HPACK's limit is twice `max_header_bytes`: it counts 32 bytes per header where the proxy's
    own check (which answers 431 on the stream alone) counts 4, so a block of many small
    headers gets that 431 instead of an error ending the connection. Set on the decoder at
    once, since h2 would only apply it when the peer acknowledges our SETTINGS.
    """
    hpack_limit = 2 * max_header_bytes
    settings: dict[SettingCodes, int] = {
        SettingCodes.INITIAL_WINDOW_SIZE: STREAM_WINDOW,
        SettingCodes.MAX_HEADER_LIST_SIZE: hpack_limit,
        SettingCodes.ENABLE_PUSH: 0,
    }
    if max_streams is not None:
        settings[SettingCodes.MAX_CONCURRENT_STREAMS] = max_streams
    h2.local_settings = Settings(client=h2.config.client_side, initial_values=settings)
    h2.initiate_connection()
    h2.decoder.max_header_list_size = hpack_limit
    h2.increment_flow_control_window(CONNECTION_WINDOW - 65535)


class H2UpstreamStream:
    """One request on an upstream HTTP/2 connection: what the exchange holds as its `conn`."""

    __slots__ = ("connection", "exchange", "last", "out", "paused", "pool", "requests",
                 "stream_id", "unacked", "unprocessed")

    def __init__(self, connection: H2UpstreamConnection, stream_id: int,
                 exchange: H2Exchange) -> None:
        self.connection = connection
        self.pool = connection.pool
        self.stream_id = stream_id
        self.exchange: H2Exchange | None = exchange
        self.out = StreamOut(connection.h2, stream_id, exchange.upstream_write_paused)
        self.paused = False  # the client cannot take more: stop granting window
        self.unacked = 0  # received bytes not yet given back as window (while paused)
        # Refused before the server looked at it (REFUSED_STREAM, or above a GOAWAY's last
        # stream id): resending it is safe for any method.
        self.unprocessed = False
        self.requests = 1  # (read by the keep-alive-race retry, which is HTTP/1.1's)
        # The next write is the request body's last: END_STREAM goes on its DATA frame.
        self.last = False

    def send_headers(self, headers: Headers, end_stream: bool) -> None:
        self.connection.h2.send_headers(self.stream_id, headers, end_stream=end_stream)
        if end_stream:
            self.out.ended = True
        self.connection.flush()

    def write(self, chunk: bytes) -> None:
        self.out.data(chunk, self.last)
        self.connection.flush()

    def writelines(self, chunks: list[bytes] | tuple[bytes, ...], end: bool = False) -> None:
        """`chunks` as DATA; with `end`, the last of them ends the stream."""
        last = len(chunks) - 1
        for i, chunk in enumerate(chunks):
            self.out.data(chunk, end and i == last)
        self.connection.flush()

    def end(self, trailers: Headers | None = None) -> None:
        self.out.end(trailers)
        self.connection.flush()

    def pause_reading(self, paused: bool) -> None:
        """Backpressure from the client side: withhold WINDOW_UPDATEs while it cannot read."""
        self.paused = paused
        if not paused and self.unacked:
            self.connection.ack(self.stream_id, self.unacked)
            self.unacked = 0
            self.connection.flush()

    def abort(self) -> None:
        """Drop this request (the client left, a timeout, a retry): RST_STREAM CANCEL."""
        self.exchange = None
        self.connection.reset(self, ErrorCodes.CANCEL)

    close = abort


class H2UpstreamConnection(asyncio.Protocol):
    """One HTTP/2 connection to an endpoint, multiplexing the streams of many exchanges."""

    def __init__(self, pool: EndpointPool) -> None:
        self.pool = pool
        self.loop = pool.loop
        self.h2 = h2guard.MeshH2Connection(h2guard.configuration(client_side=True))
        self.transport: asyncio.Transport | None = None
        self.streams: dict[int, H2UpstreamStream] = {}
        self.closed = False
        self.flush_due = False  # a flush_now is scheduled for this loop iteration
        self.ready = False  # connected and its server checked (identity, ALPN, SETTINGS)
        # The server's first SETTINGS (its stream limit): streams wait for it, or a server
        # allowing fewer than h2's default would refuse the ones beyond.
        self.settings_seen: asyncio.Future[None] = self.loop.create_future()
        # the server said it takes no new stream (or the connection's maxConnectionDuration
        # is up: the same, decided here)
        self.goaway = False
        self.expiry: asyncio.TimerHandle | None = None  # the maxConnectionDuration timer
        self.idle_since = self.loop.time()
        self.peer_identity: str | None = None

    # --- asyncio.Protocol -------------------------------------------------------------------
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        self.pool.h2.append(self)  # counted from here; forget_h2 on any close
        configure(self.h2, max_header_bytes=self.pool.max_head_bytes)
        self.flush()

    def data_received(self, data: bytes | memoryview) -> None:
        if not self.ready and not self.settings_seen.done() and (
                bytes(data[:7]) == b"HTTP/1." or (len(data) > 3 and data[3] != _SETTINGS)):
            # No HTTP/2 server: its preface opens with SETTINGS (the frame type is the fourth
            # byte); this is an HTTP/1.x server's answer to `PRI * HTTP/2.0`.
            self._fail_all("upstream_protocol_error",
                           Http1Answer(f"{self.pool.address} answered in HTTP/1"))
            return
        try:
            events = self.h2.receive_data(bytes(data))
        except H2Error as exc:
            log.info("upstream %s broke HTTP/2: %s", self.pool.address, exc)
            self.flush_now()
            self._fail_all("upstream_protocol_error")
            return
        for event in events:
            try:
                self._event(event)
            except Exception:
                stream = self.streams.get(getattr(event, "stream_id", 0))
                if stream is None or stream.exchange is None:
                    raise
                stream.exchange.internal_error()
        self.flush()

    def connection_lost(self, exc: Exception | None) -> None:
        self.transport = None
        self._fail_all("upstream_reset")

    def pause_writing(self) -> None:
        for stream in list(self.streams.values()):
            if stream.exchange is not None:
                stream.exchange.upstream_write_paused(True)

    def resume_writing(self) -> None:
        for stream in list(self.streams.values()):
            if stream.exchange is not None:
                stream.exchange.upstream_write_paused(False)

    # --- streams ----------------------------------------------------------------------------
    def has_room(self) -> bool:
        """Open for another stream: not closing, and below the server's concurrency limit."""
        return (self.ready and not self.closed and not self.goaway
                and len(self.streams) < self.h2.remote_settings.max_concurrent_streams)

    def open_stream(self, exchange: H2Exchange) -> H2UpstreamStream:
        stream_id = self.h2.get_next_available_stream_id()
        stream = H2UpstreamStream(self, stream_id, exchange)
        self.streams[stream_id] = stream
        return stream

    def ack(self, stream_id: int, size: int) -> None:
        """Give `size` received bytes back as window (connection and stream)."""
        try:
            self.h2.acknowledge_received_data(size, stream_id)
        except H2Error:
            pass  # the stream ended meanwhile: h2 has already released its share

    def reset(self, stream: H2UpstreamStream, code: int) -> None:
        if self.streams.pop(stream.stream_id, None) is None:
            return
        try:
            self.h2.reset_stream(stream.stream_id, code)
        except H2Error:
            pass  # already closed on the wire
        self.flush()
        self._stream_gone()

    def flush(self) -> None:
        """Send what h2 has queued, at the end of this loop iteration: a request's head, body
        and end (and other streams' frames) leave in one write, not one write per frame."""
        if not self.flush_due:
            self.flush_due = True
            self.loop.call_soon(self.flush_now)

    def flush_now(self) -> None:
        self.flush_due = False
        data = self.h2.data_to_send()
        if data and self.transport is not None:
            self.transport.write(data)

    def close(self) -> None:
        """Close now (GOAWAY first when possible); streams still open are failed."""
        if not self.closed:
            self.closed = True
            try:
                self.h2.close_connection()
            except H2Error:
                pass
            self.flush_now()
            if self.transport is not None:
                self.transport.close()
            self.pool.forget_h2(self)

    def expire(self) -> None:
        """The destination's maxConnectionDuration is up: no new stream; closed now if it
        carries none, else when its last one ends (as after a GOAWAY)."""
        self.goaway = True
        if not self.streams:
            self.close()

    def abort(self) -> None:
        """Drop the connection at once (a failed check after connecting)."""
        self._fail_all("upstream_reset")

    def _stream_gone(self) -> None:
        pool = self.pool
        if pool.breaker is not None and pool.breaker.pending:
            pool.h2_room(self)  # a request queued by maxConnections may have this stream
        if not self.streams:
            self.idle_since = self.loop.time()
            if self.goaway or self.pool.retired:
                self.close()

    def _finished(self, stream: H2UpstreamStream) -> None:
        if self.streams.pop(stream.stream_id, None) is not None:
            self._stream_gone()

    # --- events -----------------------------------------------------------------------------
    def _event(self, event: Any) -> None:
        kind = type(event)
        if kind is ev.DataReceived:
            stream = self.streams.get(event.stream_id)
            ex = h2flow.received(self, stream, event.stream_id, event.flow_controlled_length)
            if ex is None:
                return
            ended = event.stream_ended is not None
            ex.h2_response_data(event.data, ended)  # (ex is stream's: stream is not None)
            if ended and stream is not None:
                self._ended(stream)
        elif kind is ev.ResponseReceived:
            stream = self.streams.get(event.stream_id)
            if stream is not None and stream.exchange is not None:
                stream.exchange.h2_response_head(stream, event.headers,
                                                 event.stream_ended is not None)
                if event.stream_ended is not None and stream.exchange is not None:
                    self._ended(stream)
        elif kind is ev.TrailersReceived:
            stream = self.streams.get(event.stream_id)
            if stream is not None and stream.exchange is not None:
                stream.exchange.h2_response_trailers(event.headers)
                self._ended(stream)
        elif kind is ev.RemoteSettingsChanged:
            if not self.settings_seen.done():
                self.settings_seen.set_result(None)
        elif kind is ev.WindowUpdated:
            if event.stream_id:
                stream = self.streams.get(event.stream_id)
                if stream is not None:
                    stream.out.pump()
            else:
                for stream in list(self.streams.values()):
                    stream.out.pump()
        elif kind is ev.StreamReset:
            stream = self.streams.pop(event.stream_id, None)
            if stream is not None:
                stream.unprocessed = event.error_code == ErrorCodes.REFUSED_STREAM
                self._stream_gone()
                ex = stream.exchange
                stream.exchange = None
                if ex is not None:
                    ex.h2_upstream_reset(stream)
        elif kind is MessageMalformed:
            self._malformed(event)
        elif kind is ev.ConnectionTerminated:
            self.goaway = True
            last = event.last_stream_id if event.last_stream_id is not None else 0
            for stream_id in [s for s in self.streams if s > last]:
                stream = self.streams.pop(stream_id)
                stream.unprocessed = True
                ex, stream.exchange = stream.exchange, None
                if ex is not None:
                    ex.h2_upstream_reset(stream)
            if not self.streams:
                self.close()

    def _malformed(self, event: MessageMalformed) -> None:
        """A malformed response (head, trailers or DATA against its content-length): h2guard
        has reset that stream alone (RFC 9113 8.1.1), the connection's others go on; the client
        gets `502 upstream_protocol_error` (its stream reset if the answer had started)."""
        stream = self.streams.pop(event.stream_id, None)
        if stream is None:
            return
        log.info("upstream %s sent a malformed response on stream %d: %s",
                 self.pool.address, event.stream_id, event.detail)
        if stream.unacked:  # read, not given back: the connection's window keeps it
            self.ack(event.stream_id, stream.unacked)
            stream.unacked = 0
        self._stream_gone()
        ex, stream.exchange = stream.exchange, None
        if ex is not None:
            ex.h2_upstream_failed(stream, "upstream_protocol_error")

    def _ended(self, stream: H2UpstreamStream) -> None:
        ex, stream.exchange = stream.exchange, None
        if not stream.out.ended and self.streams.get(stream.stream_id) is stream:
            # Answered before our request's end (RFC 9113 8.1: an early 413, a gRPC call the
            # server ended first): the rest of the request is not sent. Unless the server resets
            # it, h2 keeps the stream half-open for good, counted against the server's
            # SETTINGS_MAX_CONCURRENT_STREAMS, and the connection fails new streams at the limit.
            try:
                self.h2.reset_stream(stream.stream_id, ErrorCodes.NO_ERROR)
            except H2Error:
                pass
            self.flush()
        self._finished(stream)
        if ex is not None:
            ex.h2_response_end(stream)

    def _fail_all(self, reason: str, error: ConnectionError | None = None) -> None:
        if not self.settings_seen.done():
            self.settings_seen.set_exception(
                error or ConnectionError(f"upstream closed: {reason}"))
            self.settings_seen.exception()  # (retrieved: a failed connect is reported once)
        if not self.closed:
            self.closed = True
            if self.transport is not None:
                self.transport.abort()
            self.pool.forget_h2(self)
        streams = list(self.streams.values())
        self.streams.clear()
        for stream in streams:
            ex, stream.exchange = stream.exchange, None
            if ex is not None:
                ex.h2_upstream_failed(stream, reason)


class TlsH2UpstreamConnection(H2UpstreamConnection, recvbuf.BufferedReads):
    """The same over mTLS, or TLS this sidecar originates to an outside host (ALPN h2):
    uvloop decrypts into the shared buffer."""

    def connection_lost(self, exc: Exception | None) -> None:
        origination = self.pool.origination
        # Ended by the outside host (not by us) with an error, under requests, or before its
        # SETTINGS (requests wait for them: a host wanting a client certificate, say)
        if origination is not None and not self.closed and (
                exc is not None or self.streams or not self.ready):
            log_ended(origination, self.pool.address, exc)
        super().connection_lost(exc)
