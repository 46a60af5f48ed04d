"""One request/response cycle through the proxy: route, dispatch upstream, stream both ways.

The downstream protocol feeds request events in; the upstream connection feeds response events
in; the exchange relays bytes between them with backpressure and decides, in one place, what a
failure turns into (a local reply with a reason word, or a retry on a fresh connection).
"""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING, Any

from proxy import exchangepolicy as policy
from proxy.exchangepolicy import MAX_REPLAY as _MAX_REPLAY
from proxy.reasons import NO_FLAGS, local_reply
from proxy.responsehead import (
    FRAME_CHUNKED,
    FRAME_CLOSE,
    FRAME_NONE,
    UpstreamProtocolError,
    check_interim,
    client_head,
)

if TYPE_CHECKING:
    from proxy.destinations import Breaker
    from proxy.downstream import DownstreamProtocol
    from proxy.jwtauth import Authenticated
    from proxy.pools import EndpointPool
    from proxy.routing import Backend, Decision
    from proxy.upstream import UpstreamConnection

_LAST_CHUNK = b"0\r\n\r\n"
_CRLF = b"\r\n"
_CONNECT_ESTABLISHED = b"HTTP/1.1 200 Connection Established\r\n\r\n"
_MAX_BUFFER = 64 * 1024  # request body held while connecting before the client is paused


