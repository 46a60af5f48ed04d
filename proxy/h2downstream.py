"""The client side over HTTP/2: one protocol per connection, one `H2Stream` per request.

A listener's connection becomes HTTP/2 when it opens with the prior-knowledge preface (h2c,
what gRPC clients send in plaintext) or when TLS negotiated ALPN `h2` (sidecar to sidecar);
`DownstreamProtocol` hands it over. Each stream's request becomes an `H2Exchange`. The same
listener limits hold: header size, idle connections, stream idle timeout, draining.
"""

from __future__ import annotations

import asyncio
import logging
from time import monotonic
from typing import TYPE_CHECKING, Any

import h2.events as ev
from h2.errors import ErrorCodes
from h2.exceptions import H2Error
from h2.settings import SettingCodes, Settings

from proxy import h2flow, h2guard, recvbuf, tcptaken
from proxy.h2flow import Headers, StreamOut
from proxy.h2malformed import MessageMalformed
from proxy.h2requesthead import exchange_from_headers
from proxy.h2upstream import configure

if TYPE_CHECKING:
    from proxy.downstream import DownstreamProtocol
    from proxy.h2exchange import H2Exchange
    from proxy.listener import Listener

log = logging.getLogger("ami.proxy")
PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"
MAX_STREAMS = 256  # concurrent streams a client may open on one connection
# Rapid reset (CVE-2023-44487), as Envoy's overload settings: once a connection has opened
# this many streams (or before, once half of this many were reset), more than half of them
# reset by the client before their response ended (within a second of opening) is an attack.
_PREMATURE_RESET_STREAMS = 500  # Envoy's premature_reset_total_stream_count
_PREMATURE_RESET_LIFETIME = 1.0  # Envoy's premature_reset_min_stream_lifetime_seconds
# A client that does not read what it makes us send (PING and SETTINGS acks, resets, answers):
# while the transport is above its high-water mark, at most this many control frames answered
# (Envoy's max_outbound_control_frames), and at most this much unread output as the client
# sends more (above what a client's own flow-control window lets through). Before that mark,
# the kernel's send buffer takes megabytes of acks (a quarter of a million PINGs, tens of
# seconds of this event loop under load): there, every this many control frames, the client
# must have taken some of our output since the last count (tcptaken).
_MAX_UNREAD_CONTROL = 1000
_MAX_UNREAD_OUTPUT = 16 * 1024 * 1024
# Malformed requests are stream errors (proxy.h2malformed), but a client sending this many on
# one connection is broken or probing: cut off (as Node's maxSessionRejectedStreams).
MAX_MALFORMED_STREAMS = 100
_DRAIN_IDLE = 2.0  # as proxy.downstream's


