"""Traffic mirroring for HTTP/2 requests: the copy is an HTTP/2 stream too.

As `proxy.mirror.MirrorRequest` (the HTTP/1.1 copy): the same `-shadow` authority, the same
bounds (the route's timeout or else the stream idle timeout, 64 KiB of body held while the
connection opens), the body and trailers teed as they arrive, the answer read and discarded.
The copy never slows or fails the primary: it is dropped when its stream would have to wait
for window or its connection pushes back, and on any error. Its stream runs on the mirror
backend's endpoint pool (`EndpointPool.take_h2` / `connect_h2_shared`), outside any breaker.
To an endpoint that speaks HTTP/1.1 only, the copy goes in HTTP/1.1 (`H1Copy`), translated as
the primary request would be (`proxy.h2downgrade`); so does the copy whose own connection
finds that out (an undeclared endpoint answering the preface in HTTP/1.1).
"""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING

from proxy import h2downgrade as downgrade
from proxy.h2upstream import Http1Answer
from proxy.mirror import MirrorRequest, shadow_host

if TYPE_CHECKING:
    from proxy.h2exchange import H2Exchange
    from proxy.h2flow import Headers
    from proxy.h2upstream import H2UpstreamConnection, H2UpstreamStream
    from proxy.pools import EndpointPool
    from proxy.routing import Backend

_MAX_BUFFER = 64 * 1024


