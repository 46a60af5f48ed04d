"""Keep-alive pools: one per endpoint of each destination, kept across snapshots so a push drops no
warm connection.

A destination is what Envoy calls a cluster: a service, a subset with a policy of its own, an
ExternalService host, the passthrough. Each has pools of its own, also for an address another
destination lists too: a pool's circuit breaker, connection count and version label are its
destination's, never another's (connections are reused within a destination, not across).

Pool bookkeeping is synchronous; the only awaitable is opening a new connection.
"""

from __future__ import annotations

import asyncio
import ipaddress
import logging
import socket
import ssl
from collections import deque
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from meshctl.api.policy import ConnectionPool, TcpKeepalive
from proxy.keepalive import set_keepalive
from proxy.loglevels import debug_on
from proxy.origination import check_h2
from proxy.upstream import TlsUpstreamConnection, UpstreamConnection

log = logging.getLogger("ami.proxy")
pool_log = logging.getLogger("ami.proxy.pool")
_debug = False  # ami.proxy.pool logs DEBUG: set by set_debug when levels change
_QUICK_CLOSE = 1.0  # seconds: below any sane keep-alive timeout
_MAX_HEAD_BYTES = 64 * 1024  # proxy.listener.Limits.max_header_bytes's default
_DEFAULT_POOL = ConnectionPool()  # idle/connect timeouts when no connectionPool is declared

if TYPE_CHECKING:
    from meshctl.api.policy import TrafficPolicy
    from proxy.config import Address
    from proxy.h2upstream import H2UpstreamConnection
    from proxy.origination import Origination