class Exchange:
    """State of one request; created per request, so attributes live in slots."""

    __slots__ = (
        "_attempt", "_attempt_timer", "_body_buffer", "_breaker", "_buffered",
        "_connect_task", "_failover_used", "_frame", "_fresh_retry_used", "_out", "_pool_held",
        "_replay", "_response_chunked_in", "_retry_slot", "_retry_timer", "_route_timeout",
        "_timer", "_tried",
        "_try_start",
        "_upstream_paused",
        "_waiting", "arrived", "authority", "authz", "backend", "bytes_in", "bytes_out", "chunked",
        "client_keep_alive", "conn", "decision", "downstream", "expect_continue", "ext_authz",
        "flags",
        "head_tail", "headers", "http2", "http10", "interim", "method", "mirror", "path", "pool",
        "query",
        "request_done", "response_edits", "response_started", "start_time", "status", "target",
        "timeout_override", "trace", "upgrade", "upstream_keep_alive",
    )


    # headers, query and target as they arrived, kept by proxy.inbound for a tunnel's request
    # that authentication edits (its token removed): judged again as it came (proxy.revoke).
    # Unset on every other request: nothing is spent on them.
    arrived: tuple[list[tuple[bytes, bytes]], str, bytes]
    # (the CUSTOM provider checking this request, its verified JWT's principal and claims),
    # set when its check starts (proxy.extauthz); unset on every other request, likewise.
    ext_authz: tuple[str, Authenticated | None]
    # (refusing policy, dry-run verdict, auditing policy) for the access log, set by
    # proxy.inbound when it has one of them (proxy.authzstats.log_fields); unset on every
    # other request
    authz: tuple[str | None, str | None, str | None]

    # The current attempt's upstream speaks HTTP/2 (an H2Exchange's slot; read off the hot
    # path only, by the breaker's queue).
    upstream_h2 = False

    @property
    def protocol(self) -> str:
        return "HTTP/1.0" if self.http10 else "HTTP/1.1"

    def __init__(self, downstream: DownstreamProtocol, method: bytes, target: bytes, path: str,
                 query: str, authority: str, headers: list[tuple[bytes, bytes]],
                 head_tail: list[bytes], chunked: bool, client_keep_alive: bool, http10: bool,
                 upgrade: bool, expect_continue: bool, start_time: float) -> None:
        self.downstream = downstream
        self.method = method
        self.target = target
        self.path = path
        self.query = query
        self.authority = authority
        self.headers = headers
        self.head_tail = head_tail
        self.chunked = chunked
        self.client_keep_alive = client_keep_alive
        self.http10 = http10
        self.upgrade = upgrade
        self.expect_continue = expect_continue
        self.start_time = start_time
        self.decision: Decision | None = None
        self.response_edits: Any = None  # the rule's response header edits (CORS: this one's)
        self.backend: Backend | None = None
        self.pool: EndpointPool | None = None
        self.conn: UpstreamConnection | None = None
        self._connect_task: asyncio.Task[None] | None = None
        self._body_buffer: list[bytes] | None = None
        self._buffered = 0
        self._fresh_retry_used = False
        self._failover_used = False
        self._pool_held = False
        self._breaker: Breaker | None = None  # the breaker this request holds a slot of
        self._retry_slot: Breaker | None = None  # ... and a retry slot of (maxRetries)
        self._waiting = False
        self._attempt = 0
        self._timer: asyncio.TimerHandle | None = None
        self._route_timeout: float | None = None  # armed when the request's last byte is in
        self._attempt_timer: asyncio.TimerHandle | None = None
        self._retry_timer: asyncio.TimerHandle | None = None
        self._replay: list[bytes] | None = None
        self._tried: list[EndpointPool] | None = None  # endpoints of earlier tries (retries)
        self._try_start = start_time  # when the current try was dispatched (PEAK_EWMA only)
        self._out: list[bytes] | None = None
        self.mirror: Any = None
        self.timeout_override: float | None = None
        self.trace: Any = None  # proxy.tracing.TracedExchange when this request is sampled
        self._frame = FRAME_NONE
        self.interim = False  # a 1xx arrived: the final response is still to come
        self._response_chunked_in = False
        self._upstream_paused = False
        self.request_done = False
        self.response_started = False
        self.upstream_keep_alive = True
        self.status = 0
        self.flags = NO_FLAGS
        self.bytes_in = 0
        self.bytes_out = 0
        # H2Exchange: HTTP/2 both sides (and its mirror copies HTTP/2 ones). A slot, not
        # a class attribute: Python 3.11 reads a class attribute through an instance ~10x
        # slower than a slot, and this is read on every request.
        self.http2 = False

    # --- the route's policies (proxy.exchangepolicy), bound as methods ---------------------
    start = policy.start
    _after_delay = policy.after_delay
    _inject_abort = policy.inject_abort
    _proceed = policy.proceed
    _count = policy.count
    _upstream_error = policy.upstream_error
    _attempt_failed = policy.attempt_failed
    _connect_failover = policy.connect_failover
    _may_retry = policy.may_retry
    _schedule_retry = policy.schedule_retry
    _retry_now = policy.retry_now
    _on_attempt_timeout = policy.on_attempt_timeout
    _on_timeout = policy.on_timeout
    stream_idle = policy.on_stream_idle
    malformed_body = policy.on_malformed_body
    internal_error = policy.internal_error
    _drop_attempt = policy.drop_attempt
    _cancel_timers = policy.cancel_timers

    # --- header access for matchers ---------------------------------------------------------
    def header(self, name: str) -> str | None:
        """First value of a request header (name lower-case); linear scan, headers are few.

        Trimmed: llhttp drops the whitespace before a value but not after it, and RFC 9110
        5.5 makes neither part of it, so `x-user: jason ` matches a rule on `jason`, as the
        app reads it. (Trimmed here, where rules read values, not per header parsed.)"""
        key = name.encode("latin-1")
        for n, v in self.headers:
            if len(n) == len(key) and n.lower() == key:
                return v.decode("latin-1").strip(" \t")
        return None

    def dispatch(self) -> None:
        """Pick a backend and an endpoint, then send on a pooled or a new connection."""
        decision: Decision = self.decision  # type: ignore[assignment]  # set by start
        picker = decision.picker  # (Decision.pick_backend, inline: a call less per request)
        backend = decision.backends[0] if picker is None else decision.backends[picker.pick()]
        self.backend = backend
        state = backend.state
        breaker = state.breaker if state is not None else None
        if breaker is not None and self._breaker is None:
            if not breaker.try_start():
                self._overflow(backend)
                return
            self._breaker = breaker
        tried = self._tried
        if tried is not None:
            pool = backend.pick_untried_endpoint(tried, self)
        else:
            pool = backend.single  # one endpoint, nothing to decide: pick_endpoint's first case
            if pool is None:
                pool = backend.pick_endpoint(self)
        if pool is None:
            self.reply("no_healthy_upstream")
            return
        self.pool = pool
        self._pool_held = True
        pool.active_requests += 1
        if backend.ewma is not None:
            self._try_start = self.downstream.loop.time()  # the latency sample is this try's
        retry = decision.retry
        if retry is not None and retry.per_try_timeout is not None:
            self._attempt_timer = self.downstream.loop.call_later(
                retry.per_try_timeout, self._on_attempt_timeout)
        # (a flag rather than an overridden method: a call per request costs the HTTP/1.1 path)
        conn: Any
        if not self.http2:
            conn = pool.take_idle()
        elif not self.choose_upstream(pool):  # H2Exchange: HTTP/2 or HTTP/1.1 to this endpoint
            return  # answered: it cannot go there
        else:
            conn = pool.take_h2() if self.upstream_h2 else pool.take_idle()
        if conn is not None:
            self._send_on(conn)  # H2Exchange: opens a stream on an HTTP/2 one
        elif (breaker is not None and breaker.connections_full()
              and not breaker.close_idle()):
            if breaker.try_wait(self):
                self._waiting = True  # the next released connection of this service is ours
            else:
                self._release_pool()
                self._overflow(backend)
        else:
            self._open_connection(pool)

    def take_connection(self, conn: UpstreamConnection | None) -> None:
        """Called by a pool when this request, queued by the breaker, may proceed: on `conn`,
        a released connection to an endpoint of its backend, or (None: a slot freed) on a new
        connection to the endpoint it picked."""
        self._waiting = False
        if self.downstream.closed or self.status:
            if conn is not None:
                conn.pool.release(conn)
            return
        try:
            if conn is None:
                assert self.pool is not None
                self._open_connection(self.pool)
                return
            pool = conn.pool
            if self.pool is not pool:
                self._release_pool()
                self.pool = pool
                self._pool_held = True
                pool.active_requests += 1
            self._send_on(conn)
        except Exception:  # raised into another request's release otherwise
            self.internal_error()

    def choose_upstream(self, pool: EndpointPool) -> bool:
        """(H2Exchange's; an HTTP/1.1 request always goes as HTTP/1.1.)"""
        return True

    def h1_response_head(self, conn: UpstreamConnection, status: int) -> bool:
        """(H2Exchange's: an HTTP/1.1 answer to an HTTP/2 request.)"""
        raise NotImplementedError

    def _overflow(self, backend: Backend) -> None:
        self._count("ami_circuit_breaker_overflow")
        self.reply("overflow")

    def _open_connection(self, pool: EndpointPool) -> None:
        task = self.downstream.loop.create_task(self._connect(pool))
        self._connect_task = task
        if pool.breaker is not None:
            # Counted against maxConnections before the task runs: requests arriving in the
            # same loop iteration must not each see a free slot.
            pool.breaker.opening(task)

    async def _connect(self, pool: EndpointPool) -> None:
        if pool.breaker is not None:
            pool.breaker.started(asyncio.current_task())  # pool.connect() counts it from here
        try:
            conn = await pool.connect()
        except (TimeoutError, OSError):
            self._connect_failed()
            return
        except asyncio.CancelledError:
            return
        self._connect_task = None
        try:
            if self.method == b"CONNECT":  # checked here, off the pooled path: no reuse
                self._open_tunnel(conn)
                return
            if self.downstream.closed:
                pool.release(conn)
                self._release_pool()
                return
            self._send_on(conn)
        except Exception:
            self.conn = self.conn or conn  # dropped with the attempt
            self.internal_error()

    def _connect_failed(self) -> None:
        """No connection could be opened: counted, then retried, failed over or answered."""
        self._connect_task = None
        stats = self.downstream.listener.stats
        name = self.backend.service if self.backend is not None else "unknown"
        stats.connect_failures[name] = stats.connect_failures.get(name, 0) + 1
        self._attempt_failed("connect-failure", "upstream_connect_failure")

    def _send_on(self, conn: UpstreamConnection) -> None:
        self.conn = conn
        # (UpstreamConnection.send, inline)
        conn.exchange = self
        conn.requests += 1
        conn.head_bytes = 0
        conn.transport.write(self._upstream_head())  # type: ignore[union-attr]  # open: taken
        if self._replay:
            conn.writelines(self._replay)  # everything received so far (a retry resends it)
            if self.bytes_in > _MAX_REPLAY:
                self._replay = None  # sent whole once more; too large for another retry
        elif self._body_buffer is not None:
            conn.writelines(self._body_buffer)
        if self._body_buffer is not None:
            self._body_buffer = None
            self._buffered = 0
            self.downstream.pause_for_buffer(False)
        if self.request_done and self.chunked:
            conn.write(_LAST_CHUNK)

    def _upstream_head(self) -> bytes:
        # The pieces go to one join as they are: no `a + b + c` per line (each `+` is a new
        # bytes object; ~1,000 instructions per request for the request line and 3 headers).
        parts = [self.method, b" ", self.target, b" HTTP/1.1\r\n"]
        headers, tail = self.headers, self.head_tail
        decision = self.decision
        if decision is not None and decision.request_headers is not None:
            headers = decision.request_headers.edit_pairs(headers)
            tail = decision.request_headers.edit_tail(tail)
        for name, value in headers:
            parts.extend((name, b": ", value, _CRLF))
        parts.extend(tail)
        pool = self.pool
        if pool is not None and pool.tls is not None:
            # Who is calling (`x-ami-peer`), for the next sidecar: only over mTLS, where it is
            # believed; never to a plaintext hop, let alone a host outside the mesh.
            parts.append(self.downstream.listener.peer_line)
        parts.append(_CRLF)
        return b"".join(parts)

    # --- request body from the client -------------------------------------------------------
    def request_body(self, chunk: bytes) -> None:
        self.bytes_in += len(chunk)
        if self.mirror is not None:
            self.mirror.body(chunk, self.chunked)
        replay = self._replay
        if replay is not None:
            if self.bytes_in > _MAX_REPLAY and (self.conn is not None or not self._attempt):
                # Too large to keep: this request will not be retried. (Not while a retry
                # waits for its connection: it was promised the whole body, and what is
                # held until then is bounded by the client pause of _MAX_BUFFER.)
                self._replay = None
            elif self.chunked:
                replay.extend((b"%x\r\n" % len(chunk), chunk, _CRLF))
            else:
                replay.append(chunk)
        conn = self.conn
        if conn is not None and self._body_buffer is None:
            if self.chunked:
                conn.writelines((b"%x\r\n" % len(chunk), chunk, _CRLF))
            else:
                conn.write(chunk)
            return
        if self.status and not self.response_started:
            return  # a local reply is being sent; discard the rest of the body
        framed = [b"%x\r\n" % len(chunk), chunk, _CRLF] if self.chunked else [chunk]
        if self._body_buffer is None:
            self._body_buffer = framed
        else:
            self._body_buffer.extend(framed)
        self._buffered += len(chunk)
        if self._buffered > _MAX_BUFFER:
            self.downstream.pause_for_buffer(True)

    def request_complete(self) -> None:
        self.request_done = True
        timeout = self._route_timeout
        if timeout is not None:
            # The route timeout runs from the end of the request, as in Envoy: a slow upload
            # is not the upstream's delay. (Not once a response has started: it covers the
            # wait for the head only.)
            self._route_timeout = None
            if not self.response_started:
                self._timer = self.downstream.loop.call_later(timeout, self._on_timeout)
        if self.mirror is not None:
            self.mirror.body_done(self.chunked)
        if self.chunked and self.conn is not None and self._body_buffer is None:
            self.conn.write(_LAST_CHUNK)

    def awaiting_route_timeout(self) -> bool:
        """The route timeout is running: the wait for the response head is its to decide."""
        return self._timer is not None and not self.response_started

    # --- response from upstream -------------------------------------------------------------
    def upstream_headers(self, conn: UpstreamConnection, status: int) -> bool:
        if status < 200 and (status != 101 or not self.upgrade
                             or not conn.parser.should_upgrade()):
            check_interim(conn, status, self.upgrade)  # raises unless a head-only 1xx
            self.interim = True  # 100/103 from upstream: we already answered Expect ourselves
            return False
        if status > 599:
            raise UpstreamProtocolError(f"status {status}")  # (RFC 9110 15: 100 to 599)
        decision = self.decision
        backend = self.backend
        pool = self.pool
        if backend is not None and pool is not None:
            if backend.outlier is not None:
                backend.outlier.record(pool, status)
            if backend.ewma is not None:
                backend.ewma.observe(pool, self.downstream.loop.time() - self._try_start)
        if self._attempt_timer is not None:
            self._attempt_timer.cancel()
            self._attempt_timer = None
        if (decision is not None and decision.retry is not None
                and decision.retry.retriable_status(status)
                and not policy.rate_limited(conn.header_pairs()) and self._may_retry()):
            conn.abort()  # drop this answer; the body that follows is discarded with the socket
            self.conn = None
            self._release_pool()
            self._schedule_retry()
            return False
        if self._retry_slot is not None:
            # The retry is answered: no longer outstanding (Envoy gives its max_retries slot
            # back at the retried try's response headers), whatever its body's length.
            self._retry_slot.retry_finished(self)
        if self._timer is not None:
            self._timer.cancel()  # the route timeout covers the wait for response headers
            self._timer = None
        self.status = status
        self.upstream_keep_alive = conn.parser.should_keep_alive()
        self._response_chunked_in = conn.transfer_encoding
        if self.http2:
            return self.h1_response_head(conn, status)  # H2Exchange: downgraded, see h2downgrade
        # An early response (the request body still arriving, e.g. a 413) ends the client
        # connection too: the rest of the body is not read, so the head says so (as Envoy's).
        keep_alive = self.client_keep_alive and self.request_done and not self.downstream.draining
        head, self._frame = client_head(
            conn, status, self.method == b"HEAD" or status == 204 or status == 304,
            self.http10, keep_alive, self.response_edits)  # (head_only, http10, ..., edits)
        if len(head) > conn.pool.max_head_bytes:
            # A head that arrived whole in a read or two; one spread over more reads is
            # caught as it comes (UpstreamConnection.data_received).
            raise UpstreamProtocolError(f"response head of {len(head)} bytes")
        if not keep_alive or self._frame == FRAME_CLOSE:
            # The head says `connection: close`, or an HTTP/1.0 client reads the body until
            # close: either way the connection ends with this response.
            self.client_keep_alive = False
        self.response_started = True
        # Held until the end of this read so head and body leave in one write (one syscall).
        self._out = [head]
        return self.method == b"HEAD"

    def upstream_body(self, chunk: bytes) -> None:
        self.bytes_out += len(chunk)
        out = self._out
        if out is not None:
            if self._frame == FRAME_CHUNKED:
                out.extend((b"%x\r\n" % len(chunk), chunk, _CRLF))
            else:
                out.append(chunk)
        elif self._frame == FRAME_CHUNKED:
            self.downstream.writelines((b"%x\r\n" % len(chunk), chunk, _CRLF))
        else:
            self.downstream.write(chunk)

    def flush_out(self) -> None:
        """Write what this read produced for the client (called after each upstream read)."""
        out = self._out
        if out is not None:
            self._out = None
            self.downstream.writelines(out)

    def upstream_complete(self, conn: UpstreamConnection) -> None:
        out = self._out
        if self._frame == FRAME_CHUNKED:
            if out is not None:
                out.append(_LAST_CHUNK)
            else:
                self.downstream.write(_LAST_CHUNK)
        if out is not None:  # (flush_out, inline: once per response)
            self._out = None
            self.downstream.writelines(out)
        self.conn = None
        pool = self.pool
        if pool is not None:
            if self.upstream_keep_alive and self.request_done and not self._upstream_paused:
                pool.release(conn)
            else:
                conn.exchange = None
                conn.close()
            if self._pool_held:  # (_release_pool, inline)
                self._pool_held = False
                pool.active_requests -= 1
        if (self._timer is None and self._attempt_timer is None and self._retry_timer is None
                and self._breaker is None and self._retry_slot is None):
            self.downstream.exchange_finished(self, False)  # (finish, with nothing to undo)
        else:
            self.finish()

    def _open_tunnel(self, conn: UpstreamConnection) -> None:
        """CONNECT: the connection to the outside host is open; it carries the tunnel now."""
        if self.downstream.closed:  # the client left: this connection is no one's (no reuse)
            conn.close()
            self._release_pool()
            return
        self.status = 200
        self.response_started = True
        self.downstream.write(_CONNECT_ESTABLISHED)
        self.upstream_upgraded(conn, b"")

    def upstream_upgraded(self, conn: UpstreamConnection, rest: bytes) -> None:
        """101 Switching Protocols: both connections become a raw byte tunnel."""
        self.conn = None
        conn.exchange = None
        self._release_pool()
        self.flush_out()
        self.downstream.start_tunnel(conn, rest, self)  # (kept: recorded at the end; revoke.py)
        self.finish(tunnel=True)

    def upstream_failed(self, conn: UpstreamConnection, reason: str) -> None:
        conn.abort()
        self._upstream_error(conn, reason)

    def upstream_lost(self, conn: UpstreamConnection) -> None:
        if (self.response_started and self._frame == FRAME_CLOSE) or (
            self.response_started and self._frame == FRAME_CHUNKED
            and not self._response_chunked_in
        ):
            # A close-delimited upstream body ends at EOF: that is its normal completion.
            self.upstream_keep_alive = False
            self.upstream_complete(conn)
            return
        self._upstream_error(conn, "upstream_reset")

    def upstream_write_paused(self, paused: bool) -> None:
        self.downstream.pause_for_upstream(paused)

    def downstream_write_paused(self, paused: bool) -> None:
        self._upstream_paused = paused
        if self.conn is not None:
            self.conn.pause_reading(paused)

    # --- ending -----------------------------------------------------------------------------
    def reply(self, reason: str, *, status: int | None = None,
              extra_headers: tuple[tuple[bytes, bytes], ...] = (), body: bytes | None = None,
              grpc_status: int | None = None) -> None:
        """Answer locally with a reason word; abort the client if a response already started.
        ``body``: the answer's own (else the reason's line); ``grpc_status``: what a gRPC
        call is told (an HTTP/2 exchange's; HTTP/1.1 carries no gRPC)."""
        self._cancel_timers()
        if self._out is not None:
            # The response head is still held (until the end of the read it arrived in), so
            # nothing reached the client yet: it gets a clean answer, not a truncated one
            # (a malformed first chunk in the head's own read, say).
            self._out = None
            self.response_started = False
        if self.response_started:
            self.flags = reason
            self.client_keep_alive = False
            self.downstream.abort_after(self)
            return
        if not self.request_done and not self.chunked and not self._declares_body():
            # Answered from the head alone (a redirect, a preflight, a 404...): no body follows
            # it, so the connection stays usable, as for any response.
            self.request_done = True
        close = not self.request_done or not self.client_keep_alive or self.downstream.draining
        head = self.method == b"HEAD"
        # The routed rule's response edits apply to this answer too (a 504 `timeout`, an
        # `overflow`, a fault's abort...), as Envoy's route response_headers_to_add do to the
        # router's local replies; a CORS rule's allow headers with them: the browser may read
        # this answer too (not a network error), as with Envoy's CORS filter.
        data = local_reply(reason, status=status, close=close, extra_headers=extra_headers,
                           head=head, edits=self.response_edits, body=body)
        from proxy.reasons import NO_BODY, REASONS, body_length

        self.status = status or REASONS[reason][0]
        self.flags = reason
        self.bytes_out = 0 if head or self.status in NO_BODY \
            else body_length(reason) if body is None else len(body)
        self.response_started = True
        if close:
            self.client_keep_alive = False
        self.downstream.write(data)
        self.finish()

    def _declares_body(self) -> bool:
        """A Content-Length other than 0 (chunked bodies are `self.chunked`)."""
        for name, value in self.headers:
            if len(name) == 14 and name.lower() == b"content-length":
                return value.strip() != b"0"
        return False

    def finish(self, tunnel: bool = False) -> None:
        if self._timer is not None or self._attempt_timer is not None \
                or self._retry_timer is not None:
            self._cancel_timers()
        breaker = self._breaker
        if breaker is not None:
            self._breaker = None
            breaker.finish()
        if self._retry_slot is not None:
            # (apart from the request slot: taken of the breaker the destination has when
            # the request is retried, which a push may have declared since its dispatch)
            self._retry_slot.retry_finished(self)
        self.downstream.exchange_finished(self, tunnel)

    def _release_pool(self) -> None:
        if self._pool_held and self.pool is not None:
            self._pool_held = False
            self.pool.active_requests -= 1

    def abort(self) -> None:
        """The client went away: drop the upstream side of this request."""
        self._cancel_timers()
        self._drop_attempt()
        self._release_pool()
        breaker = self._breaker
        if breaker is not None:
            self._breaker = None
            breaker.finish()
        if self._retry_slot is not None:
            self._retry_slot.retry_finished(self)

