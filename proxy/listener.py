"""A bound listener: its limits, its connections, its current router and how it reports."""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass
from time import monotonic
from typing import TYPE_CHECKING, Any

from proxy.accessline import access_line, wall_start
from proxy.authzstats import log_fields
from proxy.clientaddress import trusted_client
from proxy.loglevels import debug_on
from proxy.metrics import RequestStats

if TYPE_CHECKING:
    from proxy.accesslog import AccessLogSink
    from proxy.downstream import DownstreamProtocol
    from proxy.exchange import Exchange
    from proxy.routing import Router
    from proxy.sniroutes import SniRoutes

router_log = logging.getLogger("ami.proxy.router")
_SERIES_KEPT = 1024  # Listener._series entries before it is emptied
connection_log = logging.getLogger("ami.proxy.connection")


@dataclass(frozen=True, slots=True)
class Limits:
    """Per-listener protection against slow, huge or too many clients."""

    max_request_line: int = 8 * 1024
    max_header_bytes: int = 64 * 1024
    header_timeout: float = 10.0
    idle_timeout: float = 60.0
    max_connections: int = 10_000
    # No byte either way on an in-flight request for this long: reset it (Envoy's
    # stream_idle_timeout). 0 turns it off.
    stream_idle_timeout: float = 300.0


_MAX_REFUSED_LINGERING = 64  # refused connections answered with a lingering close at once
_MAX_UNROUTED_HOSTS = 100  # hosts of unrouted requests named in the metrics (per listener)