class H2Stream:
    """One request stream: what its exchange holds as `downstream`."""

    __slots__ = ("closed", "exchange", "out", "paused", "session", "stream_id", "unacked")

    def __init__(self, session: H2DownstreamProtocol, stream_id: int) -> None:
        self.session = session
        self.stream_id = stream_id
        self.exchange: H2Exchange | None = None
        self.out = StreamOut(session.h2, stream_id, self._blocked)
        self.closed = False  # reset, or its connection gone
        self.paused = 0  # bits: the exchange buffers (1), the upstream cannot take more (2)
        self.unacked = 0

    # what an exchange reads from its downstream
    @property
    def loop(self) -> asyncio.AbstractEventLoop:
        return self.session.loop

    @property
    def listener(self) -> Listener:
        return self.session.listener

    @property
    def draining(self) -> bool:
        return self.session.draining

    @property
    def client_ip(self) -> bytes:
        return self.session.client_ip

    @property
    def peer_identity(self) -> str | None:
        return self.session.peer_identity

    @property
    def peer_gateway_cert(self) -> bool:
        return self.session.peer_gateway_cert

    @property
    def xfcc_line(self) -> bytes:
        return self.session.xfcc_line

    @property
    def server_name(self) -> str | None:
        return self.session.server_name

    @property
    def peer_service(self) -> str | None:
        return self.session.peer_service

    @property
    def peer_namespace(self) -> str | None:
        return self.session.peer_namespace

    @property
    def peer_version(self) -> str:
        return self.session.peer_version

    @peer_version.setter
    def peer_version(self, value: str) -> None:
        self.session.peer_version = value

    @property
    def security(self) -> str:
        return self.session.security

    # what an exchange calls
    def send_headers(self, headers: Headers, end_stream: bool) -> None:
        if self.closed:
            return
        self.session.h2.send_headers(self.stream_id, headers, end_stream=end_stream)
        if end_stream:
            self.out.ended = True
        self.session.flush()

    def send_data(self, chunk: bytes, end: bool = False) -> None:
        if not self.closed:
            self.out.data(chunk, end)
            self.session.flush()

    def end(self, trailers: Headers | None = None) -> None:
        if not self.closed:
            self.out.end(trailers)
            self.session.flush()

    def pause_for_buffer(self, paused: bool) -> None:
        self._pause(1, paused)

    def pause_for_upstream(self, paused: bool) -> None:
        self._pause(2, paused)

    def abort_after(self, ex: H2Exchange) -> None:
        """The response broke off mid-body: reset the stream so the client sees it cut."""
        self.listener.record(ex)
        self.session.reset(self, ErrorCodes.INTERNAL_ERROR)

    def exchange_finished(self, ex: H2Exchange, tunnel: bool) -> None:
        self.listener.record(ex)
        session = self.session
        if not ex.request_done and not self.closed and self.out.ended:
            # Answered before the request's end (a 413, a refusal): the client stops sending
            # on NO_ERROR (RFC 9113 8.1) and the response stays intact.
            session.reset(self, ErrorCodes.NO_ERROR)
        else:
            session.stream_done(self)

    def _pause(self, bit: int, on: bool) -> None:
        self.paused = self.paused | bit if on else self.paused & ~bit
        if not self.paused and self.unacked:
            self.session.ack(self.stream_id, self.unacked)
            self.unacked = 0
            self.session.flush()

    def _blocked(self, blocked: bool) -> None:
        """The client's window is full (or open again): hold (resume) the upstream's reads."""
        ex = self.exchange
        if ex is not None and (blocked or not self.session.write_paused):
            ex.downstream_write_paused(blocked)


