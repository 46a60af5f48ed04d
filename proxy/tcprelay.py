"""One proxied TCP connection: an app's plain socket joined to a peer sidecar's `ami-tcp` mTLS.

The same `TcpSession` serves both sidecars: on the caller's (role `client`) the app socket is
the connection the app opened, on the destination's (role `server`) the one to its app. Bytes
go both ways as they arrive, with backpressure (a side that cannot write pauses the reads of
the other) and half-close (an app's FIN becomes a FIN frame, a FIN frame the app's FIN); the
session ends, and is recorded, once both ways have finished or either side is gone.
Byte counts are two integer additions per read, turned into metrics only when the connection
ends or `/metrics` is scraped (`flush`).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from time import monotonic
from typing import TYPE_CHECKING, Any

from proxy.accessline import wall_start
from proxy.tcpflush import close_flushing
from proxy.tcpwire import FIN, HEADER, OK, FrameReader, WireError, first_frame

if TYPE_CHECKING:
    from proxy.metrics import RequestStats
    from proxy.tcpidle import IdleTimer

log = logging.getLogger("ami.proxy.tcp")
_P_START, _P_PEER = 1, 2  # why the app socket is not read: not joined yet, peer backed up


class TcpSession:
    """Both ends of one connection, its byte counts and its metric labels."""

    __slots__ = (
        "_app_paused",
        "_flushed",
        "_recorded",
        "answered",
        "app",
        "app_bytes",
        "app_fin",
        "authority",
        "authz",
        "client",
        "client_address",
        "connect_answer",
        "early",
        "flags",
        "held",
        "idle",
        "labels",
        "listener",
        "log_filter",
        "log_out",
        "mesh",
        "mesh_bytes",
        "mesh_fin",
        "on_answer",
        "on_end",
        "on_hello",
        "on_refuse",
        "pending_labels",
        "reader",
        "start",
        "stats",
        "upstream",
    )

    def __init__(self, stats: RequestStats, client: bool, listener: str,
                 loop: asyncio.AbstractEventLoop) -> None:
        self.stats = stats
        self.client = client  # the caller's sidecar (else the destination's)
        self.client_address: str | None = None  # the connecting peer's, for the access log
        self.listener = listener  # access log: tcp_upstream | outbound | inbound | gateway
        # time.monotonic(), as a request's start: uvloop's loop.time() is whole milliseconds
        # read once per loop iteration (one call per connection, not per byte)
        self.start = monotonic()
        self.app: asyncio.Transport | None = None
        self.mesh: asyncio.Transport | None = None
        self.app_bytes = 0  # read from the app socket
        self.mesh_bytes = 0  # written to the app socket (from the peer)
        self.app_fin = False  # the app finished sending (its FIN passed on)
        self.mesh_fin = False  # the peer finished sending
        self.flags = "-"
        # reporter, source_workload, source_version, destination_service,
        # destination_workload, destination_version, connection_security_policy
        self.labels: tuple[str, ...] = ()
        # client role: the labels known while its endpoint is being connected (version and
        # security unknown yet), counted under if the app leaves before that ends
        self.pending_labels: tuple[str, ...] = ()
        self.authority: str | None = None  # what the caller asked for (client role)
        # (refusing policy, dry-run verdict, auditing policy) for the access log
        # (proxy.authzstats.log_fields)
        self.authz: tuple[str | None, str | None, str | None] | None = None
        self.upstream: str | None = None  # the endpoint, or the local app
        self.early = b""  # the app's bytes read before the join (after a CONNECT's head)
        # A CONNECT's `200`, owed until an endpoint accepted (then written before any byte of
        # the peer's); None once written, or for a connection that is no CONNECT tunnel.
        self.connect_answer: bytes | None = None
        self.log_out: Any = None  # the access log's sink (proxy/accesslog.py), when on
        self.log_filter: Any = None  # a Telemetry's filter, with log_out
        self.on_end: Callable[[TcpSession], None] | None = None
        self.on_hello: Callable[[bytes], None] | None = None  # server role: the caller's hello
        self.on_answer: Callable[[bytes], None] | None = None  # client role: the answer
        # server role: how to end the connection for a reason (answering it if still owed)
        self.on_refuse: Callable[[str], None] | None = None
        self.answered = False  # server role: the answer frame was sent
        # server role: the peer's bytes read before the app's connection was up (None: none
        # are held, the app is connected or the connection is refused)
        self.held: list[bytes] | None = None
        self.reader = FrameReader(self._first, self._from_mesh, self._mesh_eof)
        self.idle: IdleTimer | None = None  # client role: the idle timeout, once joined
        self._app_paused = 0
        self._flushed = (0, 0)
        self._recorded = False

    # --- set-up ---------------------------------------------------------------------------
    def opened(self, labels: tuple[str, ...]) -> None:
        """Count the connection as opened under these labels (once they are known)."""
        self.labels = labels
        self.stats.inc("ami_tcp_connections_opened", self._label_pairs())
        self.stats.tcp_live.add(self)

    def attach_app(self, transport: asyncio.Transport) -> None:
        """The app socket: not read until `join` (the answer frame must go first)."""
        self.app = transport
        self._pause_app(_P_START, True)

    def hold_mesh(self) -> None:
        """Server role, the hello accepted: until `join`, read no more of the peer, and keep
        what it sent after the hello (at most the rest of one read) for the app."""
        self.held = []
        if self.mesh is not None:
            self.mesh.pause_reading()

    def join(self) -> None:
        """Both ends are up (the answer was `ok`): read the app from now on."""
        self._pause_app(_P_START, False)
        if self.early:
            early, self.early = self.early, b""
            self.from_app(early)
        held = self.held
        if held is not None:  # server role: read the peer again, its early bytes first
            self.held = None
            mesh = self.mesh
            if mesh is not None and not mesh.is_closing():
                mesh.resume_reading()  # before writing: a full app socket pauses it again
            for chunk in held:
                self._from_mesh(chunk)
            if self.mesh_fin:
                self._mesh_eof()

    def watch_idle(self, timeout: float) -> None:
        """End the connection once idle for ``timeout`` seconds (proxy.tcpidle)."""
        from proxy.tcpidle import IdleTimer

        self.idle = IdleTimer(self, timeout, asyncio.get_running_loop())

    def new_attempt(self) -> None:
        """Client role: a fresh peer connection (failover), whose answer is read afresh."""
        self.reader = FrameReader(self._first, self._from_mesh, self._mesh_eof)

    # --- app side -------------------------------------------------------------------------
    def from_app(self, data: bytes) -> None:
        mesh = self.mesh
        if mesh is None:
            return
        if self._app_paused & _P_START:  # read before pausing took effect: held till joined
            self.early += data
            return
        self.app_bytes += len(data)
        mesh.writelines((HEADER.pack(len(data)), data))

    def app_eof(self) -> bool:
        """The app's FIN: passed on as a FIN frame; its socket stays open for the answer."""
        self.app_fin = True
        if self.mesh is not None and not self.mesh.is_closing():
            self.mesh.write(FIN)
        if self.mesh_fin:
            self.close()
            return False
        return True

    def app_lost(self, exc: Exception | None) -> None:
        self.app = None
        if exc is not None and not self.app_fin:
            log.debug("app connection lost: %s", exc)
        self.close()

    # --- mesh side ------------------------------------------------------------------------
    def _first(self, payload: bytes) -> None:
        if self.connect_answer is not None and payload == OK and self.app is not None:
            self.app.write(self.connect_answer)  # before the bytes after `ok` (a banner)
            self.connect_answer = None
        handler = self.on_answer if self.client else self.on_hello
        if handler is not None:
            handler(payload)

    def _from_mesh(self, chunk: bytes) -> None:
        app = self.app
        if app is not None:
            self.mesh_bytes += len(chunk)
            app.write(chunk)
        elif self.held is not None:
            self.held.append(chunk)

    def _mesh_eof(self) -> None:
        self.mesh_fin = True
        app = self.app
        if app is not None and app.can_write_eof() and not app.is_closing():
            app.write_eof()
        if self.app_fin:
            self.close()

    def from_mesh(self, data: bytes | memoryview) -> None:
        try:
            self.reader.feed(data)
        except WireError as exc:
            if self.client:
                log.warning("peer sidecar broke the ami-tcp framing: %s", exc)
                self.fail("upstream_protocol_error")
            else:  # anyone reaching the inbound port may send garbage: the metrics tell
                log.debug("caller broke the ami-tcp framing: %s", exc)
                (self.on_refuse or self.fail)("bad_request")

    def mesh_lost(self) -> None:
        self.mesh = None
        if self.on_answer is not None:  # still connecting: that attempt failed, no more
            self.on_answer(b"upstream_connect_failure")
            return
        self.close()

    def answer(self, word: bytes) -> None:
        """Server role: the answer frame (`ok`, or a reason word before closing)."""
        self.answered = True
        if self.mesh is not None:
            self.mesh.write(first_frame(word))

    # --- backpressure -----------------------------------------------------------------------
    def app_write_paused(self, paused: bool) -> None:
        """The app's socket is full: stop reading the peer (and resume)."""
        mesh = self.mesh
        if mesh is not None and not mesh.is_closing():
            (mesh.pause_reading if paused else mesh.resume_reading)()

    def mesh_write_paused(self, paused: bool) -> None:
        self._pause_app(_P_PEER, paused)

    def _pause_app(self, bit: int, on: bool) -> None:
        before = self._app_paused
        after = before | bit if on else before & ~bit
        self._app_paused = after
        app = self.app
        if app is None or app.is_closing() or bool(before) == bool(after):
            return
        (app.pause_reading if after else app.resume_reading)()

    # --- end ------------------------------------------------------------------------------
    def fail(self, reason: str) -> None:
        """End the connection for ``reason`` (a reason word: its `response_flags`)."""
        if self.flags == "-":
            self.flags = reason
        if self.app is not None and self.connect_answer is not None:
            self.connect_answer = None  # a CONNECT still unanswered: say why
            self.app.write(_refusal(reason))
        self.close()

    def close(self) -> None:
        """Close both ends (each flushes what it holds, within proxy.tcpflush's grace) and
        record the connection, once."""
        for end in (self.app, self.mesh):
            if end is not None and not end.is_closing():
                close_flushing(end)
        if self._recorded:
            return
        self._recorded = True
        if self.idle is not None:
            self.idle.cancel()
            self.idle = None  # no cycle left between the two
        if not self.labels and self.pending_labels:
            # The app left while its connection was being made: counted all the same (the
            # destination's sidecar counts the connection it was given).
            self.opened(self.pending_labels)
            if self.flags == "-":
                self.flags = "downstream_disconnect"
        self.stats.tcp_live.discard(self)
        if self.labels:
            self.flush()
            self.stats.inc("ami_tcp_connections_closed", self._label_pairs())
        if self.log_out is not None:
            self._log()
        tap = self.stats.tcp_tap
        if tap is not None:
            tap(self)
        if self.on_end is not None:
            self.on_end(self)

    @property
    def ended(self) -> bool:
        """Whether the connection ended (recorded, its end hooks run)."""
        return self._recorded

    @property
    def request_bytes(self) -> int:
        """Bytes from caller to destination (Istio's received bytes)."""
        return self.app_bytes if self.client else self.mesh_bytes

    @property
    def response_bytes(self) -> int:
        """Bytes from destination to caller (Istio's sent bytes)."""
        return self.mesh_bytes if self.client else self.app_bytes

    def flush(self) -> None:
        """Add the bytes moved since the last flush to the byte counters."""
        received, sent = self.request_bytes, self.response_bytes
        old_received, old_sent = self._flushed
        if received == old_received and sent == old_sent:
            return
        self._flushed = (received, sent)
        pairs = self._label_pairs()
        self.stats.inc("ami_tcp_received_bytes", pairs, received - old_received)
        self.stats.inc("ami_tcp_sent_bytes", pairs, sent - old_sent)

    def _label_pairs(self) -> tuple[tuple[str, str], ...]:
        return (*zip(TCP_LABELS, (*self.labels, self.flags), strict=True),)

    def _log(self) -> None:
        import json

        from proxy.reasons import NO_FLAGS

        if self.log_filter is not None:
            from proxy.listener import FilterView

            if not self.log_filter(FilterView(0, self.flags, self.authority, self.authz)):
                return

        labels = self.labels or ("", "unknown", "unknown", "unknown")
        line = {"start_time": wall_start(self.start), "listener": self.listener, "method": None,
                "path": None, "authority": self.authority, "status": None,
                "reason": self.flags if self.flags != "-" else NO_FLAGS,
                "duration_ms": round((monotonic() - self.start) * 1000, 3),
                "bytes_received": self.request_bytes, "bytes_sent": self.response_bytes,
                "request_id": None, "source": labels[1], "destination_service": labels[3],
                "upstream": self.upstream, "protocol": "TCP", "grpc_status": None,
                "client_address": self.client_address}
        if self.authz is not None:
            from proxy.authzstats import LOG_FIELDS

            line.update((k, v) for k, v in zip(LOG_FIELDS, self.authz,
                                               strict=True) if v is not None)
        self.log_out.write(json.dumps(line, separators=(",", ":")) + "\n")


