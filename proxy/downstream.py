"""The client side of the proxy: one asyncio Protocol per accepted connection.

It parses requests with httptools (the head's checks and rewrites are in `requesthead`),
enforces sizes and slow-client limits, keeps pipelined requests in order and hands each request
to an `Exchange`. It decides no routing policy itself.
"""

from __future__ import annotations

import asyncio
import logging
from collections import deque
from typing import TYPE_CHECKING

import httptools

from proxy import meshtunnel, recvbuf, requesthead, tlswrite
from proxy.reasons import local_reply
from proxy.requesthead import Reject

if TYPE_CHECKING:
    from proxy.exchange import Exchange
    from proxy.listener import Listener
    from proxy.tcpclient import TcpTarget
    from proxy.tcprelay import TcpSession
    from proxy.upstream import UpstreamConnection

log = logging.getLogger("ami.proxy")
_LINGER_SECONDS = 2.0  # how long a rejected client may keep sending before we close
# While draining, an idle keep-alive connection is closed once idle this long: past the 1 s
# after which a caller's sidecar checks a pooled connection for a FIN before reusing it
# (proxy.pools._QUICK_CLOSE), so a caller never writes a request into our close.
_DRAIN_IDLE = 2.0

_P_PIPELINE, _P_BUFFER, _P_UPSTREAM, _P_TUNNEL = 1, 2, 4, 8