class H2MirrorRequest:
    """The shadow stream; implements the callbacks an H2UpstreamStream makes."""

    __slots__ = ("_buffer", "_buffered", "_done", "_timer", "dropped", "headers", "in_http1",
                 "last", "pool", "source", "stream", "trailers")

    def __init__(self, pool: EndpointPool, headers: Headers, source: H2Exchange) -> None:
        self.pool = pool
        self.headers = headers
        self.source: H2Exchange | None = source  # until its request ends (for its trailers)
        self.stream: H2UpstreamStream | None = None
        self._buffer: list[bytes] = []
        self._buffered = 0
        self._done = False
        self.trailers: Headers | None = None
        self.dropped = False
        self.last = False  # the next body chunk is the last (the primary's END_STREAM came on it)
        self._timer: asyncio.TimerHandle | None = None
        self.in_http1: H1Copy | None = None  # the copy, gone in HTTP/1.1 (see _connect)

    @classmethod
    def start(cls, ex: H2Exchange, backend: Backend) -> H2MirrorRequest | H1Copy | None:
        pool = backend.pick_endpoint()
        if pool is None:
            return None
        if pool.h1_only:
            # The shadow speaks HTTP/1.1 only (declared, or learned): so does the copy, as the
            # primary would.
            return H1Copy.begin(ex, backend.metric_prefix[3], pool)
        ex.downstream.listener.stats.inc("ami_mirrored_requests",
                                         (("destination_service", backend.metric_prefix[3]),))
        headers = ex._upstream_headers(pool)
        headers[2] = (b":authority", shadow_host(headers[2][1]))
        mirror = cls(pool, headers, ex)
        decision = ex.decision
        timeout = decision.timeout if decision is not None else None
        if timeout is None:
            timeout = ex.downstream.listener.limits.stream_idle_timeout or None
        loop = ex.downstream.loop
        if timeout is not None:
            mirror._timer = loop.call_later(timeout, mirror.drop)
        held = ex._body_buffer
        if held:  # what came during a fault delay, held for the first try: the copy's too
            mirror._buffer.extend(held)
            mirror._buffered = ex._buffered
        if ex.request_done:
            mirror.body_done(False)
        conn = pool.take_h2()
        if conn is not None:
            mirror._send_on(conn)
        else:
            loop.create_task(mirror._connect())
        return mirror

    async def _connect(self) -> None:
        try:
            conn = await asyncio.shield(self.pool.connect_h2_shared())
        except Http1Answer:
            # The endpoint speaks HTTP/1.1 only and the pool learned it just now (`auto`; a
            # declared `http2` shadow stays an error): the copy goes in HTTP/1.1, as the copies
            # after it will, rather than being lost.
            copy = H1Copy.take_over(self) if self.pool.h1_only and not self.dropped else None
            if copy is None:
                self.drop()
                return
            self.in_http1 = copy
            await copy.send()
            return
        except (TimeoutError, OSError, asyncio.CancelledError):
            self.drop()
            return
        if self.dropped:
            return  # (the connection stays in the pool for others)
        if not conn.has_room():
            self.drop()
            return
        self._send_on(conn)

    def _send_on(self, conn: H2UpstreamConnection) -> None:
        stream = conn.open_stream(self)  # type: ignore[arg-type]  # same callback surface
        self.stream = stream
        buffer, self._buffer = self._buffer, []
        ending = self._done and self.trailers is None
        end_now = ending and not buffer
        stream.send_headers(self.headers, end_now)
        if buffer and not self.dropped:
            stream.writelines(buffer, ending)  # (the last chunk ends the copy, as the primary)
        if self._done and not end_now and not self.dropped:
            stream.end(self.trailers)

    # --- the primary request's body is teed here --------------------------------------------
    def body(self, chunk: bytes, chunked: bool) -> None:
        if self.dropped:
            return
        if self.in_http1 is not None:
            self.in_http1.body(chunk, chunked)
            return
        if self.stream is None:
            self._buffered += len(chunk)
            if self._buffered > _MAX_BUFFER:
                self.drop()
            else:
                self._buffer.append(chunk)
            return
        self.stream.last = self.last
        self.stream.write(chunk)

    def body_done(self, chunked: bool) -> None:
        if self._done:
            return
        self._done = True
        source, self.source = self.source, None
        if source is not None:
            self.trailers = source.request_trailers
        if self.in_http1 is not None:
            self.in_http1.body_done(chunked)
        elif self.stream is not None and not self.dropped:
            self.stream.end(self.trailers)

    def drop(self) -> None:
        self.dropped = True
        self.source = None
        self._buffer = []
        self._end()
        if self.in_http1 is not None:
            self.in_http1.drop()
        stream, self.stream = self.stream, None
        if stream is not None:
            stream.abort()

    def _end(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    # --- H2UpstreamStream callbacks: the answer is discarded ----------------------------------
    def h2_response_head(self, stream: H2UpstreamStream, headers: Headers,
                         end_stream: bool) -> None:
        pass

    def h2_response_data(self, chunk: bytes, end: bool = False) -> None:
        pass

    def h2_response_trailers(self, headers: Headers) -> None:
        pass

    def h2_response_end(self, stream: H2UpstreamStream) -> None:
        self.stream = None
        if not self._done:
            self.drop()  # answered before the request's end: the rest is not sent
        self._end()

    def h2_upstream_reset(self, stream: H2UpstreamStream) -> None:
        self.stream = None
        self.drop()

    def h2_upstream_failed(self, stream: H2UpstreamStream, reason: str) -> None:
        self.stream = None
        self.drop()

    def upstream_write_paused(self, paused: bool) -> None:
        if paused:
            self.drop()  # never let the shadow slow the primary down (nor hold its body)

    def internal_error(self) -> None:
        self.drop()


class H1Copy(MirrorRequest):
    """An HTTP/2 request's copy to a shadow that speaks HTTP/1.1 only: `MirrorRequest` with
    the head translated as `proxy.h2downgrade` translates the primary's, the body chunked when
    it has no Content-Length, trailers dropped. A gRPC call is not copied (its primary would be
    refused there too)."""

    __slots__ = ("chunk", "last")
    chunk: bool  # the body goes chunked
    last: bool

    @classmethod
    def begin(cls, ex: H2Exchange, service: str, pool: EndpointPool) -> H1Copy | None:
        if ex.grpc:
            return None
        headers = ex._upstream_headers(pool)
        headers[2] = (b":authority", shadow_host(headers[2][1]))
        has_body = not (ex.request_done and ex.bytes_in == 0)
        chunk = has_body and all(name != b"content-length" for name, _ in headers)
        head = downgrade.copy_head(headers, chunk)
        if head is None:
            return None
        copy = cls(pool, head, ex.method == b"HEAD")
        copy.chunk = chunk
        copy.last = False  # (set by the primary; nothing to do with it in HTTP/1.1)
        held = ex._body_buffer
        copy.launch(ex, service, downgrade.chunks(held) if held and chunk else held, chunk)
        return copy

    @classmethod
    def take_over(cls, mirror: H2MirrorRequest) -> H1Copy | None:
        """The copy ``mirror`` was to send, in HTTP/1.1: its head translated, the body it
        holds, its end if it came (already counted, and bounded by ``mirror``'s timer, which
        drops this copy through ``mirror.drop``); None for what HTTP/1.1 cannot carry."""
        headers = mirror.headers
        if any(name == b"content-type" and value.startswith(b"application/grpc")
               for name, value in headers):
            return None  # (as `begin`: its primary is refused there too)
        has_body = not (mirror._done and mirror._buffered == 0)
        chunk = has_body and all(name != b"content-length" for name, _ in headers)
        head = downgrade.copy_head(headers, chunk)
        if head is None:
            return None
        copy = cls(mirror.pool, head, headers[0][1] == b"HEAD")
        copy.chunk = chunk
        copy.last = False
        copy._timer = mirror._timer  # (cancelled when the copy is answered, not left to fire)
        held, mirror._buffer = mirror._buffer, []
        copy._buffer = downgrade.chunks(held) if chunk else held
        copy._buffered = mirror._buffered
        if mirror._done:
            copy.body_done(chunk)
        return copy

    async def send(self) -> None:
        """Send the copy taken over on a pooled connection, or a new one."""
        conn = self.pool.take_idle()
        if conn is not None:
            self._send_on(conn)
        else:
            await self._connect()

    def body(self, chunk: bytes, chunked: bool) -> None:
        if chunk:  # (an empty DATA frame would be the last-chunk marker: see h2downgrade)
            MirrorRequest.body(self, chunk, self.chunk)

    def body_done(self, chunked: bool) -> None:
        MirrorRequest.body_done(self, self.chunk)
