"""TLS passthrough on the gateway listener: a connection opening with a TLS handshake record has
its ClientHello read (within --header-timeout); one whose server name a passthrough entry takes
is relayed, ClientHello included and untouched, to that TCP service over the mesh, as a
`--tcp-upstream` connection is (proxy.tcpclient); any other is closed and counted.

The HTTPS gateway (--gateway-cert) reads the hello without consuming it first
(proxy.hellopeek), so that it can still terminate a connection no entry takes; the ones it
hands over here arrive as plaintext connections and are read again (a few microseconds).
Only a gateway with passthrough entries, or an HTTPS one, comes here (Listener.reads_hello):
a plaintext HTTP client of such a gateway costs one protocol switch per connection, its
requests nothing.
"""

from __future__ import annotations

import asyncio
import json
import logging
from time import monotonic
from typing import TYPE_CHECKING

from proxy.accessline import wall_start
from proxy.clienthello import RECORD_HANDSHAKE, ClientHello, HelloError, HelloReader
from proxy.listener import FilterView

if TYPE_CHECKING:
    from proxy.downstream import DownstreamProtocol
    from proxy.listener import Listener
    from proxy.sniroutes import SniRoute

log = logging.getLogger("ami.proxy")
REFUSED = "ami_gateway_tls_refused"  # TLS connections closed before relaying or terminating


def take_over(p: DownstreamProtocol) -> None:
    """A new gateway connection (admitted, in plaintext): its first bytes decide."""
    assert p.transport is not None
    p.closed = True  # not HTTP, at least not yet: the listener's sweep and drain leave it be
    p.transport.set_protocol(_FirstBytes(p))


class _FirstBytes(asyncio.Protocol):
    """Reads until the first byte tells TLS from HTTP, then the whole ClientHello."""

    __slots__ = ("held", "p", "reader", "start", "timer")

    def __init__(self, p: DownstreamProtocol) -> None:
        self.p = p
        self.reader: HelloReader | None = None
        self.held = bytearray()  # the ClientHello's bytes so far, relayed as they are
        self.start = monotonic()  # (a request's clock, not uvloop's millisecond ticks)
        self.timer: asyncio.TimerHandle | None = p.loop.call_later(
            p.listener.limits.header_timeout, self._too_slow)

    def data_received(self, data: bytes) -> None:
        if self.timer is None or not data:
            return  # decided (refused: its close is under way)
        if self.reader is None:
            if data[0] != RECORD_HANDSHAKE:
                self._http(data)
                return
            self.reader = HelloReader()
        self.held += data
        try:
            hello = self.reader.feed(data)
        except HelloError as exc:
            self._refuse("bad_client_hello", None, "unknown", str(exc))
            return
        if hello is not None:
            self._route(hello)

    def eof_received(self) -> bool:
        if self.timer is not None and self.reader is not None:
            self._refuse("bad_client_hello", None, "unknown",
                         "closed before its ClientHello ended")
        elif self.p.transport is not None:
            self._stop_timer()
            self.p.transport.close()  # closed before its first byte: nothing to count
        return False

    def connection_lost(self, exc: Exception | None) -> None:
        self._stop_timer()
        self.p.connection_lost(exc)

    def _http(self, data: bytes) -> None:
        """Not TLS: the plaintext HTTP the gateway has always served (not on an HTTPS one,
        where the acceptor hands over TLS only)."""
        self._stop_timer()
        p = self.p
        assert p.transport is not None
        if p.listener.scheme == "https":
            self._refuse("bad_client_hello", None, "unknown", "plaintext on the HTTPS gateway")
            return
        p.closed = False
        p.transport.set_protocol(p)
        p.data_received(data)

    def _route(self, hello: ClientHello) -> None:
        self._stop_timer()
        routes = self.p.listener.passthrough
        route = routes.lookup(hello.server_name) if routes is not None else None
        if route is None:
            # (an HTTPS gateway terminates these: proxy.hellopeek never hands them over)
            self._refuse("no_route", hello.server_name, "unknown",
                         "no passthrough entry for this server name")
        elif route.target is None:
            self._refuse(route.refusal, hello.server_name, route.destination,
                         f"{route.destination} takes no passthrough")
        else:
            relay(self.p, route, hello.server_name, bytes(self.held))

    def _too_slow(self) -> None:
        self.timer = None
        if self.reader is None:
            # Not a byte in --header-timeout: nothing says it was TLS (an idle HTTP client, a
            # port check), so it is closed as the HTTP listener closes a silent connection,
            # without counting a refused TLS connection.
            if self.p.transport is not None:
                self.p.transport.close()
            return
        self._refuse("request_timeout", None, "unknown",
                     "no complete ClientHello within --header-timeout", timer_fired=True)

    def _refuse(self, reason: str, sni: str | None, destination: str, detail: str, *,
                timer_fired: bool = False) -> None:
        if not timer_fired:
            self._stop_timer()
        p = self.p
        refused(p.listener, reason, sni, destination, self.start, len(self.held), detail,
                p.client_ip.decode("latin-1"))
        if p.transport is not None:
            p.transport.abort()  # unread bytes would make close() a reset anyway

    def _stop_timer(self) -> None:
        if self.timer is not None:
            self.timer.cancel()
            self.timer = None


def relay(p: DownstreamProtocol, route: SniRoute, sni: str | None, hello: bytes) -> None:
    """The connection is a TCP session to ``route``'s service from now on, ``hello`` its first
    bytes; it stays one connection of the listener (its limit, its drain) until it ends."""
    from proxy.tcpclient import hand_over
    from proxy.tcprelay import TcpSession

    listener = p.listener
    assert route.target is not None
    session = TcpSession(listener.stats, True, "gateway", p.loop)
    session.client_address = p.client_ip.decode("latin-1")
    session.authority = sni
    session.log_out = listener.access_log
    session.log_filter = listener.access_filter
    session.early = hello  # sent once an endpoint accepted, before anything read after it
    hand_over(p, session, route.target)


def refused(listener: Listener, reason: str, sni: str | None, destination: str, start: float,
            received: int, detail: str, client: str) -> None:
    """Count (and log) a TLS connection closed before it was relayed or terminated."""
    listener.stats.inc(REFUSED, (("reason", reason),))
    log.debug("gateway: TLS connection from %s closed, %s (server name %s): %s", client,
              reason, sni, detail)
    out = listener.access_log
    if out is None or (listener.access_filter is not None
                       and not listener.access_filter(FilterView(0, reason, sni))):
        return
    line = {"start_time": wall_start(start), "listener": listener.kind, "method": None,
            "path": None, "authority": sni, "status": None, "reason": reason,
            "duration_ms": round((monotonic() - start) * 1000, 3),
            "bytes_received": received, "bytes_sent": 0, "request_id": None,
            "source": listener.router.source[0], "destination_service": destination,
            "upstream": None, "protocol": "TLS", "grpc_status": None, "client_address": client}
    out.write(json.dumps(line, separators=(",", ":")) + "\n")