class DownstreamProtocol(asyncio.BaseProtocol):
    """Parses client requests and keeps their responses in order.

    A plain-TCP connection (uvloop calls ``data_received``); TLS ones are TlsDownstreamProtocol.
    Based on BaseProtocol rather than Protocol so that the TLS subclass's ``get_buffer`` is
    honoured (uvloop treats every asyncio.Protocol instance as unbuffered).
    """

    # Every attribute __init__ sets is a slot: past 30 attributes CPython 3.11 keeps an
    # object's in a plain dict, and each read on the request path costs more (-2.5% of
    # the instructions per request, docs/benchmarks.md). `__dict__` takes the rest (a
    # class default overridden, a method replaced); tests/test_proxy_slots.py checks.
    __slots__ = (
        "__dict__", "__weakref__", "_chunked", "_conn_tokens", "_connection_seen",
        "_error_after_current", "_expect_continue", "_has_request_id", "_head_bytes",
        "_header_budget", "_headers", "_host", "_in_head", "_lingering", "_parsing", "_paused",
        "_special", "_timeout_override", "_tunnel", "_tunnel_ex", "_tunnel_preamble",
        "_upgrade_seen", "_upgrade_value", "_url", "_watched", "_watched_progress",
        "_watched_since", "_xfcc_kept", "_xff", "client_ip", "closed", "current", "draining",
        "head_started", "idle_since", "listener", "loop", "mesh_connect", "parser",
        "peer_gateway_cert", "peer_identity", "peer_namespace", "peer_service", "peer_version",
        "pending", "plaintext_refused", "security", "tcp_connect", "tcp_session", "transport",
        "tunnel_host", "xfcc_line", "xff_line")

    # What a request cut off by this connection's end is logged as: the client left, unless
    # the proxy closed it at its drain deadline (Server.shutdown).
    lost_reason = "downstream_disconnect"
    # the server name (SNI) of a connection the HTTPS gateway terminated (proxy.misdirected)
    server_name: str | None = None
    # set with it when the ClientHello was read before the handshake (proxy.mtls): that name,
    # not the SNI callback's, is this handshake's on a resumed TLS 1.2 session
    hello_read = False
    # the client's (address, port) from the PROXY protocol header the gateway's acceptor read
    # before this connection was made (--proxy-protocol, proxy.proxyread): its peer's stand-in
    proxied: tuple[str, int] | None = None

    def __init__(self, listener: Listener) -> None:
        self.listener = listener
        self.loop = listener.loop
        self.transport: asyncio.Transport | None = None
        self.parser = httptools.HttpRequestParser(self)
        self.client_ip = b"unknown"
        self.xff_line = b"x-forwarded-for: unknown\r\n"  # for a client that sent none
        self.peer_identity: str | None = None  # verified SPIFFE id of an mTLS peer
        # its certificate carries the gateway marker (read with the id, once per connection)
        self.peer_gateway_cert = False
        self.peer_service: str | None = None
        self.peer_namespace: str | None = None
        self.peer_version = "unknown"
        self.security = "none"
        # The x-forwarded-client-cert line for this connection's requests, made once: an
        # inbound mTLS peer's id, or a gateway's verified client certificate
        # (--gateway-client-ca, proxy.clientcert); b"" for none.
        self.xfcc_line = b""
        # A trusted peer's XFCC for the request being parsed (requesthead)
        self._xfcc_kept: bytes | None = None
        self.closed = False
        self.draining = False
        self.plaintext_refused = False  # plaintext on an inbound listener that turned STRICT
        self.current: Exchange | None = None
        self.pending: deque[Exchange] = deque()
        self._parsing: Exchange | None = None
        self._paused = 0
        self._tunnel: UpstreamConnection | None = None
        # the upgrade (or CONNECT) that opened the tunnel: its bytes are counted, and it is
        # recorded (metrics, access log) when the tunnel ends, with the whole duration
        self._tunnel_ex: Exchange | None = None
        self._tunnel_preamble: list[bytes] | None = None
        # CONNECT to a mesh service (proxy.meshtunnel): its authority once answered, then,
        # inside the tunnel, the authority of requests that name none
        self.mesh_connect: bytes | None = None
        self.tunnel_host: bytes | None = None
        self.tcp_connect: TcpTarget | None = None  # CONNECT to a TCP service (its target)
        self.tcp_session: TcpSession | None = None  # inbound: an `ami-tcp` connection's
        self._error_after_current: str | None = None  # reason of a pipelined rejection
        self._lingering = False
        # per-request parse state
        self._url = b""
        self._headers: list[tuple[bytes, bytes]] = []
        self._host: bytes | None = None
        self._xff: bytes | None = None
        self._has_request_id = False
        self._chunked = False
        self._expect_continue = False
        self._upgrade_value: bytes | None = None
        self._upgrade_seen = False  # an Upgrade header (any value)
        # a header of a special kind set some of these fields (requesthead.on_header): the
        # next request resets them, and the head takes the general path
        self._special = False
        self._conn_tokens: list[bytes] | None = None
        self._connection_seen = False  # a Connection or Proxy-Connection header (any value)
        self._timeout_override: float | None = None
        self._head_bytes = 0
        self._header_budget = 0  # header bytes still allowed in the head being parsed
        self._in_head = False
        # timestamps checked by the listener's periodic sweep (no per-request timers)
        self.head_started = 0.0
        self.idle_since = 0.0
        # the in-flight exchange's progress (bytes either way) as last seen by the sweep
        self._watched: Exchange | None = None
        self._watched_progress = 0
        self._watched_since = 0.0

    # --- asyncio.Protocol -------------------------------------------------------------------
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]  # uvloop's TCPTransport
        peer = self.proxied or transport.get_extra_info("peername")
        if peer:
            self.client_ip = str(peer[0]).encode()
            self.xff_line = b"x-forwarded-for: " + self.client_ip + b"\r\n"
        self.idle_since = self.loop.time()
        ssl_object = transport.get_extra_info("ssl_object")
        if (ssl_object is not None and self.listener.kind == "inbound"
                and not self._identify_peer(ssl_object)):
            # Chain-valid but not a workload identity (no SPIFFE id, or several): refused like
            # a failed handshake, before any byte is read.
            self.listener.stats.inc("ami_tls_handshake_failures",
                                    (("listener", self.listener.kind),))
            transport.abort()  # type: ignore[attr-defined]
            self.closed = True
            return
        if ssl_object is not None and self.listener.kind == "gateway":
            from proxy.servingcert import served_name

            if not self.hello_read:
                self.server_name = served_name(ssl_object)
            der = ssl_object.getpeercert(binary_form=True)
            if der:  # asked for (--gateway-client-ca) and verified in the handshake
                from proxy.clientcert import xfcc_line

                self.xfcc_line = xfcc_line(der)
        if ssl_object is None and not self.listener.plaintext_allowed:
            # Plaintext that got past the acceptor while the mesh turned STRICT.
            self.listener.stats.inc("ami_tls_handshake_failures",
                                    (("listener", self.listener.kind),))
            transport.abort()  # type: ignore[attr-defined]
            self.closed = True
            return
        if not self.listener.admit(self):
            self.listener.stats.inc("ami_connections_refused", (("listener", self.listener.kind),))
            transport.write(local_reply("too_many_connections", close=True))  # type: ignore[attr-defined]
            if self in self.listener.refused:
                self._linger()  # (the request it is about to send would reset a plain close)
            else:
                transport.close()
                self.closed = True
            return
        if ssl_object is None and self.listener.reads_hello:
            from proxy import tlspassthrough

            tlspassthrough.take_over(self)  # TLS to pass through, or HTTP as ever
            return
        if ssl_object is not None:
            alpn = ssl_object.selected_alpn_protocol()
            if alpn == "h2":
                from proxy.h2downstream import take_over

                take_over(self, b"", tls=True)  # a sidecar carrying HTTP/2 requests (gRPC)
            elif alpn == "ami-tcp" and self.listener.kind == "inbound":
                from proxy import tcpinbound

                tcpinbound.take_over(self)  # a sidecar carrying a TCP service's bytes

    def _identify_peer(self, ssl_object: object) -> bool:
        """Read the peer's SPIFFE id; False when its certificate does not carry exactly one."""
        from proxy.identity import IdentityError
        from proxy.tls import verified_peer

        self.security = "mutual_tls"
        try:
            self.peer_identity, self.peer_gateway_cert = verified_peer(ssl_object)  # type: ignore[arg-type]
        except IdentityError as exc:
            log.debug("inbound peer refused: %s", exc)
            return False
        # spiffe://<trust-domain>/ns/<namespace>/sa/<service>, exactly: an id that merely
        # contains these segments (…/sa/<service>/more) names no service or namespace.
        parts = self.peer_identity.split("/")
        if len(parts) == 7 and parts[3] == "ns" and parts[5] == "sa" and parts[4] and parts[6]:
            self.peer_namespace, self.peer_service = parts[4], parts[6]
        if self.listener.xfcc_by:  # set whenever there is an identity to handshake with
            self.xfcc_line = (b"x-forwarded-client-cert: By=" + self.listener.xfcc_by
                              + b";URI=" + self.peer_identity.encode() + b"\r\n")
        return True

    def data_received(self, data: bytes | memoryview) -> None:
        """Parse what arrived; ``data`` may be a view of the shared receive buffer."""
        if self._lingering:
            return  # after a rejection: read and drop, so the client gets our answer
        if self._tunnel is not None:
            self._tunnel_ex.bytes_in += len(data)  # type: ignore[union-attr]
            self._tunnel.write(bytes(data))
            return
        if self._tunnel_preamble is not None:
            self._tunnel_preamble.append(bytes(data))  # client bytes before the upstream's 101
            self._set_pause(_P_TUNNEL, True)
            return
        if self._in_head:
            self._head_bytes += len(data)
        try:
            self.parser.feed_data(data)
        except Reject as rej:
            self._reject(rej.reason)
            return
        except httptools.HttpParserUpgrade as upgrade:
            rest = bytes(data[upgrade.args[0]:])
            self._tunnel_preamble = [rest] if rest else []
            if self.mesh_connect is not None:  # a CONNECT into the mesh, answered already
                self.loop.call_soon(meshtunnel.enter, self)
            return
        except httptools.HttpParserError as exc:
            # httptools wraps whatever a callback raised (our Reject, or a bug) in
            # HttpParserCallbackError and keeps the original as __context__.
            cause = exc.__context__
            if isinstance(cause, Reject):
                self._reject(cause.reason)
            elif cause is not None and not isinstance(cause, httptools.HttpParserError):
                log.error("internal error while handling a request", exc_info=cause)
                self._reject("internal_error")
            elif (self.tunnel_host is not None and self.current is None
                  and bytes(data[:2]) == meshtunnel.TLS_RECORD):
                meshtunnel.refuse_tls(self)
            elif not self._http2(data, str(exc)) and not self._plaintext_tcp(data):
                self._reject(_parser_error_reason(str(exc)))
            return
        except Exception:
            # A bug must cost one connection, never the process: log it and answer 500.
            log.exception("internal error while handling a request")
            self._reject("internal_error")
            return
        if self._in_head:
            limits = self.listener.limits
            if len(self._url) > limits.max_request_line:
                self._reject("uri_too_long")
            elif self._head_bytes > limits.max_header_bytes:
                self._reject("headers_too_large")

    def _http2(self, data: bytes | memoryview, error: str) -> bool:
        """httptools stopped at `PRI * HTTP/2.0`: a client speaking HTTP/2 with prior
        knowledge (gRPC in plaintext). Taken over when the preface opens this read, or this
        read holds the end of the preface whose start came in earlier reads (TCP may cut it
        anywhere), and no HTTP/1.1 request is in flight; else it is the 400 it was."""
        from proxy.h2downstream import PREFACE, take_over

        if self.current is not None or self.pending or self.closed:
            return False
        if bytes(data[:18]) != PREFACE[:18]:
            cut = _preface_cut(bytes(data[:len(PREFACE)])) if "PRI" in error else None
            if cut is None:
                return False
            data = PREFACE + bytes(data[cut:])
        take_over(self, bytes(data), tls=isinstance(self, TlsDownstreamProtocol))
        return True

    def _plaintext_tcp(self, data: bytes | memoryview) -> bool:
        """httptools stopped at the NUL of `ami-tcp`'s plaintext preamble (proxy.tcpwire): a
        caller's sidecar without mTLS carrying a TCP service's bytes. Taken over only on the
        inbound listener, in plaintext, when the preamble opens this read and no request is in
        flight (proxy.tcpinbound refuses it unless the app is `tcp`), or when this read is the
        start of the preamble (the rest is awaited); else it is the 400 it was."""
        from proxy.tcpwire import PREAMBLE

        head = bytes(data[:len(PREAMBLE)])
        if (self.listener.kind != "inbound" or self.security != "none"
                or self.current is not None or self.pending or self.closed
                or not PREAMBLE.startswith(head)):
            return False
        from proxy import tcpinbound

        if head == PREAMBLE:
            tcpinbound.take_over(self, bytes(data[len(PREAMBLE):]))
        else:  # the preamble split across reads: its rest is awaited
            tcpinbound.await_preamble(self, head)
        return True

    def eof_received(self) -> bool | None:
        if self._lingering:
            self._close()
            return False
        if self._tunnel is not None:  # the tunnel's far end may still answer
            return self._tunnel.half_close(self.transport, from_client=True)
        if self._parsing is not None:
            # In the middle of a request body: it can never complete, so the client is gone,
            # as after a reset (Envoy treats a client's FIN on HTTP as a close too). Left open,
            # the request would hold both connections until the stream idle timeout.
            self._close()
            return False
        # Half-close from the client: finish the in-flight response, then close.
        if self.current is not None:
            self.current.client_keep_alive = False
            return True
        return False

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        self.transport = None  # see UpstreamConnection.connection_lost: frees the TLS state now
        self.listener.release(self)
        if self._tunnel is not None:
            self._tunnel.close()
            self._tunnel = None
        tunnel_ex = self._tunnel_ex
        if tunnel_ex is not None:
            # The tunnel ended (either end closed, or the proxy at its drain deadline): the
            # upgrade is recorded now, as Envoy logs an upgraded stream when it ends.
            self._tunnel_ex = None
            if self.lost_reason == "drain_timeout":
                tunnel_ex.flags = "drain_timeout"
            self.listener.record(tunnel_ex)
        for ex in (self.current, *self.pending):
            if ex is not None:
                ex.abort()
                if not ex.response_started or ex.flags == "-":
                    # Before the response, or in the middle of its body: either way the client
                    # did not get it all (a started response keeps the status it was sent with).
                    ex.flags = self.lost_reason
                    self.listener.record(ex)
        self.current = None
        self.pending.clear()

    def pause_writing(self) -> None:
        if self.current is not None:
            self.current.downstream_write_paused(True)
        elif self._tunnel is not None:
            self._tunnel.pause_reading(True)

    def resume_writing(self) -> None:
        if self.current is not None:
            self.current.downstream_write_paused(False)
        elif self._tunnel is not None:
            self._tunnel.pause_reading(False)

    # --- httptools callbacks (the head's checks live in proxy.requesthead) ------------------
    on_message_begin = requesthead.on_message_begin
    on_url = requesthead.on_url
    on_header = requesthead.on_header

    def on_headers_complete(self) -> None:
        if self.plaintext_refused:
            # The listener turned STRICT: no new request on this plaintext connection. It
            # closes now, or after the response in flight (read no more meanwhile).
            self._set_pause(_P_PIPELINE, True)
            if self.current is None:
                self._close()
            return
        ex = requesthead.exchange_from_head(self)
        self._parsing = ex
        if self.current is None:
            self.current = ex
            try:
                ex.start()
            except Exception:
                # A bug in a step: answer it. (Left to the parser's handler, the error would
                # wait behind the in-flight request, which is this one, forever.)
                ex.internal_error()
        else:
            self.pending.append(ex)
            self._set_pause(_P_PIPELINE, True)

    def on_body(self, body: bytes) -> None:
        ex = self._parsing
        if ex is not None:
            ex.request_body(body)

    def on_message_complete(self) -> None:
        ex = self._parsing
        self._parsing = None
        # (No idle_since here: the connection is not idle until its exchange finishes, and
        # exchange_finished sets it then.)
        if ex is not None:
            ex.request_complete()

    # --- used by exchanges ------------------------------------------------------------------
    def write(self, data: bytes) -> None:
        if self.transport is not None and not self.closed:
            self.transport.write(data)

    def writelines(self, parts: tuple[bytes, ...] | list[bytes]) -> None:
        if self.transport is not None and not self.closed:
            self.transport.writelines(parts)

    def pause_for_buffer(self, paused: bool) -> None:
        self._set_pause(_P_BUFFER, paused)

    def pause_for_upstream(self, paused: bool) -> None:
        self._set_pause(_P_UPSTREAM, paused)

    def exchange_finished(self, ex: Exchange, tunnel: bool) -> None:
        if tunnel:
            return  # recorded when the tunnel ends (connection_lost)
        self.listener.record(ex)
        if self.closed:
            return
        if ex is not self.current:
            return
        self.current = None
        if self._paused:
            self._set_pause(_P_BUFFER | _P_UPSTREAM, False)
        if not ex.request_done:
            # An early response: the client may still be sending its body; closing now with
            # that unread would make the kernel reset the connection, maybe before the client
            # read the response.
            self._linger()
            return
        if not ex.client_keep_alive or ex.upgrade or self.plaintext_refused:  # (not a tunnel)
            self._close()
            return
        if self._error_after_current is not None:
            self._answer_rejection(self._error_after_current)
            return
        self.idle_since = self.loop.time()
        if self.pending:
            nxt = self.pending.popleft()
            self.current = nxt
            if not self.pending:
                self._set_pause(_P_PIPELINE, False)
            try:
                nxt.start()
            except Exception:
                nxt.internal_error()
        elif self._paused:
            self._set_pause(_P_PIPELINE, False)
        # Draining, yet this response promised keep-alive (its head left before the drain
        # began): the client may reuse the connection at once, so it is not closed under it
        # here; its next request is answered with `connection: close`, or the sweep closes it
        # once idle for _DRAIN_IDLE.

    def abort_after(self, ex: Exchange) -> None:
        """A response failed mid-body: the client must see a truncated message, so abort."""
        self.listener.record(ex)
        self.current = None
        if self.transport is not None:
            self.transport.abort()

    def start_tunnel(self, conn: UpstreamConnection, rest: bytes, ex: Exchange) -> None:
        self._tunnel = conn
        self._tunnel_ex = ex
        conn.tunnel_peer = self
        if conn.pool.tunnels is not None:  # an ExternalService's: closed if it is withdrawn
            conn.pool.tunnels.add(conn)
        if rest:
            ex.bytes_out += len(rest)
            self.write(rest)
        if conn.early:  # a CONNECT tunnel's server spoke first: its bytes, in order
            early = b"".join(conn.early)
            ex.bytes_out += len(early)
            self.write(early)
            conn.early = []
            conn.pause_reading(False)
        preamble, self._tunnel_preamble = self._tunnel_preamble or [], None
        if preamble:
            ex.bytes_in += sum(map(len, preamble))
            conn.writelines(preamble)
        self.current = None
        self._paused = 0
        if self.transport is not None:
            self.transport.resume_reading()

    @property
    def tunnel_request(self) -> Exchange | None:
        """The request whose upgrade (or CONNECT) opened the tunnel open now, or is opening
        one: admitted, its upstream's answer still awaited (the tunnel would start with it)."""
        if self._tunnel is not None:
            return self._tunnel_ex
        ex = self.current
        if (self._tunnel_preamble is None or ex is None
                or not (ex.upgrade or ex.method == b"CONNECT")):
            return None  # (a request in flight before a pipelined upgrade is no tunnel's)
        return ex

    def end_tunnel(self, reason: str) -> None:
        """Close the tunnel (or the upgrade awaiting its answer) and the client's connection,
        recorded with ``reason``."""
        if self._tunnel_ex is not None:
            self._tunnel_ex.flags = reason
        self.lost_reason = reason  # what an upgrade still in flight is recorded with
        tunnel, self._tunnel = self._tunnel, None
        if tunnel is not None:
            tunnel.close()
        self._close()

    def tunnel_write(self, data: bytes) -> None:
        self._tunnel_ex.bytes_out += len(data)  # type: ignore[union-attr]
        self.write(data)

    def tunnel_closed(self) -> None:
        self._tunnel = None
        self._close()

    def pause(self, paused: bool) -> None:
        """Tunnel backpressure from the upstream side."""
        self._set_pause(_P_TUNNEL, paused)

    # --- lifecycle ----------------------------------------------------------------------------
    def check_timers(self, now: float) -> None:
        """Called about once a second by the listener: slow headers, idle keep-alive and
        stalled requests."""
        if self.closed or self._tunnel is not None or self._lingering:
            return
        limits = self.listener.limits
        if self.current is not None:
            if limits.stream_idle_timeout:
                self._check_stream_idle(self.current, now, limits.stream_idle_timeout)
                if self.closed:
                    return
        elif self._watched is not None:
            self._watched = None  # not kept alive by an idle keep-alive connection
        if self._in_head and now - self.head_started > limits.header_timeout:
            self._reject("request_timeout")
        elif self.current is None and not self._in_head:
            # A connection that never began a request waits no longer than for a head: idle
            # sockets are the cheapest way to fill the connection limit.
            limit = limits.idle_timeout if self.head_started else limits.header_timeout
            if self.draining:
                limit = min(limit, _DRAIN_IDLE)
            if now - self.idle_since >= limit:
                self._close()

    def _check_stream_idle(self, ex: Exchange, now: float, limit: float) -> None:
        """Reset the in-flight request once no byte has moved either way for `limit` seconds.

        Progress is read from the byte counters the exchange keeps anyway, so the request path
        pays nothing for this timeout. While a route timeout waits for the response head, that
        timeout decides instead (it may be the longer one, on purpose).
        """
        progress = ex.bytes_in + ex.bytes_out + ex.status
        if ex is not self._watched or progress != self._watched_progress:
            self._watched, self._watched_progress, self._watched_since = ex, progress, now
        elif now - self._watched_since >= limit and not ex.awaiting_route_timeout():
            self._watched = None
            ex.stream_idle()

    def drain(self) -> None:
        """Shutdown: the in-flight response, and the answer to a request still arriving on an
        idle keep-alive connection, carry `connection: close`; a connection idle for
        _DRAIN_IDLE is closed (here or by the sweep). Closing every idle connection at once
        raced callers that were reusing one that very moment: their request met our FIN."""
        self.draining = True
        if (self.current is None and not self._in_head and self._tunnel is None
                and self.loop.time() - self.idle_since >= _DRAIN_IDLE):
            self._close()

    def refuse_plaintext(self) -> None:
        """See `Listener.refuse_plaintext`: close when idle, else after the response in flight
        (which then says `connection: close`); no further request is read."""
        self.plaintext_refused = True
        self.draining = True
        session = self.tcp_session
        if session is not None:
            if not session.labels:  # a TCP connection whose hello has not come: admitted to
                session.close()  # nothing yet, so idle (a hello after the switch got in)
            return  # one admitted runs to the grace, as a stream does
        if self.current is None and self._tunnel is None and self._tunnel_preamble is None:
            self._close()

    def _reject(self, reason: str) -> None:
        ex = self._parsing
        if ex is not None:
            # The body of a request whose head is in broke its framing (a bad chunk, a bad
            # trailer): it can never complete.
            self._parsing = None
            if ex is self.current:
                # Its head may be upstream already, which then waits for the rest: the
                # attempt is dropped and the client answered now, not at the stream idle
                # timeout (a response under way is cut short instead).
                ex.malformed_body(reason)
                return
            self.pending.remove(ex)  # pipelined, never started: answered by the rejection
        if self.current is not None:
            # Keep responses in order: answer after the in-flight one, and read no more.
            self._error_after_current = reason
            self._set_pause(_P_PIPELINE, True)
            return
        self._answer_rejection(reason)

    def _answer_rejection(self, reason: str) -> None:
        self.listener.record_rejection(self, reason)
        self.write(local_reply(reason, close=True))
        self._linger()

    def _linger(self) -> None:
        """Close after an error reply without losing it.

        Closing a socket with unread input makes the kernel send a reset, which can destroy the
        reply before the client reads it. So: send our FIN after the reply, keep reading and
        dropping the client's bytes, and close at its EOF or after a short deadline (nginx's
        lingering close).
        """
        transport = self.transport
        if self.closed or transport is None:
            return
        self._lingering = True
        self._paused = 0
        transport.resume_reading()
        if transport.can_write_eof():
            transport.write_eof()
        self.loop.call_later(_LINGER_SECONDS, self._close)

    def _close(self) -> None:
        if not self.closed and self.transport is not None:
            self.closed = True
            self.transport.close()

    def _set_pause(self, bit: int, on: bool) -> None:
        before = self._paused
        after = before | bit if on else before & ~bit
        if before == after or self.transport is None or self.closed:
            self._paused = after
            return
        self._paused = after
        if before == 0:
            self.transport.pause_reading()
        elif after == 0:
            self.transport.resume_reading()