class Listener:
    """Owns the connections of one listening socket; the router is swapped on config change."""

    # Every attribute __init__ sets is a slot: past 30 attributes CPython 3.11 keeps an
    # object's in a plain dict, and each read on the request path costs more (-2.5% of
    # the instructions per request, docs/benchmarks.md). `__dict__` takes the rest (a
    # class default overridden, a method replaced); tests/test_proxy_slots.py checks.
    __slots__ = (
        "__dict__",
        "__weakref__",
        "_record_swapped",
        "_series",
        "access_filter",
        "access_log",
        "connections",
        "counting_rules",
        "debug_connections",
        "debug_requests",
        "forwarded_proto_line",
        "h2_scheme",
        "kind",
        "limits",
        "logs_authz",
        "loop",
        "on_record",
        "passthrough",
        "peer_line",
        "plaintext_allowed",
        "quiet",
        "reads_hello",
        "reads_timeout_header",
        "refused",
        "router",
        "scheme",
        "server",
        "stats",
        "tcp",
        "tracer",
        "trusted_proxies",
        "unrouted_hosts",
        "xfcc_by",
        "xfcc_gateways",
        "xfcc_trusted",
    )

    def __init__(self, kind: str, loop: asyncio.AbstractEventLoop, router: Router,
                 stats: RequestStats, limits: Limits, *, tls: bool = False) -> None:
        self.kind = kind  # outbound | inbound | gateway
        self.loop = loop
        self.stats = stats
        self.limits = limits
        self.connections: set[DownstreamProtocol] = set()
        # Connections refused at the limit, answered and lingering before their close (at
        # most _MAX_REFUSED_LINGERING: past it a refused one closes at once, so a flood
        # cannot hold more descriptors than the limit meant to spend)
        self.refused: set[DownstreamProtocol] = set()
        self.unrouted_hosts: set[str] = set()  # named in the metrics of unrouted requests
        self.server: asyncio.base_events.Server | None = None
        self.scheme = "https" if tls else "http"  # as clients of this listener see it
        self.forwarded_proto_line = f"x-forwarded-proto: {self.scheme}\r\n".encode()
        # gateway: the `:scheme` its HTTP/2 requests go on with is the one its clients used
        # (as x-forwarded-proto), not the one they claim: an app reading `:scheme` (ASGI's
        # scope["scheme"]) must not take a plaintext request for HTTPS. None: the caller's.
        self.h2_scheme = self.scheme.encode() if kind == "gateway" else None
        self.access_log: AccessLogSink | None = None
        # A Telemetry's filter (meshctl.api.accessfilter), only read while the log is on
        self.access_filter: Any = None
        self.on_record: Any = None  # tap hook: called with each finished exchange
        self.tracer: Any = None  # proxy.tracing.Tracer when an OTLP endpoint is configured
        self.peer_line = b""  # outbound: `x-ami-peer: service;version` for the next hop
        # `x-ami-timeout-ms` is the local app's to set (outbound); elsewhere it is dropped
        # unread: a timeout counts against the endpoint (outlier detection, latency), so a
        # gateway client honoured with it could eject endpoints for every other client, as
        # Envoy strips `x-envoy-upstream-rq-timeout-ms` from external requests
        self.reads_timeout_header = kind == "outbound"
        # load balancers in front of a gateway whose x-forwarded-for it believes
        # (--trusted-proxies; proxy.clientaddress): 0 for every other listener
        self.trusted_proxies = 0
        self.xfcc_by = b""  # inbound: our SPIFFE id, for x-forwarded-client-cert
        # inbound: mTLS peers (gateways) whose x-forwarded-client-cert is kept, ours appended;
        # those also in xfcc_gateways (trusted gateways') only with the gateway marker
        self.xfcc_trusted: frozenset[str] = frozenset()
        self.xfcc_gateways: frozenset[str] = frozenset()
        self.quiet: asyncio.Event | None = None  # set while draining, fired at zero connections
        # inbound in STRICT: a plaintext connection is refused, even one accepted before
        self.plaintext_allowed = True
        self.tcp: Any = None  # inbound: proxy.tcpinbound.TcpInbound while the app is `tcp`
        # gateway: the snapshot's TLS passthrough table, None without one
        self.passthrough: SniRoutes | None = None
        # gateway: plaintext connections start by telling TLS from HTTP (proxy.tlspassthrough):
        # with passthrough entries, or on the HTTPS gateway (its plaintext ones are relays)
        self.reads_hello = False
        # Whether its router's authorization policies may note a request's deciding policy
        # for the access log (Exchange.authz): set at apply, so a line of a listener without
        # policies does not look for it (reading an unset slot costs ~20 times a set one).
        self.logs_authz = False
        stats.connections_active.setdefault(kind, 0)
        stats.connections_total.setdefault(kind, 0)
        self.counting_rules = False  # `record` is record_rules (see use)
        # the series of routed requests by (backend, pool, status, flags, security), plus the
        # caller's (service, version) for an inbound mTLS peer's: record
        self._series: dict[tuple[Any, ...], Any] = {}
        # DEBUG lines, decided when levels change (set_debug), never per request: each
        # request's routing line (`record` is then record_debug) and connections opened/closed
        self.debug_requests = False
        self.debug_connections = False
        self._record_swapped = False  # `record` is an instance attribute (see _choose_record)
        self.use(router)
        self.set_debug()

    def keeps_xfcc(self, peer: str | None, gateway_cert: bool) -> bool:
        """Whether an mTLS peer's x-forwarded-client-cert is kept (asked only of a request
        that carries one): its id is trusted, a trusted gateway's only from a certificate with
        the gateway marker, since any proxy of the gateway's service has its id."""
        return peer in self.xfcc_trusted and (gateway_cert or peer not in self.xfcc_gateways)

    def set_debug(self) -> None:
        """Read the levels of ami.proxy.router and ami.proxy.connection (after a change)."""
        self.debug_connections = debug_on("ami.proxy.connection")
        requests = debug_on("ami.proxy.router")
        if requests != self.debug_requests:
            self.debug_requests = requests
            self._choose_record()

    def use(self, router: Router) -> None:
        """Route new requests with ``router`` (one assignment: in-flight ones keep theirs).

        While the router has named rules, this listener's ``record`` is ``record_rules``,
        which also counts them (proxy.routemetrics); otherwise the class's own, so a mesh
        without named rules pays nothing per request for per-rule metrics.
        """
        self.router = router
        self._series.clear()  # (its backends and pools are the old router's)
        if router.counts_rules != self.counting_rules:
            self.counting_rules = router.counts_rules
            self._choose_record()

    def _choose_record(self) -> None:
        """`record` for the current rules and levels: the class's own when neither named
        rules nor ami.proxy.router's DEBUG want more, so those cost nothing per request."""
        # (an instance attribute set or deleted: never read through __dict__, which would
        # turn this object's attributes into a plain dict, slower on every request)
        chosen = (self.record_debug if self.debug_requests
                  else self.record_rules if self.counting_rules else None)
        if chosen is not None:
            self.record = chosen  # type: ignore[method-assign]
            self._record_swapped = True
        elif self._record_swapped:
            del self.record
            self._record_swapped = False

    def admit(self, conn: DownstreamProtocol) -> bool:
        if len(self.connections) >= self.limits.max_connections:
            if len(self.refused) < _MAX_REFUSED_LINGERING:
                self.refused.add(conn)
            return False
        self.connections.add(conn)
        self.stats.connections_active[self.kind] += 1
        self.stats.connections_total[self.kind] += 1
        if self.debug_connections:
            self._log_connection(conn, "opened")
        return True

    def release(self, conn: DownstreamProtocol) -> None:
        if conn in self.connections:
            self.connections.discard(conn)
            self.stats.connections_active[self.kind] -= 1
            if self.debug_connections:
                self._log_connection(conn, "closed")
        elif self.refused:
            self.refused.discard(conn)
        if self.quiet is not None:
            self.check_quiet()

    def _log_connection(self, conn: DownstreamProtocol, what: str) -> None:
        peer = conn.client_ip.decode("latin-1")
        if conn.peer_identity is not None:
            peer += f" ({conn.peer_identity})"
        connection_log.debug("%s connection from %s %s (%s); %d open", self.kind, peer, what,
                             conn.security, len(self.connections))

    def check_quiet(self) -> None:
        """Called while draining whenever a request ends or a connection closes."""
        if self.quiet is not None and not self.connections:
            self.quiet.set()

    async def wait_quiet(self, timeout: float) -> None:
        """Wait until this listener has no connection left (each closes after its in-flight
        response or once idle while draining), or the timeout passes."""
        self.quiet = asyncio.Event()
        self.check_quiet()
        try:
            await asyncio.wait_for(self.quiet.wait(), max(0.0, timeout))
        except TimeoutError:
            pass

    def record(self, ex: Exchange) -> float:
        """Metrics (and the access log line, when on) for one finished request; returns its
        duration (ms), for ``record_rules``."""
        # (ex.start_time is time.monotonic()'s, not the loop's millisecond ticks)
        duration_ms = (monotonic() - ex.start_time) * 1000.0
        backend = ex.backend
        pool = ex.pool
        conn = ex.downstream
        if backend is not None and pool is not None and not ex.http2:
            # The common request (routed, sent to an endpoint, not gRPC): all its labels
            # follow from these objects and words, so its series is found by them, without
            # building the label tuple (see _series_of). An inbound mTLS peer's requests
            # (every request of a mesh hop) add the caller's service and version, which its
            # sidecar's x-ami-peer may change from one request to the next.
            peer = conn.peer_service
            key = ((backend, pool, ex.status, ex.flags, conn.security) if peer is None else
                   (backend, pool, ex.status, ex.flags, conn.security, peer, conn.peer_version))
            series = self._series.get(key)
            if series is None:
                series = self._series_of(key)
            series.add(duration_ms, ex.bytes_in, ex.bytes_out)
            if self.access_log is None and self.on_record is None:
                if ex.trace is not None:
                    ex.trace.end(ex)
                return duration_ms
            prefix = backend.metric_prefix if peer is None else _peer_prefix(key)
        else:
            prefix = self._record_labelled(ex, duration_ms)
        if self.access_log is not None:
            access_filter = self.access_filter
            if access_filter is None or access_filter(ex):
                self._log(ex, duration_ms, prefix)
        if self.on_record is not None:
            self.on_record(self, ex, duration_ms, prefix)
        if ex.trace is not None:
            ex.trace.end(ex)
        return duration_ms

    def _series_of(self, key: tuple[Any, ...]) -> Any:
        """The series of a routed request (``record``'s key: backend, pool, status, flags,
        client connection's security, then an inbound mTLS caller's service and version);
        kept per listener, emptied with each new router (and when full), as its pools are
        then replaced. The labels are those ``_record_labelled`` would give the request."""
        backend, pool, status, flags, conn_security = key[:5]
        security = conn_security if self.kind == "inbound" else _pool_security(pool, flags)
        if len(key) == 5:
            prefix, version = backend.metric_prefix, pool.version
        else:
            prefix = _peer_prefix(key)
            version = backend.pools[0].version if backend.pools else "unknown"
        series = self.stats.series_for((prefix, version, status, flags, security))
        if len(self._series) >= _SERIES_KEPT:
            self._series.clear()
        self._series[key] = series
        return series

    def _record_labelled(self, ex: Exchange, duration_ms: float) -> tuple[str, ...]:
        """``record``'s general case: labels built for this request; returns the prefix."""
        backend = ex.backend
        conn = ex.downstream
        if conn.peer_service is not None and backend is not None:
            prefix = ("destination", conn.peer_service, conn.peer_version,
                      *backend.metric_prefix[3:])
            version = backend.pools[0].version if backend.pools else "unknown"
        elif backend is not None:
            prefix = backend.metric_prefix
            pool = ex.pool
            version = pool.version if pool is not None else _version_of(backend)
        else:
            prefix = self._unrouted_prefix(ex)
            version = "unknown"
        security = conn.security if self.kind == "inbound" else outbound_security(ex)
        if ex.http2 and ex.grpc:  # type: ignore[attr-defined]  # (an H2Exchange)
            # a gRPC call: its grpc-status is a label too ("" when it ended without one)
            self.stats.record_grpc(prefix, version, ex.status, ex.flags, security,
                                   duration_ms, ex.bytes_in, ex.bytes_out,
                                   ex.grpc_status or "")  # type: ignore[attr-defined]
        else:
            self.stats.record(prefix, version, ex.status, ex.flags, security, duration_ms,
                              ex.bytes_in, ex.bytes_out)
        return prefix

    def record_rules(self, ex: Exchange) -> float:
        """``record``, then the request's named rule, if it has one (see ``use``)."""
        duration_ms = Listener.record(self, ex)
        decision = ex.decision
        counter = decision.counter if decision is not None else None
        if counter is not None:
            counter.record(ex, duration_ms)  # the same duration as its ami_requests series
        return duration_ms

    def record_debug(self, ex: Exchange) -> float:
        """``record`` (or ``record_rules``), then the request's DEBUG line."""
        duration_ms = (self.record_rules(ex) if self.counting_rules
                       else Listener.record(self, ex))
        router_log.debug("%s", request_line(self.kind, ex, duration_ms))
        return duration_ms

    def record_rejection(self, conn: DownstreamProtocol, reason: str,
                         destination: str = "unknown") -> None:
        from proxy.reasons import NOT_SENT, REASONS, body_length

        status, sent = (0, 0) if reason in NOT_SENT else (REASONS[reason][0], body_length(reason))
        prefix = (*self._source_labels(conn), destination, "unknown")
        self.stats.record(prefix, "unknown", status, reason, conn.security, 0.0, 0, sent)
        if self.debug_requests:
            router_log.debug("%s request from %s refused before routing: status=%s reason=%s",
                             self.kind, conn.client_ip.decode("latin-1"), status or "-", reason)
        if self.access_log is not None and (
                self.access_filter is None or self.access_filter(FilterView(status, reason))):
            # Hostile or broken input is what an operator greps the log for; the head was not
            # understood, so the request's own fields are null.
            self.access_log.write(access_line(
                wall_start(conn.head_started or monotonic()), self.kind, None, None, None, status,
                reason, 0.0, 0, sent, None, prefix[1], destination, None, None, None,
                conn.client_ip.decode("latin-1")))

    def _unrouted_prefix(self, ex: Exchange) -> tuple[str, ...]:
        """Labels of a request no backend took: the host asked for is `destination_service`
        (on the outbound listener, what its app asked for: a misspelt service shows), but
        the label values a client can choose stay bounded: at the gateway, whose clients are
        anyone, it is `unknown`; elsewhere the first _MAX_UNROUTED_HOSTS hosts are named."""
        from proxy.headers import service_from_authority

        host = "unknown"
        if self.kind != "gateway":
            asked = service_from_authority(ex.authority)
            hosts = self.unrouted_hosts
            if asked in hosts or (asked and len(hosts) < _MAX_UNROUTED_HOSTS):
                hosts.add(asked)
                host = asked
        return (*self._source_labels(ex.downstream), host, "unknown")

    def _source_labels(self, conn: DownstreamProtocol) -> tuple[str, str, str]:
        """Reporter and caller for a request that reached no backend: on an outbound or
        gateway listener the caller is this proxy's own workload (Istio reports the client
        for its BlackHole 404s too); inbound, the verified peer when there is one."""
        if self.kind != "inbound":
            return ("source", *self.router.source)
        if conn.peer_service is not None:
            return ("destination", conn.peer_service, conn.peer_version)
        return ("destination", "unknown", "unknown")

    def _log(self, ex: Exchange, duration_ms: float, prefix: tuple[str, ...]) -> None:
        pool = ex.pool
        line = access_line(
            wall_start(ex.start_time), self.kind, ex.method.decode("latin-1"), ex.path,
            ex.authority,
            ex.status, ex.flags, round(duration_ms, 3), ex.bytes_in, ex.bytes_out,
            _request_id(ex), prefix[1], prefix[3],
            # the endpoint this request went to (the last attempt's), not the subset's first
            pool.address_text if pool is not None else None, ex.protocol,
            # null unless a gRPC call got one
            ex.grpc_status if ex.http2 else None,  # type: ignore[attr-defined]
            (trusted_client(ex, self.trusted_proxies) if self.trusted_proxies
             else ex.downstream.client_ip).decode("latin-1"))
        if self.logs_authz:
            # (set only where a policy refused it or the dry-run policies differ)
            authz = getattr(ex, "authz", None)
            if authz is not None:
                line = log_fields(line, authz)
        self.access_log.write(line)  # type: ignore[union-attr]  # (the caller's test)

    def refuse_plaintext(self, grace: float) -> None:
        """The mesh turned STRICT: no plaintext connection carries another request.

        Idle ones close now; one with a request in flight (it began under the old mode)
        closes after its response, or after `grace` seconds (a stream, a tunnel or a TCP
        service's connection) at most.
        Plaintext connections accepted from now on are refused like a failed handshake.
        """
        self.plaintext_allowed = False
        refused = [conn for conn in self.connections if conn.security == "none"]
        for conn in refused:
            conn.refuse_plaintext()
        if refused:
            self.loop.call_later(grace, _abort_all, refused)

    def sweep(self, now: float) -> None:
        for conn in list(self.connections):
            conn.check_timers(now)

    def drain(self) -> None:
        if self.server is not None:
            self.server.close()
        for conn in list(self.connections):
            conn.drain()