class EndpointPool:
    """Idle keep-alive connections of one destination to one endpoint address, plus its
    live-connection count."""

    __slots__ = (
        "active_requests",
        "address",
        "address_text",
        "breaker",
        "closes_quickly",
        "connect_timeout",
        "connections",
        "h1_only",
        "h2",
        "h2_connecting",
        "identity",
        "idle",
        "idle_timeout",
        "keepalive",
        "loop",
        "loop_ports",
        "max_connection_duration",
        "max_head_bytes",
        "max_requests_per_connection",
        "origination",
        "protocol",
        "retired",
        "service",
        "subset",
        "tls",
        "tunnel",
        "tunnels",
        "version",
    )

    def __init__(self, loop: asyncio.AbstractEventLoop, address: Address) -> None:
        self.loop = loop
        self.address = address
        self.address_text = str(address)  # host:port, as the access log names the endpoint
        self.idle: deque[UpstreamConnection] = deque()
        # HTTP/2 connections (requests that came over HTTP/2), each carrying many streams
        self.h2: list[H2UpstreamConnection] = []
        # The HTTP/2 connection being opened: requests arriving meanwhile wait for it rather
        # than each opening one (a burst of calls on a cold pool would open one apiece).
        self.h2_connecting: asyncio.Task[H2UpstreamConnection] | None = None
        self.connections = 0
        self.active_requests = 0  # read by the least-request balancer
        self.idle_timeout = 10.0
        self.connect_timeout = 5.0
        self.max_requests_per_connection = 0
        self.max_connection_duration = 0.0  # a connection's age limit (0: none)
        self.keepalive: TcpKeepalive | None = None  # TCP keepalive probes on its connections
        self.tls: Any = None  # TlsContexts when this endpoint is reached over mTLS
        # An outside host this sidecar opens TLS to (proxy.origination): not mTLS, no identity
        self.origination: Origination | None = None
        self.closes_quickly = False  # server closes idle connections right after answering
        self.breaker: Any = None  # the destination's Breaker when connection limits are declared
        self.retired = False  # the endpoint left the config: connections close when released
        # Connections for CONNECT tunnels: what a server that speaks first (a banner: SSH,
        # SMTP, MySQL) sends before the tunnel is joined is kept for it, not taken for a
        # server breaking HTTP on an idle connection (UpstreamConnection.early).
        self.tunnel = False
        # An ExternalService's tunnel pool: its open tunnels, closed when the pool is retired
        # (the ExternalService deleted or changed), as a declaration withdrawn must not stay
        # open for as long as a client cares to keep a tunnel.
        self.tunnels: set[UpstreamConnection] | None = None
        self.version = "unknown"  # the endpoint's version label, for metrics
        # The destination whose pool this is: a service, an ExternalService host, the
        # passthrough (or a wildcard ExternalService's pattern), the local app's service (the
        # inbound listener's pool).
        self.service = ""
        # The subset whose own destination (its own policy) this pool is, apart from the pool
        # of the same endpoint that the service's destination uses; None: the service's.
        self.subset: str | None = None
        self.identity: str | None = None  # expected SPIFFE id of the peer
        # An outside host (passthrough): this proxy's own listening ports, which a connection
        # must not reach (a request loop, whatever name or address spelling led there).
        self.loop_ports: Callable[[], set[int]] | None = None
        self.max_head_bytes = _MAX_HEAD_BYTES  # response head, 1xx ones included, per request
        # What the endpoint speaks, as declared (proxy.config.APP_PROTOCOLS), and whether an
        # HTTP/2 request goes to it as HTTP/1.1: declared `http1`, or `auto` and found to
        # answer HTTP/2 in HTTP/1.1 (kept while the declaration stays the same).
        self.protocol = "auto"
        self.h1_only = False

    def declare(self, protocol: str) -> None:
        """Set what the endpoint speaks; a new declaration forgets what was learned."""
        if protocol != self.protocol:
            self.protocol = protocol
            self.h1_only = protocol == "http1"

    def take_idle(self) -> UpstreamConnection | None:
        """A live idle connection, or None (stale ones found on the way are closed)."""
        now = self.loop.time()
        while self.idle:
            conn = self.idle.pop()  # LIFO: the warmest connection, least likely timed out
            idle_for = now - conn.idle_since
            # Peek for a FIN (a non-blocking recv) when the server may have closed meanwhile:
            # after a pause (keep-alive timeouts are seconds), or always for a server seen
            # closing connections right after answering without `Connection: close` (a POST
            # written to such a connection could not be retried). Else skip the syscall.
            if idle_for < self.idle_timeout and (
                    (idle_for < _QUICK_CLOSE and not self.closes_quickly) or conn.looks_alive()):
                return conn
            conn.close()
        return None

    def note_idle_close(self, idle_since: float) -> None:
        """The server closed an idle connection; soon after its last answer means: peek."""
        if self.loop.time() - idle_since < _QUICK_CLOSE:
            self.closes_quickly = True

    async def connect(self) -> UpstreamConnection:
        tls, origination = self.tls, self.origination
        context = (tls.client if tls is not None
                   else origination.context if origination is not None else None)
        conn: UpstreamConnection = await self._connect(
            (lambda: UpstreamConnection(self)) if context is None
            else (lambda: TlsUpstreamConnection(self)), context)
        return conn

    def take_h2(self) -> H2UpstreamConnection | None:
        """An HTTP/2 connection with room for another stream, or None."""
        for conn in self.h2:
            if conn.has_room():
                return conn
        return None

    async def connect_h2(self) -> H2UpstreamConnection:
        """A new HTTP/2 connection: h2c, or mTLS (or TLS this sidecar originates to an outside
        host) where the server must agree to ALPN `h2`."""
        from proxy.h2upstream import H2UpstreamConnection, Http1Answer, TlsH2UpstreamConnection

        tls, origination = self.tls, self.origination
        context = (tls.client_h2 if tls is not None
                   else origination.context if origination is not None else None)
        conn: H2UpstreamConnection = await self._connect(
            (lambda: H2UpstreamConnection(self)) if context is None
            else (lambda: TlsH2UpstreamConnection(self)), context)
        if context is not None and conn.transport is not None:
            ssl_object = conn.transport.get_extra_info("ssl_object")
            if origination is not None:
                try:
                    check_h2(origination, self.address, ssl_object)
                except OSError:
                    conn.abort()
                    raise
            elif ssl_object is None or ssl_object.selected_alpn_protocol() != "h2":
                conn.abort()
                raise OSError(f"upstream {self.address} does not speak HTTP/2 (ALPN)")
        try:
            await asyncio.wait_for(asyncio.shield(conn.settings_seen), self.connect_timeout)
        except TimeoutError:
            conn.abort()
            raise OSError(f"upstream {self.address} sent no HTTP/2 SETTINGS") from None
        except Http1Answer:
            if self.protocol == "auto" and tls is None and not self.h1_only:
                self.h1_only = True
                log.info("%s answered HTTP/2 in HTTP/1.1: HTTP/2 requests go to it as "
                         "HTTP/1.1 from now on", self.address)
            raise
        conn.ready = True  # (listed in self.h2 since connection_made, not offered until now)
        return conn

    def connect_h2_shared(self) -> asyncio.Task[H2UpstreamConnection]:
        """The HTTP/2 connection being opened to this endpoint, or a new one (counted against
        the destination's maxConnections from now, as `Exchange._open_connection` does)."""
        task = self.h2_connecting
        if task is None:
            task = self.h2_connecting = self.loop.create_task(self._connect_h2_shared())
            task.add_done_callback(_retrieve)
            if self.breaker is not None:
                self.breaker.opening(task)
        return task

    async def _connect_h2_shared(self) -> H2UpstreamConnection:
        if self.breaker is not None:
            self.breaker.started(asyncio.current_task())  # connect_h2 counts it from here
        try:
            conn = await self.connect_h2()
        finally:
            self.h2_connecting = None
        self.h2_room(conn)
        return conn

    def h2_room(self, conn: H2UpstreamConnection) -> None:
        """`conn` may take another stream: give it to requests the breaker queued."""
        breaker = self.breaker
        while breaker is not None and breaker.pending and conn.has_room():
            waiter = breaker.waiter_for(self, http2=True)
            if waiter is None:
                return
            waiter.take_connection(conn)

    def forget_h2(self, conn: H2UpstreamConnection) -> None:
        """An HTTP/2 connection closed (bookkeeping done once, whoever calls first)."""
        if conn.expiry is not None:
            conn.expiry.cancel()
            conn.expiry = None
        try:
            self.h2.remove(conn)
        except ValueError:
            return
        self.connections -= 1
        if _debug:
            pool_log.debug("%s: HTTP/2 connection closed; %d open", self.address,
                           self.connections)

    async def _connect(self, factory: Callable[[], Any], ssl_context: Any) -> Any:
        self.connections += 1
        tls, origination = self.tls, self.origination
        try:
            transport, proto = await asyncio.wait_for(
                self.loop.create_connection(
                    factory, self.address.host, self.address.port,
                    ssl=ssl_context,
                    # mTLS: SNI unused (peers are checked by SPIFFE id); origination: the
                    # name sent and verified
                    server_hostname="mesh" if tls is not None else (
                        origination.server_name if origination is not None else None),
                ),
                self.connect_timeout,
            )
        except ssl.SSLError as exc:
            self.connections -= 1
            if origination is not None:  # the outside host's certificate, not the mesh's
                log.warning("TLS to %s (endpoint %s) failed: %s", origination.server_name,
                            self.address, getattr(exc, "verify_message", None) or exc.reason
                            or exc)
            raise
        except socket.gaierror as exc:
            self.connections -= 1
            # Resolution runs off the event loop (the loop's getaddrinfo: a thread); a name
            # that does not resolve is a connect failure like a refused port, said plainly.
            log.warning("cannot resolve %s (endpoint %s): %s", self.address.host,
                        self.address, exc.strerror or exc)
            raise
        except BaseException:
            self.connections -= 1
            raise
        if tls is not None:
            self._check_identity(transport, proto)
        if self.loop_ports is not None:
            self._check_not_self(transport, proto, self.loop_ports())
        self.configure_connection(transport, proto)
        if _debug:
            pool_log.debug("%s: connection opened (%s%s); %d open, %d idle", self.address,
                           "mTLS" if tls is not None else "TLS" if origination is not None
                           else "plaintext", ", HTTP/2" if "H2" in type(proto).__name__ else "",
                           self.connections, len(self.idle))
        return proto

    def _check_not_self(self, transport: asyncio.BaseTransport, proto: Any,
                        ports: set[int]) -> None:
        """Refuse a connection that reached one of this proxy's own listeners: its peer port is
        one of ours and its peer address is this host (a loopback address, or the address the
        connection comes from, as for any other address of this host)."""
        peer = transport.get_extra_info("peername")
        if not peer or peer[1] not in ports:
            return
        here = transport.get_extra_info("sockname")
        try:
            address = ipaddress.ip_address(peer[0])
        except ValueError:
            return
        mapped = getattr(address, "ipv4_mapped", None)
        if (mapped or address).is_loopback or (here and here[0] == peer[0]):
            proto.abort()
            raise OSError(f"outside host {self.address.host}:{self.address.port} is this "
                          "proxy itself (a request loop)")

    def _check_identity(self, transport: asyncio.BaseTransport, proto: Any) -> None:
        """The server must be the identity expected for this endpoint, not just any mesh cert."""
        from proxy.identity import IdentityError
        from proxy.tls import verify_peer

        expected = {self.identity} if self.identity else None
        try:
            proto.peer_identity = verify_peer(transport.get_extra_info("ssl_object"), expected)
        except IdentityError as exc:
            proto.abort()
            raise OSError(f"upstream {self.address}: {exc}") from None

    def configure_connection(self, transport: asyncio.BaseTransport, proto: Any) -> None:
        """What the destination's connectionPool asks of each new connection: TCP keepalive
        probes, and an end at maxConnectionDuration (once it carries no request)."""
        if self.keepalive is not None:
            set_keepalive(transport, self.keepalive)
        if self.max_connection_duration:
            # (cancelled when the connection closes: the handle refers to it, and would keep
            # a connection closed long before, its parser or HTTP/2 state, for the duration)
            proto.expiry = self.loop.call_later(self.max_connection_duration, proto.expire)

    def release(self, conn: UpstreamConnection) -> None:
        """Return a connection whose response completed cleanly to the idle set."""
        conn.exchange = None
        limit = self.max_requests_per_connection
        if conn.closed or self.retired or conn.expired or (limit and conn.requests >= limit):
            conn.close()
            return
        breaker = self.breaker
        if breaker is not None and breaker.pending:
            waiter = breaker.waiter_for(self)
            if waiter is not None:
                waiter.take_connection(conn)  # hand over, skip the idle set
            else:
                # The queued requests go to other endpoints (another subset, or this one is
                # ejected): closing frees the slot for them (see forget).
                conn.close()
            return
        conn.idle_since = self.loop.time()
        self.idle.append(conn)

    def forget(self, conn: UpstreamConnection) -> None:
        """Bookkeeping when a connection closes, whoever closed it (called once per connection)."""
        self.connections -= 1
        if conn.expiry is not None:
            conn.expiry.cancel()
            conn.expiry = None
        if _debug:
            pool_log.debug("%s: connection closed after %d requests%s; %d open", self.address,
                           conn.requests, " (endpoint retired)" if self.retired else "",
                           self.connections)
        if self.tunnels:
            self.tunnels.discard(conn)
        try:
            self.idle.remove(conn)
        except ValueError:
            pass
        breaker = self.breaker
        if breaker is not None and breaker.pending and not breaker.connections_full():
            breaker.next_waiter().take_connection(None)  # a slot freed: open a new one

    def sweep(self, now: float) -> None:
        """Close idle connections older than the idle timeout (called by a periodic task)."""
        while self.idle and now - self.idle[0].idle_since >= self.idle_timeout:
            self.idle.popleft().close()
        for conn in self.h2:
            if not conn.streams and now - conn.idle_since >= self.idle_timeout:
                conn.close()  # (removes itself from self.h2: this loop ends here)
                break

    def close_all(self) -> None:
        while self.idle:
            self.idle.pop().close()
        for conn in list(self.h2):
            if not conn.streams:
                conn.close()  # busy ones close when their last stream ends (retired)