TCP_LABELS = ("reporter", "source_workload", "source_version", "destination_service",
              "destination_workload", "destination_version", "connection_security_policy",
              "response_flags")


class AppEnd(asyncio.Protocol):
    """The app's plain socket (accepted from it, or opened to it)."""

    __slots__ = ("session",)

    def __init__(self, session: TcpSession) -> None:
        self.session = session

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.session.attach_app(transport)  # type: ignore[arg-type]

    def data_received(self, data: bytes) -> None:
        self.session.from_app(data)

    def eof_received(self) -> bool:
        return self.session.app_eof()

    def connection_lost(self, exc: Exception | None) -> None:
        self.session.app_lost(exc)

    def pause_writing(self) -> None:
        self.session.app_write_paused(True)

    def resume_writing(self) -> None:
        self.session.app_write_paused(False)


class MeshEnd(asyncio.Protocol):
    """The mTLS connection to or from the peer sidecar, framed (proxy.tcpwire)."""

    __slots__ = ("session",)

    def __init__(self, session: TcpSession) -> None:
        self.session: TcpSession | None = session  # None: a failed attempt, cut loose

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        if self.session is not None:
            self.session.mesh = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        if self.session is not None:
            self.session.from_mesh(data)

    def eof_received(self) -> bool:
        return False  # the peer's close_notify: the connection is over (FIN frames half-close)

    def connection_lost(self, exc: Exception | None) -> None:
        if self.session is not None:
            self.session.mesh_lost()

    def pause_writing(self) -> None:
        if self.session is not None:
            self.session.mesh_write_paused(True)

    def resume_writing(self) -> None:
        if self.session is not None:
            self.session.mesh_write_paused(False)


def _refusal(reason: str) -> bytes:
    """The HTTP answer to a CONNECT whose connection failed for ``reason`` (a word the peer
    sent that is no reason of ours: `upstream_connect_failure`)."""
    from proxy.reasons import REASONS, local_reply

    return local_reply(reason if reason in REASONS else "upstream_connect_failure", close=True)


def answer_word(payload: bytes) -> str:
    """The answer frame as a reason word (`ok` for a connection accepted)."""
    return "ok" if payload == OK else payload.decode("ascii", "replace")[:64]