class FilterView:
    """What an access log filter sees of a line that is no parsed request: a request refused
    before its head was understood, a TCP connection (status 0: no response was sent)."""

    __slots__ = ("authority", "authz", "flags", "status")
    method = b""
    path = query = ""

    def __init__(self, status: int, flags: str, authority: str | None = None,
                 authz: tuple[str | None, ...] | None = None) -> None:
        self.status, self.flags, self.authority = status, flags, authority or ""
        self.authz = authz  # a TCP connection's authorization fields (proxy.authzstats.audited)


def request_line(kind: str, ex: Exchange, duration_ms: float) -> str:
    """One request as ami.proxy.router's DEBUG tells it: what came in, which rule and backend
    took it, which endpoint answered, and how."""
    decision, backend, pool = ex.decision, ex.backend, ex.pool
    rule = getattr(decision.rule, "name", None) if decision is not None else None
    where = ("no route" if backend is None
             else f"{backend.service}{'/' + backend.subset if backend.subset else ''}")
    return (f"{kind} {ex.method.decode('latin-1')} {ex.authority}{ex.path} "
            f"rule={rule or '-'} -> {where} endpoint={pool.address if pool else '-'} "
            f"status={ex.status} reason={ex.flags} {ex.protocol} {duration_ms:.1f}ms")