class TlsDownstreamProtocol(DownstreamProtocol, recvbuf.BufferedReads):
    """A client connection over TLS: uvloop decrypts into the shared buffer (see recvbuf)."""

    def writelines(self, parts: tuple[bytes, ...] | list[bytes]) -> None:
        # uvloop's TLS transport encrypts each part as a record of its own: a response's head
        # and body joined go as one record (one SSL_write here, one SSL_read at the caller).
        if self.transport is not None and not self.closed:
            self.transport.write(tlswrite.joined(parts))


def _preface_cut(head: bytes) -> int | None:
    """Where the preface ends in a read that holds only its end: httptools pauses at `PRI`
    once it consumed the whole preface, its start from earlier reads. The longest end of
    the preface that opens the read (what follows, a frame header, never starts with its
    characters); None when the read opens with none."""
    from proxy.h2downstream import PREFACE

    for k in range(min(len(head), len(PREFACE) - 1), 0, -1):
        if head[:k] == PREFACE[-k:]:
            return k
    return None


def _parser_error_reason(message: str) -> str:
    if "Content-Length" in message or "Transfer-Encoding" in message:
        return "request_smuggling"
    if "header" in message.lower():
        return "invalid_header"
    if "URL" in message or "url" in message:
        return "bad_request"
    return "bad_request"