def set_debug() -> None:
    """Read ami.proxy.pool's level (at start and after a change), so the connection paths
    test a module flag rather than ask logging."""
    global _debug
    _debug = debug_on("ami.proxy.pool")


def _retrieve(task: asyncio.Task[Any]) -> None:
    """A shared connect whose requests all went away: its failure is nobody's to log."""
    if not task.cancelled():
        task.exception()


# (host, port, identity or kind, mTLS, destination: (service or host, subset with a policy of
# its own or None))
_Key = tuple[str, int, str | None, bool, tuple[str, str | None]]
Destination = tuple[str, str | None]


class PoolRegistry:
    """One EndpointPool per (destination, address, expected identity or kind, mTLS or not);
    unused pools close when retired.

    The destination is part of the key (Envoy: each cluster has its own connection pools and
    circuit breakers, and endpoints are not shared across clusters): two services listing the
    same address each get a pool, with their own breaker, waiters, connection count and
    version label. A destination keeps its pools across snapshots while it keeps the address."""

    def __init__(self, loop: asyncio.AbstractEventLoop,
                 max_head_bytes: int = _MAX_HEAD_BYTES) -> None:
        self.loop = loop
        self.max_head_bytes = max_head_bytes
        self._pools: dict[_Key, EndpointPool] = {}
        self._used: set[_Key] = set()
        self.tls: Any = None  # TlsContexts when this proxy has an identity
        set_debug()

    def begin(self) -> None:
        """Start building a new snapshot: track which pools it uses."""
        self._used = set()

    def get(self, address: Address, identity: str | None, version: str,
            policy: TrafficPolicy | None = None, *, destination: Destination,
            external: bool = False, tunnel: bool = False, inbound: bool = False,
            loop_ports: Callable[[], set[int]] | None = None,
            protocol: str = "auto", origination: Origination | None = None,
            mtls: bool = False) -> EndpointPool:
        """The pool of a mesh endpoint, or (``external``) of an ExternalService endpoint: plain
        TCP or TLS it originates (``origination``), and a pool of its own for CONNECT tunnels
        (``tunnel``), whose connections may not reach ``loop_ports`` on this host.
        ``protocol``: what the endpoint speaks. ``destination``: (service or host, subset) whose
        pool this is, the subset only for a subset with its own policy (its connections, limits
        and timeouts are its own), None for the service's destination, which its other subsets
        share. ``inbound``: the inbound listener's pool to the local app. ``mtls``:
        whether the snapshot wants mTLS to it (its service is not DISABLE), which it gets once
        this proxy has an identity."""
        tls = self.tls if (self.tls is not None and identity and mtls) else None
        # Whether the pool speaks mTLS is part of its key: when a push turns mTLS on (or off)
        # for the mesh or the endpoint's service, the old pool is retired, so no pooled
        # plaintext connection is reused under mTLS.
        # Likewise for TLS origination and the name it verifies.
        kind = ("*external-tunnel*" if tunnel else origination.key if origination is not None
                else "*external-h2*" if protocol == "http2" else "*external*")
        key = (address.host, address.port,
               kind if external else "*inbound*" if inbound else identity, tls is not None,
               destination)
        pool = self._pools.get(key)
        if pool is None:
            pool = self._pools[key] = self._new_pool(address)
            pool.service, pool.subset = destination
        pool.version = version
        pool.identity = identity
        pool.tls = tls
        pool.origination = origination
        pool.tunnel = tunnel
        if tunnel and pool.tunnels is None:
            pool.tunnels = set()
        pool.loop_ports = loop_ports
        pool.declare(protocol)
        if policy is not None:
            settings = policy.connection_pool or _DEFAULT_POOL
            pool.idle_timeout = settings.idle_timeout
            pool.connect_timeout = settings.connect_timeout
            pool.max_requests_per_connection = settings.max_requests_per_connection
            pool.max_connection_duration = settings.max_connection_duration
            pool.keepalive = settings.tcp_keepalive
        self._used.add(key)
        return pool

    def external(self, address: Address, tunnel: bool,
                 own_ports: Callable[[], set[int]] | None = None,
                 policy: TrafficPolicy | None = None, http2: bool = False,
                 destination: str = "passthrough") -> EndpointPool:
        """The pool of a host outside the mesh named by a request (ALLOW_ANY, a wildcard
        ExternalService): plain TCP; tunnels apart from HTTP reuse. Its connections may
        not reach ``own_ports`` on this host. ``http2``: h2c (a wildcard's HTTP2/GRPC port).
        ``destination``: `passthrough`, or the wildcard ExternalService's pattern (each its
        own pools, with its own policy's timeouts)."""
        kind = "*tunnel*" if tunnel else "*passthrough-h2*" if http2 else "*passthrough*"
        key = (address.host, address.port, kind, False, (destination, None))
        pool = self._pools.get(key)
        if pool is None:
            pool = self._pools[key] = self._new_pool(address)
            pool.service = destination
            pool.version = "unknown"
            # a host outside the mesh, in plaintext: HTTP/1.1, unless declared HTTP/2
            pool.declare("http2" if http2 else "http1")
            if policy is not None and policy.connection_pool is not None:
                pool.idle_timeout = policy.connection_pool.idle_timeout
                pool.connect_timeout = policy.connection_pool.connect_timeout
                pool.max_connection_duration = policy.connection_pool.max_connection_duration
                pool.keepalive = policy.connection_pool.tcp_keepalive
        pool.loop_ports = own_ports
        pool.tunnel = tunnel
        if tunnel and pool.tunnels is None:
            pool.tunnels = set()  # closed once no declaration allows them (retire_unused)
        return pool

    def _new_pool(self, address: Address) -> EndpointPool:
        pool = EndpointPool(self.loop, address)
        pool.max_head_bytes = self.max_head_bytes
        return pool

    def forget(self, pool: EndpointPool) -> None:
        """Drop a pool before its snapshot ends (an outside host no longer remembered)."""
        for key, known in list(self._pools.items()):
            if known is pool:
                del self._pools[key]
                pool.retired = True
                pool.close_all()

    def retire_unused(self, tunnel_allowed: Callable[[Address], bool] = lambda _a: False,
                      ) -> None:
        """After a snapshot swap: close idle connections of endpoints no longer referenced.

        An outside host's tunnel pool (a wildcard ExternalService, ALLOW_ANY) is referenced by
        no snapshot: its open tunnels stay while `tunnel_allowed` says the new snapshot would
        still open them (the pool is then kept, to be asked again at the next swap), and are
        closed when not, as those of a withdrawn exact ExternalService are."""
        for key in [k for k in self._pools if k not in self._used]:
            pool = self._pools[key]
            if key[2] == "*tunnel*" and pool.tunnels and tunnel_allowed(pool.address):
                continue
            del self._pools[key]
            if _debug:
                pool_log.debug("%s: endpoint left the config: %d idle connections close, "
                               "%d busy ones after their request", pool.address,
                               len(pool.idle), pool.connections - len(pool.idle))
            pool.retired = True  # connections busy now are closed when their request ends
            pool.close_all()
            for conn in list(pool.tunnels or ()):  # an ExternalService's, withdrawn: now
                conn.close()

    def sweep(self) -> None:
        now = self.loop.time()
        for pool in self._pools.values():
            pool.sweep(now)

    def close_all(self) -> None:
        for pool in self._pools.values():
            pool.close_all()

    def __iter__(self):  # type: ignore[no-untyped-def]
        return iter(self._pools.values())
