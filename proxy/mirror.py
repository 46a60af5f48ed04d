"""Traffic mirroring: a fire-and-forget copy of a request to another backend.

The copy never slows or fails the primary: it is dropped if its connection is not ready to take
the body, if its upstream pushes back, or on any error; its response is read and discarded.
"""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from proxy.exchange import Exchange
    from proxy.pools import EndpointPool
    from proxy.routing import Backend
    from proxy.upstream import UpstreamConnection

_MAX_BUFFER = 64 * 1024


class MirrorRequest:
    """The shadow exchange; implements the callbacks an UpstreamConnection makes."""

    __slots__ = ("_buffer", "_buffered", "_done", "_timer", "conn", "dropped", "head",
                 "head_only", "interim", "pool", "response_started", "status",
                 "upstream_keep_alive")

    def __init__(self, pool: EndpointPool, head: bytes, head_only: bool) -> None:
        self.pool = pool
        self.head = head
        self.head_only = head_only
        self.conn: UpstreamConnection | None = None
        self._buffer: list[bytes] = []
        self._buffered = 0
        self._done = False
        self.interim = False
        self.response_started = False  # the final response head arrived
        self.status = 0  # its status (UpstreamConnection reads it at the message's end)
        # Whether the upstream keeps the connection: read with the head, as the parser's flags
        # are reset for the next message by the time the response is complete (and unset by
        # the connection when the shadow sent bytes after it).
        self.upstream_keep_alive = False
        self.dropped = False
        self._timer: asyncio.TimerHandle | None = None

    @classmethod
    def start(cls, ex: Exchange, backend: Backend) -> MirrorRequest | None:
        pool = backend.pick_endpoint()
        if pool is None:
            return None
        mirror = cls(pool, _shadow_head(ex), ex.method == b"HEAD")
        mirror.launch(ex, backend.metric_prefix[3], ex._body_buffer, ex.chunked)
        return mirror

    def launch(self, ex: Exchange, service: str, held: list[bytes] | None,
               chunked: bool) -> None:
        """Count the copy (under ``service``, the metrics label of the service it goes to),
        bound it in time, take the body ``held`` so far (framed as the copy sends it) and send
        it off."""
        ex.downstream.listener.stats.inc("ami_mirrored_requests",
                                         (("destination_service", service),))
        decision = ex.decision
        # As Envoy: the copy gets the route's timeout, so hung copies cannot pile up; without
        # one, the stream idle timeout bounds the whole copy (a shadow is never waited for).
        timeout = decision.timeout if decision is not None else None
        if timeout is None:
            timeout = ex.downstream.listener.limits.stream_idle_timeout or None
        if timeout is not None:
            self._timer = ex.downstream.loop.call_later(timeout, self.drop)
        if held:  # what came during a fault delay, held for the first try: the copy's too
            self._buffer.extend(held)
            self._buffered = ex._buffered
        if ex.request_done:
            self.body_done(chunked)
        conn = self.pool.take_idle()
        if conn is not None:
            self._send_on(conn)
        else:
            ex.downstream.loop.create_task(self._connect())

    async def _connect(self) -> None:
        try:
            conn = await self.pool.connect()
        except (TimeoutError, OSError):
            self.drop()  # its timer and the body held for it go now, not at the timeout
            return
        if self.dropped:
            self.pool.release(conn)
            return
        self._send_on(conn)

    def _send_on(self, conn: UpstreamConnection) -> None:
        self.conn = conn
        conn.send(self, self.head)
        if self._buffer:
            conn.writelines(self._buffer)
            self._buffer = []

    # --- the primary request's body is teed here --------------------------------------------
    def body(self, chunk: bytes, chunked: bool) -> None:
        if self.dropped:
            return
        parts = [b"%x\r\n" % len(chunk), chunk, b"\r\n"] if chunked else [chunk]
        if self.conn is None:
            self._buffered += len(chunk)
            if self._buffered > _MAX_BUFFER:
                self.drop()
            else:
                self._buffer.extend(parts)
            return
        self.conn.writelines(parts)

    def body_done(self, chunked: bool) -> None:
        self._done = True
        if chunked and not self.dropped:
            if self.conn is None:
                self._buffer.append(b"0\r\n\r\n")
            else:
                self.conn.write(b"0\r\n\r\n")

    def drop(self) -> None:
        self.dropped = True
        self._buffer = []
        self._end()
        if self.conn is not None:
            conn, self.conn = self.conn, None
            conn.abort()

    # --- UpstreamConnection callbacks -------------------------------------------------------
    def upstream_headers(self, conn: UpstreamConnection, status: int) -> bool:
        if status < 200:
            self.interim = True
        else:
            self.response_started = True
            self.status = status
            self.upstream_keep_alive = conn.parser.should_keep_alive()
        return self.head_only

    def upstream_body(self, chunk: bytes) -> None:
        pass  # mirrored responses are discarded

    def flush_out(self) -> None:
        pass

    def _end(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    def upstream_complete(self, conn: UpstreamConnection) -> None:
        self.conn = None
        self._end()
        if self._done and self.upstream_keep_alive:
            self.pool.release(conn)
        else:
            conn.exchange = None
            conn.close()

    def upstream_failed(self, conn: UpstreamConnection, reason: str) -> None:
        self.conn = None
        self._end()
        conn.abort()

    def upstream_lost(self, conn: UpstreamConnection) -> None:
        self.conn = None
        self._end()

    def upstream_upgraded(self, conn: UpstreamConnection, rest: bytes) -> None:
        self.drop()

    def upstream_write_paused(self, paused: bool) -> None:
        if paused:
            self.drop()  # never let the shadow slow the primary down


def _shadow_head(ex: Exchange) -> bytes:
    """The primary's request head with `-shadow` added to the host (before any port)."""
    head = ex._upstream_head()
    lines = head.split(b"\r\n")
    for i, line in enumerate(lines[1:], 1):
        name, sep, value = line.partition(b":")
        if sep and name.strip().lower() == b"host":
            lines[i] = name + b": " + shadow_host(value.strip())
            break
    return b"\r\n".join(lines)


def shadow_host(host: bytes) -> bytes:
    """`host` with `-shadow` added before any port: where a mirrored copy says it goes."""
    base, colon, port = host.rpartition(b":")
    return base + b"-shadow:" + port if colon and port.isdigit() else host + b"-shadow"