class H2DownstreamProtocol(asyncio.Protocol):
    """An HTTP/2 client connection: streams in, exchanges out, flow control both ways."""

    lost_reason = "downstream_disconnect"  # (as DownstreamProtocol's)
    # Read of every connection of a listener (proxy.revoke, Listener.refuse_plaintext):
    # HTTP/2 carries no TCP service's bytes and no tunnel (extended CONNECT is not offered).
    tcp_session = None
    tunnel_request = None

    def __init__(self, listener: Listener, h1: DownstreamProtocol) -> None:
        self.listener = listener
        self.loop = listener.loop
        self.transport = h1.transport
        self.client_ip = h1.client_ip
        self.peer_identity = h1.peer_identity
        self.peer_gateway_cert = h1.peer_gateway_cert
        self.peer_service = h1.peer_service
        self.peer_namespace = h1.peer_namespace
        self.peer_version = h1.peer_version
        self.security = h1.security
        self.xfcc_line = h1.xfcc_line
        self.server_name = h1.server_name
        self.h2 = h2guard.MeshH2Connection(h2guard.configuration(client_side=False))
        self.streams: dict[int, H2Stream] = {}
        self.closed = False
        self.flush_due = False  # a flush_now is scheduled for this loop iteration
        self.draining = False
        self.last_stream: int | None = None  # the id of our graceful GOAWAY, once sent
        self.opened = 0  # streams the client opened, and those it reset prematurely
        self.write_paused = False  # the transport is above its high-water mark
        self.unread_control = 0  # control frames answered since the last check (or pause)
        self.output_taken: int | None = None  # what the client had taken at the last check
        self.premature_resets = 0
        self.malformed = 0  # requests reset as malformed (MAX_MALFORMED_STREAMS)
        self.idle_since = self.loop.time()
        self.head_started = self.idle_since  # (read by Listener.record_rejection)
        # stream idle timeout: per stream, the progress last seen by the sweep and since when
        self._watch: dict[int, tuple[int, float]] = {}

    def take_over(self, h1: DownstreamProtocol, data: bytes) -> None:
        """Become the connection's protocol and read what arrived so far."""
        connections = self.listener.connections
        connections.discard(h1)  # counted once: this replaces it
        connections.add(self)  # type: ignore[arg-type]
        configure(self.h2, max_header_bytes=self.listener.limits.max_header_bytes,
                  max_streams=MAX_STREAMS)
        # Announced: MAX_STREAMS. h2 would end the whole connection above it (TooManyStreams),
        # where RFC 9113 5.1.2 lets a stream alone be refused (_request does): h2's own check
        # is moved out to a client ignoring the limit by far.
        values = {SettingCodes(k): v for k, v in self.h2.local_settings.items()}
        values[SettingCodes.MAX_CONCURRENT_STREAMS] = 2 * MAX_STREAMS
        self.h2.local_settings = Settings(client=False, initial_values=values)
        if self.transport is not None:
            self.transport.set_protocol(self)
        self.data_received(data)
        if h1.plaintext_refused:
            self.refuse_plaintext()
        elif h1.draining and not self.closed:
            # The listener drained before this connection spoke: the streams of this first
            # read are served, then GOAWAY and close (else it lingered to the drain deadline).
            self.drain()

    # --- asyncio.Protocol -------------------------------------------------------------------
    def data_received(self, data: bytes | memoryview) -> None:
        if self.closed:
            return
        try:
            events = self.h2.receive_data(bytes(data))
        except H2Error as exc:
            log.info("HTTP/2 client broke the protocol: %s", exc)
            self.listener.record_rejection(self, "bad_request")  # type: ignore[arg-type]
            self.flush_now()
            self._close()
            return
        for event in events:
            if self.closed:
                return  # cut off (a flood): what the client sent after that is not acted on
            try:
                self._event(event)
            except Exception:
                log.exception("internal error while handling an HTTP/2 request")
                stream = self.streams.get(getattr(event, "stream_id", 0) or 0)
                if stream is not None and stream.exchange is not None:
                    stream.exchange.internal_error()
        self.flush_now()
        if self.write_paused or self.unread_control > _MAX_UNREAD_CONTROL:
            self._check_unread()

    def _check_unread(self) -> None:
        """A client that sends but does not read: cut off before its answers pile up."""
        transport = self.transport
        if transport is None or self.closed:
            return
        if transport.get_write_buffer_size() <= _MAX_UNREAD_OUTPUT:
            if self.unread_control <= _MAX_UNREAD_CONTROL:
                return
            if not self.write_paused:
                # Not backed up here: maybe in the kernel. A client that took none of our
                # output while it sent all these control frames does not read their acks.
                taken = tcptaken.bytes_taken(transport)
                if taken is None or taken != self.output_taken:
                    self.output_taken = taken
                    self.unread_control = 0
                    return
        log.warning("HTTP/2 client %s does not read what it asks for: closing",
                    self.client_ip.decode())
        self.listener.stats.inc("ami_http2_flood_closes", (
            ("listener", self.listener.kind), ("kind", "unread_output")))
        self._calm_close(abort=True)

    def eof_received(self) -> bool | None:
        return False

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        self.transport = None
        self.listener.release(self)  # type: ignore[arg-type]
        streams = list(self.streams.values())
        self.streams.clear()
        for stream in streams:
            stream.closed = True
            self._client_gone(stream)

    def pause_writing(self) -> None:
        self.write_paused = True
        self.unread_control = 0  # counted anew while paused (Envoy's rule)
        for stream in self.streams.values():
            if stream.exchange is not None:
                stream.exchange.downstream_write_paused(True)

    def resume_writing(self) -> None:
        self.write_paused = False
        self.unread_control = 0
        for stream in list(self.streams.values()):
            if stream.exchange is not None and not stream.out.blocked:
                stream.exchange.downstream_write_paused(False)

    # --- events -----------------------------------------------------------------------------
    def _event(self, event: Any) -> None:
        kind = type(event)
        if kind is ev.DataReceived:
            stream = self.streams.get(event.stream_id)
            ex = h2flow.received(self, stream, event.stream_id, event.flow_controlled_length)
            if ex is None:
                return
            self.idle_since = self.loop.time()
            if event.stream_ended is None:
                ex.request_body(event.data)
            else:
                ex.request_last_body(event.data)
        elif kind is ev.RequestReceived:
            self._request(event)
        elif kind is ev.TrailersReceived:
            stream = self.streams.get(event.stream_id)
            ex = stream.exchange if stream is not None else None
            if ex is not None:
                length = ex.header("content-length")
                if length is not None and int(length) != ex.bytes_in:
                    # RFC 9113 8.1.1: malformed (h2 checks a stream ended by DATA only): the
                    # attempt is dropped, an HTTP/1.1 upstream connection closed, not reused
                    ex.malformed()
                    return
                ex.request_trailers = list(event.headers)
                ex.request_complete()
        elif kind is ev.WindowUpdated:
            if event.stream_id:
                stream = self.streams.get(event.stream_id)
                if stream is not None:
                    self._pump(stream)
            else:
                for stream in list(self.streams.values()):
                    self._pump(stream)
        elif kind is ev.StreamReset:
            stream = self.streams.pop(event.stream_id, None)
            if stream is not None:
                stream.closed = True
                ex = stream.exchange
                if not stream.out.ended and (
                        ex is None
                        or monotonic() - ex.start_time < _PREMATURE_RESET_LIFETIME):
                    self.premature_resets += 1
                self._client_gone(stream)
                self._check_resets()
        elif kind is ev.ConnectionTerminated:
            self.draining = True  # the client sends no new stream; finish the open ones
            if not self.streams:
                self._close()
        elif kind in _CONTROL_EVENTS:
            self.unread_control += 1  # h2 answered it (an ack): see _check_unread
        elif kind is MessageMalformed:
            self._malformed(event)

    def _pump(self, stream: H2Stream) -> None:
        stream.out.pump()
        if stream.out.ended and stream.exchange is None:
            self._held_sent(stream)

    def _held_sent(self, stream: H2Stream) -> None:
        """An answer held for the client's window is out in full, its exchange long finished:
        the stream is done here. A client still sending its request is told to stop, as when
        the answer went at once (RFC 9113 8.1); else h2 would keep the stream half-open, counted
        against MAX_STREAMS, for as long as the client does not end it."""
        self.reset(stream, ErrorCodes.NO_ERROR)  # (sends nothing if the client had ended it)

    def _request(self, event: Any) -> None:
        if self.last_stream is not None and event.stream_id > self.last_stream:
            # Opened after our GOAWAY: never processed, so the client may retry it elsewhere.
            self.h2.reset_stream(event.stream_id, ErrorCodes.REFUSED_STREAM)
            return
        self.opened += 1
        # (our count, not h2's open_inbound_streams: that walks every stream on each call)
        if len(self.streams) >= MAX_STREAMS:
            # Above SETTINGS_MAX_CONCURRENT_STREAMS (sent before our SETTINGS arrived, or
            # ignoring them): refused unprocessed, the client may retry it.
            self.h2.reset_stream(event.stream_id, ErrorCodes.REFUSED_STREAM)
            return
        now = self.loop.time()
        self.idle_since = now
        stream = H2Stream(self, event.stream_id)
        self.streams[event.stream_id] = stream
        ended = event.stream_ended is not None
        # (its start on the monotonic clock itself, as HTTP/1.1's: proxy.requesthead)
        ex = exchange_from_headers(stream, event.headers, monotonic(), ended)
        if isinstance(ex, str):
            self._refuse(stream, ex, (b":method", b"HEAD") in event.headers)
            return
        stream.exchange = ex
        if self.write_paused:
            ex.downstream_write_paused(True)  # the client is not reading: neither do we
        if ended:
            ex.request_done = True  # no body: the route timeout runs from now
        try:
            ex.start()
        except Exception:
            ex.internal_error()
            return

    def _refuse(self, stream: H2Stream, reason: str, head: bool = False) -> None:
        """A request refused from its head alone: answered on its stream, the rest go on;
        `head`: a HEAD request, answered without the body. A body the client's window holds
        back keeps the stream (with no exchange) until `_pump` has sent it, as an upstream's
        answer would; a reset, the connection's end or the stream idle timeout drop it."""
        self.listener.record_rejection(self, reason)  # type: ignore[arg-type]
        from proxy.reasons import REASON_HEADER, REASONS

        code, text = REASONS[reason]
        body = f"{reason}: {text}\n".encode()
        self.h2.send_headers(stream.stream_id, [
            (b":status", b"%d" % code), (b"content-type", b"text/plain; charset=utf-8"),
            (b"content-length", b"%d" % len(body)), (REASON_HEADER, reason.encode())], head)
        if head:
            stream.out.ended = True
        else:
            stream.out.data(body, True)
        if not stream.out.ended:
            self.streams[stream.stream_id] = stream  # (a malformed head's was never kept)
            return
        self.streams.pop(stream.stream_id, None)
        try:
            self.h2.reset_stream(stream.stream_id, ErrorCodes.NO_ERROR)
        except H2Error:
            pass  # the client had already ended it

    def _check_resets(self) -> None:
        """Rapid reset: most streams reset by the client before their answer (Envoy's rule)."""
        limit = _PREMATURE_RESET_STREAMS
        resets = self.premature_resets * 2
        if resets < limit if self.opened < limit else resets <= self.opened:
            return
        log.warning("HTTP/2 client %s reset %d of %d streams prematurely: closing",
                    self.client_ip.decode(), self.premature_resets, self.opened)
        self.listener.stats.inc("ami_http2_flood_closes", (
            ("listener", self.listener.kind), ("kind", "premature_reset")))
        self._calm_close()

    def _malformed(self, event: MessageMalformed) -> None:
        """A malformed request (its head, trailers or DATA): h2guard has reset its stream with
        PROTOCOL_ERROR, the other streams go on. Counted as `downstream_protocol_error`, its
        exchange (if the head had made one) dropped; or answered `400` (no authority, or two).
        Past the budget, the client is cut off."""
        log.info("HTTP/2 client %s sent a malformed request on stream %d: %s",
                 self.client_ip.decode(), event.stream_id, event.detail)
        stream = self.streams.pop(event.stream_id, None)
        if event.answer is not None:  # a head with no or two authorities: answered, not reset
            self._refuse(H2Stream(self, event.stream_id), event.answer, event.head)
        elif stream is None:  # its head: no exchange was made
            reason = "downstream_protocol_error"
            self.listener.record_rejection(self, reason)  # type: ignore[arg-type]
        else:
            stream.closed = True
            self._watch.pop(event.stream_id, None)
            if stream.unacked:  # read, not given back: the connection's window keeps it
                self.ack(event.stream_id, stream.unacked)
                stream.unacked = 0
            ex, stream.exchange = stream.exchange, None
            if ex is not None:  # (else answered and recorded already)
                ex.malformed_stream()
        self.malformed += 1
        if self.malformed >= MAX_MALFORMED_STREAMS:
            log.warning("HTTP/2 client %s sent %d malformed requests: closing",
                        self.client_ip.decode(), self.malformed)
            self.listener.stats.inc("ami_http2_flood_closes", (
                ("listener", self.listener.kind), ("kind", "malformed_streams")))
            self._calm_close()

    def _calm_close(self, abort: bool = False) -> None:
        """An abusive client: GOAWAY ENHANCE_YOUR_CALM, and close (open streams end too);
        at once when it does not read, else once the GOAWAY is out (or after a grace)."""
        transport = self.transport
        if self.closed or transport is None:
            return
        transport.write(h2guard.goaway(self.h2, self.h2.highest_inbound_stream_id,
                                       ErrorCodes.ENHANCE_YOUR_CALM))
        self._close()
        if abort:
            transport.abort()
        else:
            self.loop.call_later(_DRAIN_IDLE, _abort_unless_lost, self)

    def _client_gone(self, stream: H2Stream) -> None:
        """The client reset the stream or left: drop its request (recorded as a disconnect)."""
        ex = stream.exchange
        stream.exchange = None
        self._watch.pop(stream.stream_id, None)
        if ex is None or ex.downstream is not stream:
            return
        finished = ex.status and ex.response_started and stream.out.ended
        if finished:
            return
        ex.abort()
        if not ex.response_started or ex.flags == "-":
            ex.flags = self.lost_reason
            self.listener.record(ex)

    # --- used by streams --------------------------------------------------------------------
    def ack(self, stream_id: int, size: int) -> None:
        try:
            self.h2.acknowledge_received_data(size, stream_id)
        except H2Error:
            pass  # the stream closed meanwhile

    def reset(self, stream: H2Stream, code: int) -> None:
        stream.closed = True
        stream.exchange = None
        self.streams.pop(stream.stream_id, None)
        self._watch.pop(stream.stream_id, None)
        try:
            self.h2.reset_stream(stream.stream_id, code)
        except H2Error:
            pass
        self.flush()
        self._maybe_done()

    def stream_done(self, stream: H2Stream) -> None:
        """The response has been handed over (maybe still waiting for window)."""
        stream.exchange = None
        if stream.out.ended:
            self.streams.pop(stream.stream_id, None)
        self._watch.pop(stream.stream_id, None)
        self._maybe_done()

    def flush(self) -> None:
        """Send what h2 has queued, at the end of this loop iteration: a request's head, body
        and end (and other streams' frames) leave in one write, not one write per frame."""
        if not self.flush_due:
            self.flush_due = True
            self.loop.call_soon(self.flush_now)

    def flush_now(self) -> None:
        self.flush_due = False
        data = self.h2.data_to_send()
        if data and self.transport is not None and not self.closed:
            self.transport.write(data)

    def _maybe_done(self) -> None:
        self.idle_since = self.loop.time()
        if self.draining and not self._busy():
            self._close()

    def _busy(self) -> bool:
        return any(not s.out.ended or s.exchange is not None for s in self.streams.values())

    # --- lifecycle (the listener's sweep, drain and mode changes) ---------------------------
    def check_timers(self, now: float) -> None:
        if self.closed:
            return
        for stream in list(self.streams.values()):
            if stream.out.ended and stream.exchange is None:
                self._held_sent(stream)  # sent in full meanwhile
        limits = self.listener.limits
        if not self.streams:
            limit = _DRAIN_IDLE if self.draining else limits.idle_timeout
            if now - self.idle_since >= limit:
                self._goaway_close()
            return
        if limits.stream_idle_timeout:
            self._check_stream_idle(now, limits.stream_idle_timeout)

    def _check_stream_idle(self, now: float, limit: float) -> None:
        """As DownstreamProtocol._check_stream_idle, for every open stream."""
        watch = self._watch
        for stream_id, stream in list(self.streams.items()):
            ex = stream.exchange
            if ex is None:
                if stream.out.ended:
                    continue
                # Answered in full by the upstream, held for a client that opens no window:
                # its progress is what it still holds.
                progress = -1 - stream.out.held_bytes
            else:
                progress = ex.bytes_in + ex.bytes_out + ex.status
            seen = watch.get(stream_id)
            if seen is None or seen[0] != progress:
                watch[stream_id] = (progress, now)
            elif ex is None:
                if now - seen[1] >= limit:
                    del watch[stream_id]
                    self.reset(stream, ErrorCodes.CANCEL)
            elif now - seen[1] >= limit and not ex.awaiting_route_timeout():
                del watch[stream_id]
                ex.stream_idle()

    def drain(self) -> None:
        """Shutdown: GOAWAY (no new stream), then close once the open ones are answered."""
        self.draining = True
        if self.last_stream is None and not self.closed and self.transport is not None:
            # (h2's close_connection would refuse the open streams' frames from now on)
            self.last_stream = self.h2.highest_inbound_stream_id
            self.transport.write(h2guard.goaway(self.h2, self.last_stream))
        if not self._busy():
            self._close()

    def refuse_plaintext(self) -> None:
        if self.security == "none":
            self.drain()

    def _goaway_close(self) -> None:
        try:
            self.h2.close_connection()
        except H2Error:
            pass
        self.flush_now()
        self._close()

    def _close(self) -> None:
        if not self.closed and self.transport is not None:
            self.flush_now()  # what this iteration queued (the last answer) goes first
            self.closed = True
            self.transport.close()


_CONTROL_EVENTS = frozenset({ev.PingReceived, ev.RemoteSettingsChanged})


def _abort_unless_lost(session: H2DownstreamProtocol) -> None:
    if session.transport is not None:
        session.transport.abort()  # the client did not read the GOAWAY: its buffer goes now


class TlsH2DownstreamProtocol(H2DownstreamProtocol, recvbuf.BufferedReads):
    """The same over TLS: uvloop decrypts into the shared buffer."""


def take_over(h1: DownstreamProtocol, data: bytes, tls: bool) -> None:
    """Switch the connection `h1` was reading to HTTP/2, feeding it `data`."""
    cls = TlsH2DownstreamProtocol if tls else H2DownstreamProtocol
    proto = cls(h1.listener, h1)
    h1.closed = True  # it reads nothing more; the new protocol owns the transport
    proto.take_over(h1, data)
