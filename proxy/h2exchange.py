"""One HTTP/2 request through the proxy: the same route policies, HTTP/2 to the client.

`H2Exchange` keeps everything `Exchange` decides (routing, admission, faults, timeouts,
retries, balancing, outlier detection, metrics) and replaces how bytes move: headers and DATA
frames on a client stream (`proxy.h2downstream.H2Stream`) and on an upstream stream
(`proxy.h2upstream.H2UpstreamStream`), trailers passed through (gRPC's status lives there);
or, to an endpoint that speaks HTTP/1.1 only, `Exchange`'s HTTP/1.1 upstream with the
translation of `proxy.h2downgrade`. A gRPC request answered by the proxy gets a gRPC answer:
a trailers-only response whose `grpc-status` maps the HTTP status as gRPC's own mapping does.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterable
from typing import TYPE_CHECKING
from urllib.parse import quote

from meshctl.api.rules import HTTP_OF_GRPC
from proxy import h2downgrade as downgrade
from proxy.exchange import _LAST_CHUNK, Exchange
from proxy.exchangepolicy import MAX_REPLAY as _MAX_REPLAY
from proxy.exchangepolicy import rate_limited
from proxy.h2upstream import Http1Answer
from proxy.reasons import NO_BODY, REASON_HEADER, REASONS, TEXT_PLAIN, edited_local_headers

if TYPE_CHECKING:
    from proxy.h2downstream import H2Stream
    from proxy.h2flow import Headers
    from proxy.h2upstream import H2UpstreamConnection, H2UpstreamStream
    from proxy.pools import EndpointPool

# HTTP status of a local reply -> gRPC status code (gRPC's "HTTP to gRPC status code mapping").
_GRPC_STATUS = {400: 13, 401: 16, 403: 7, 404: 12, 429: 14, 502: 14, 503: 14, 504: 14}
# ... except where the reason says more: a call the destination cannot serve is UNIMPLEMENTED
# (not UNAVAILABLE, which clients would retry in vain).
_GRPC_OF_REASON = {"protocol_mismatch": 12}
_GRPC_INTERNAL = 13
# What a route's response edits leave as it is on a gRPC local reply: the fields that say how
# the call ended (and that it is gRPC), besides the reason header.
_GRPC_KEPT = frozenset({REASON_HEADER, b"content-type", b"grpc-status", b"grpc-message"})
# grpc-status of a trailers-only answer -> the HTTP status outlier detection counts (Envoy's).
_HTTP_OF_GRPC = {str(code): status for code, status in HTTP_OF_GRPC.items()}

class H2Exchange(Exchange):
    """An Exchange whose client and upstream are HTTP/2 streams."""

    __slots__ = ("_outlier_pending", "chunk_h1", "grpc", "grpc_status", "held_head",
                 "request_trailers", "scheme", "upstream_h2")

    downstream: H2Stream  # type: ignore[assignment]

    def __init__(self, stream: H2Stream, method: bytes, target: bytes, path: str, query: str,
                 authority: str, headers: Headers, head_tail: list[bytes], scheme: bytes,
                 grpc: bool, start_time: float) -> None:
        super().__init__(stream, method, target, path, query, authority,  # type: ignore[arg-type]
                         headers, head_tail, False, True, False, False, False, start_time)
        self.scheme = scheme
        self.http2 = True
        self.grpc = grpc
        self.grpc_status: str | None = None  # from the response's trailers (or trailers-only)
        self.request_trailers: Headers | None = None
        # A gRPC answer's outcome is in its trailers: outlier detection waits for them.
        self._outlier_pending = False
        # This attempt's upstream: HTTP/2, or HTTP/1.1 (proxy.h2downgrade) with the body
        # chunked (`chunk_h1`) and the response head held until the end of a read.
        self.upstream_h2 = True
        self.chunk_h1 = False
        self.held_head: Headers | None = None

    @property
    def protocol(self) -> str:
        return "HTTP/2"

    # --- to an endpoint that speaks HTTP/1.1 only (proxy.h2downgrade) ------------------------
    choose_upstream = downgrade.choose_upstream
    h1_response_head = downgrade.h1_response_head
    upstream_body = downgrade.h1_response_body
    flush_out = downgrade.h1_flush
    upstream_complete = downgrade.h1_response_complete

    # --- upstream connections: HTTP/2 ones, shared by many requests -------------------------
    def _open_connection(self, pool: EndpointPool) -> None:
        if not self.upstream_h2:
            Exchange._open_connection(self, pool)
            return
        self._connect_task = self.downstream.loop.create_task(self._connect_h2(pool))

    async def _connect_h2(self, pool: EndpointPool) -> None:
        try:
            # shared with the requests arriving while it opens (shielded: one leaving does
            # not cancel it for the others)
            conn = await asyncio.shield(pool.connect_h2_shared())
        except Http1Answer:
            self._answered_in_http1(pool)
            return
        except (TimeoutError, OSError):
            self._connect_failed()
            return
        except asyncio.CancelledError:
            return
        self._connect_task = None
        try:
            if self.downstream.closed:
                self._release_pool()
                return
            if not conn.has_room():  # the requests that waited with this one filled it
                self._no_room(pool)
                return
            self._send_on(conn)
        except Exception:
            self.internal_error()

    def _answered_in_http1(self, pool: EndpointPool) -> None:
        """The endpoint answered our HTTP/2 preface in HTTP/1.1: the request goes as HTTP/1.1
        if the pool learned that (`auto`), nothing having reached the app; else an error."""
        self._connect_task = None
        if self.downstream.closed:
            self._release_pool()
        elif not pool.h1_only:  # declared `http2`, or a sidecar: it is wrong, not us
            self._attempt_failed("reset", "upstream_protocol_error")
        elif self.choose_upstream(pool):
            conn = pool.take_idle()
            if conn is not None:
                self._send_on(conn)  # type: ignore[arg-type]
            else:
                Exchange._open_connection(self, pool)

    def _no_room(self, pool: EndpointPool) -> None:
        """No stream free on the endpoint's connections: another one, else wait (breaker)."""
        conn = pool.take_h2()
        if conn is not None:
            self._send_on(conn)
            return
        breaker = pool.breaker
        if breaker is None or not breaker.connections_full():
            self._open_connection(pool)
        elif breaker.try_wait(self):
            self._waiting = True
        else:
            self._release_pool()
            assert self.backend is not None
            self._overflow(self.backend)

    def _send_on(self, conn: H2UpstreamConnection) -> None:  # type: ignore[override]
        if not self.upstream_h2:
            downgrade.send_h1(self, conn)  # type: ignore[arg-type]  # an UpstreamConnection
            return
        stream = conn.open_stream(self)
        self.conn = stream  # type: ignore[assignment]
        if self._upstream_paused:
            stream.pause_reading(True)  # the client is not reading: this stream waits too
        held = self._replay or self._body_buffer
        # The whole request is here, no trailers: it ends on its HEADERS, or on its last DATA.
        ending = self.request_done and self.request_trailers is None
        end = ending and not held
        stream.send_headers(self._upstream_headers(stream.pool), end)
        if self._replay:
            stream.writelines(self._replay, ending)
            if self.bytes_in > _MAX_REPLAY:
                self._replay = None  # as Exchange._send_on: too large for another retry
        elif self._body_buffer is not None:
            stream.writelines(self._body_buffer, ending)
        if self._body_buffer is not None:
            self._body_buffer = None
            self._buffered = 0
            self.downstream.pause_for_buffer(False)
        if self.request_done and not end:
            stream.end(self.request_trailers)

    def _upstream_headers(self, pool: EndpointPool) -> Headers:
        headers, lines = self.headers, self.head_tail
        decision = self.decision
        if decision is not None and decision.request_headers is not None:
            # (a route's edits may name headers in capitals; the client's names are lower case,
            # proxy.h2headers saw to that, and so are those the proxy adds)
            headers = lowered(decision.request_headers.edit_pairs(headers))
            lines = decision.request_headers.edit_tail(lines)
        authority = self.authority.encode("latin-1")
        out: Headers = []
        for header in headers:
            if header[0] == b"host":
                authority = header[1]  # a rewrite's authority lands here
            else:
                out.append(header)  # as it came: a never-indexed field stays never-indexed
        if pool.tls is not None:
            lines = [*lines, self.downstream.listener.peer_line]  # see Exchange._upstream_head
        for line in lines:
            name, _, value = line.partition(b":")
            out.append((name.lower(), value.strip()))
        # TLS this sidecar opens to an outside host: the request is https from here on
        scheme = self.scheme if pool.origination is None else b"https"
        return [(b":method", self.method), (b":scheme", scheme),
                (b":authority", authority), (b":path", self.target), *out]

    # --- request body and trailers from the client ------------------------------------------
    def request_body(self, chunk: bytes) -> None:
        if self.chunk_h1 and self.conn is not None and self._body_buffer is None:
            downgrade.h1_request_chunk(self, chunk)  # framed for HTTP/1.1
        else:
            super().request_body(chunk)

    def request_last_body(self, chunk: bytes) -> None:
        """The client's DATA frame that ended its request: upstream too the stream ends on
        that frame (as Envoy and nghttp2 send it), not on an empty DATA frame after it."""
        stream = self.conn
        if chunk and self.upstream_h2 and stream is not None and self._body_buffer is None:
            stream.last = True  # type: ignore[attr-defined]  # an H2UpstreamStream
        if chunk and self.mirror is not None:
            self.mirror.last = True  # (so does its copy)
        self.request_body(chunk)
        self.request_complete()

    def request_complete(self) -> None:
        super().request_complete()
        stream = self.conn
        if stream is not None and self._body_buffer is None:
            if self.upstream_h2:
                stream.end(self.request_trailers)  # type: ignore[attr-defined]
            elif self.chunk_h1:
                stream.write(_LAST_CHUNK)  # (trailers cannot follow on this hop)

    def malformed(self) -> None:
        """The request broke HTTP/2's framing rules mid-way (its DATA frames do not add up to
        its content-length): the attempt and any mirrored copy are dropped, the client
        answered `400 bad_request` (or its stream reset, if the answer had started)."""
        if self.mirror is not None:
            self.mirror.drop()
        self._drop_attempt()
        self._release_pool()
        self.reply("bad_request")

    def malformed_stream(self) -> None:
        """The client's stream was reset as malformed mid-way (DATA past its content-length,
        or ending it short; malformed trailers): the attempt and any mirrored copy are dropped,
        logged as `downstream_protocol_error`."""
        if self.mirror is not None:
            self.mirror.drop()
        self.abort()
        self.flags = "downstream_protocol_error"
        self.downstream.listener.record(self)

    # --- the upstream's answer --------------------------------------------------------------
    def h2_response_head(self, stream: H2UpstreamStream, headers: Headers,
                         end_stream: bool) -> None:
        status = 0
        self.grpc_status = None
        out: Headers = [(b":status", b"")]
        for header in headers:
            name = header[0]
            if name == b":status":
                status = int(header[1])
                out[0] = header
            elif name[:1] != b":":
                out.append(header)  # as received: a never-indexed field stays never-indexed
                if end_stream and name == b"grpc-status":
                    self.grpc_status = header[1].decode("latin-1")
        backend = self.backend
        pool = self.pool
        if backend is not None and pool is not None:
            if backend.outlier is not None:
                if self.grpc and not end_stream and status == 200:
                    self._outlier_pending = True  # recorded with the trailers (as Envoy)
                else:
                    # A gRPC failure comes as a 200: outlier detection sees what it means.
                    backend.outlier.record(pool, _outlier_status(self.grpc_status, status))
            if backend.ewma is not None:
                backend.ewma.observe(pool, self.downstream.loop.time() - self._try_start)
        if self._attempt_timer is not None:
            self._attempt_timer.cancel()
            self._attempt_timer = None
        decision = self.decision
        retry = decision.retry if decision is not None else None
        if retry is not None and (
                retry.retriable_status(status)
                or (end_stream and self.grpc_status in retry.grpc_codes)) \
                and not rate_limited(out) and self._may_retry():
            stream.abort()  # drop this answer
            self.conn = None
            self._release_pool()
            self._schedule_retry()
            return
        if self._retry_slot is not None:  # the retry is answered: no longer outstanding
            self._retry_slot.retry_finished(self)
        if self._timer is not None:
            self._timer.cancel()  # the route timeout covers the wait for response headers
            self._timer = None
        self.status = status
        edits = self.response_edits
        if edits is not None:
            out = [out[0], *lowered(edits.edit_pairs(out[1:]))]
        self.response_started = True
        self.downstream.send_headers(out, end_stream)

    def h2_response_data(self, chunk: bytes, end: bool = False) -> None:
        """A DATA frame of the answer; `end`: the last (h2_response_end follows)."""
        self.bytes_out += len(chunk)
        self.downstream.send_data(chunk, end)

    def h2_response_trailers(self, headers: Headers) -> None:
        for name, value in headers:
            if name == b"grpc-status":
                self.grpc_status = value.decode("latin-1")
        if self._outlier_pending:
            self._record_outlier(_outlier_status(self.grpc_status, self.status))
        self.downstream.end(headers)

    def h2_response_end(self, stream: H2UpstreamStream) -> None:
        if self._outlier_pending:
            self._record_outlier(self.status)  # ended without trailers: as its status says
        self.downstream.end()
        self.conn = None
        self._release_pool()
        self.finish()

    def _record_outlier(self, status: int | None) -> None:
        self._outlier_pending = False
        backend, pool = self.backend, self.pool
        if backend is not None and backend.outlier is not None and pool is not None:
            backend.outlier.record(pool, status)

    def h2_upstream_reset(self, stream: H2UpstreamStream) -> None:
        """The server reset the stream, or refused it (GOAWAY, REFUSED_STREAM)."""
        pool = self.pool
        if (stream.unprocessed and not self.response_started and not self._fresh_retry_used
                and pool is not None and (self.bytes_in == 0 or self._replay is not None)):
            # Never processed by the server, so sending it again is exact and safe for any
            # method (Envoy does the same), on a connection that takes new streams.
            self._fresh_retry_used = True
            self.conn = None
            conn = pool.take_h2()
            if conn is not None:
                self._send_on(conn)
            else:
                self._open_connection(pool)
            return
        if self._outlier_pending:
            self._record_outlier(None)  # reset mid-answer: a failure of the endpoint
        self._upstream_error(stream, "upstream_reset")  # type: ignore[arg-type]

    def h2_upstream_failed(self, stream: H2UpstreamStream, reason: str) -> None:
        if self._outlier_pending:
            self._record_outlier(None)  # cut off mid-answer: a failure of the endpoint
        self._upstream_error(stream, reason)  # type: ignore[arg-type]

    # --- answers of the proxy's own ---------------------------------------------------------
    def reply(self, reason: str, *, status: int | None = None,
              extra_headers: tuple[tuple[bytes, bytes], ...] = (), body: bytes | None = None,
              grpc_status: int | None = None) -> None:
        """A local reply as HTTP/2 (gRPC-shaped for gRPC: ``grpc_status``, else the one of
        its HTTP status; ``body`` as its grpc-message); a reset if a response started."""
        self._cancel_timers()
        if self.held_head is not None:
            # An HTTP/1.1 answer's head still held (see h2downgrade): nothing reached the
            # client, so it gets a clean answer.
            self.held_head = self._out = None
            self.response_started = False
        if self.response_started:
            self.flags = reason
            self.downstream.abort_after(self)
            return
        code, text = REASONS[reason]
        code = status or code
        # The routed rule's response edits apply to this answer too (see Exchange.reply), but
        # for its framing, its reason header and (gRPC) the status it carries.
        edits = self.response_edits
        reason_header = (REASON_HEADER, reason.encode())
        self.status = code
        self.flags = reason
        self.response_started = True
        if self.grpc:
            grpc_code = grpc_status if grpc_status is not None else (
                _GRPC_OF_REASON.get(reason) or (
                    _GRPC_STATUS.get(code, _GRPC_INTERNAL) if code >= 300 else 0))
            self.grpc_status = str(grpc_code)
            message = quote(f"{reason}: {text}" if body is None
                            else body.decode("utf-8", "replace"),
                            safe=" :;,()/'-").encode()
            extra = _lowered_pairs(extra_headers if edits is None
                                   else edited_local_headers(edits, list(extra_headers),
                                                             _GRPC_KEPT))
            self.downstream.send_headers(
                [(b":status", b"200"), (b"content-type", b"application/grpc"),
                 (b"grpc-status", self.grpc_status.encode()), (b"grpc-message", message),
                 reason_header, *extra], True)
            self.bytes_out = 0
        else:
            if body is None:
                body = f"{reason}: {text}\n".encode()
            head_only = self.method == b"HEAD"
            length = [(b"content-length", b"%d" % len(body))]
            if code in NO_BODY:  # (a 204, 205 or 304 a rule declares)
                body, length = b"", [(b"content-length", b"0")] if code == 205 else []
            if edits is None:
                fields = [(b":status", b"%d" % code), TEXT_PLAIN, *length, reason_header,
                          *_lowered_pairs(extra_headers)]
            else:
                fields = [(b":status", b"%d" % code), *length, reason_header,
                          *_lowered_pairs(edited_local_headers(
                              edits, [TEXT_PLAIN, *extra_headers]))]
            self.downstream.send_headers(fields, head_only or not body)
            if not head_only and body:
                self.downstream.send_data(body, True)
            self.bytes_out = 0 if head_only else len(body)
        self.finish()


def _lowered_pairs(headers: Iterable[tuple[bytes, bytes]]) -> Headers:
    """A local reply's header pairs with their names in lower case (HTTP/2's)."""
    return [(n.lower(), v) for n, v in headers]


def lowered(headers: Headers) -> Headers:
    """`headers` with their names in lower case (HTTP/2's), each field kept as it is when its
    name already is: a never-indexed one stays never-indexed."""
    return [h if (low := h[0].lower()) == h[0] else (low, h[1]) for h in headers]


def _outlier_status(grpc_status: str | None, status: int) -> int:
    """The HTTP status outlier detection counts for an answer (gRPC failures mapped)."""
    if grpc_status is None or grpc_status == "0":
        return status
    return _HTTP_OF_GRPC.get(grpc_status, 500)