def _abort_all(conns: list[DownstreamProtocol]) -> None:
    for conn in conns:
        # (a TCP session's connection is `closed` to HTTP from its start, yet open)
        if conn.transport is not None and (not conn.closed or conn.tcp_session is not None):
            conn.transport.abort()


def _request_id(ex: Exchange) -> str | None:
    """The request's x-request-id: the client's, or the one this proxy added when it had none
    (requesthead puts that line third in the head's tail, after the two forwarding ones)."""
    tail = ex.head_tail
    if len(tail) > 2 and tail[2].startswith(b"x-request-id: "):
        return tail[2][14:].rstrip().decode("latin-1")
    found = ex.header("x-request-id")
    if found:
        return found
    for line in tail:  # (an exchange made elsewhere may put its lines in another order)
        if line.startswith(b"x-request-id: "):
            return line[14:].rstrip().decode("latin-1")
    return None


def _peer_prefix(key: tuple[Any, ...]) -> tuple[str, ...]:
    """The labels before the version of a request from an inbound mTLS peer (``record``'s
    key), as ``_record_labelled`` builds them."""
    return ("destination", key[5], key[6], *key[0].metric_prefix[3:])


def outbound_security(ex: Exchange) -> str:
    """How the request left this sidecar: `unknown` when it never did (answered locally, or
    no connection to its endpoint could be made)."""
    pool = ex.pool
    if pool is None:
        return "unknown"
    return _pool_security(pool, ex.flags)


def _pool_security(pool: Any, flags: str) -> str:
    """connection_security_policy of a request sent to ``pool``'s endpoint and ended with
    ``flags``: the connection's, and `unknown` when none was made (as Istio labels what has
    no connection to take it from); the series cache (``_series_of``) calls it once per
    key."""
    if flags == "upstream_connect_failure":
        return "unknown"
    return "mutual_tls" if pool.tls is not None else "none"


def _version_of(backend: Any) -> str:
    pools = backend.pools
    return pools[0].version if pools else "unknown"
