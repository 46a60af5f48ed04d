"""Proxy lifecycle: bind listeners, apply snapshots, run periodic sweeps, drain on shutdown."""

from __future__ import annotations

import asyncio
import logging
import random
import signal
import sys
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from typing import Any

from proxy.accesslog import AccessLogCollector, AccessLogSink
from proxy.authzstats import with_audits
from proxy.config import Address, ListenError, Snapshot
from proxy.destinations import DestinationRegistry
from proxy.downstream import DownstreamProtocol
from proxy.inbound import InboundPolicy
from proxy.layers import RuleLimits
from proxy.listener import Limits, Listener
from proxy.metrics import RequestStats
from proxy.mtls import TlsAcceptor, bind_socket, downstream_protocols
from proxy.pools import PoolRegistry
from proxy.routing import Router, RouterBuilder

log = logging.getLogger("ami.proxy")


@dataclass(frozen=True, slots=True)
class ProxyOptions:
    """What the command line decides; the snapshot decides everything else."""

    mode: str = "sidecar"  # sidecar | gateway
    listeners: dict[str, Address] = field(default_factory=dict)
    limits: Limits = field(default_factory=Limits)
    drain_timeout: float = 20.0
    access_log: bool | None = None  # None: follow the snapshot's mesh.accessLog
    gateway_tls: Any = None  # proxy.servingcert.ServingCertificates: HTTPS on the gateway
    app_probe: Any = None  # proxy.appprobe.ProbeSpec: how the agent tells the app serves
    app_protocol: str | None = None  # --app-protocol; None: the snapshot's appProtocol
    tcp_upstreams: tuple[Any, ...] = ()  # proxy.tcpupstream.TcpUpstreamSpec per --tcp-upstream
    trusted_proxies: int = 0  # --trusted-proxies: load balancers in front of the gateway
    proxy_protocol: bool = False  # --proxy-protocol: the gateway's connections open with one


def _tunnel_check(outbound: Router | None) -> Callable[[Address], bool]:
    """Whether the outbound router would still open `CONNECT address` to an outside host."""
    egress = outbound.egress if outbound is not None else None
    if egress is None:
        return lambda _address: False
    return lambda a: egress.allows_tunnel(f"[{a.host}]:{a.port}" if ":" in a.host else str(a))


class ProxyServer:
    """Owns listeners, pools and the current snapshot; `run()` serves until shutdown."""

    def __init__(self, options: ProxyOptions, *, rng: random.Random | None = None) -> None:
        self.options = options
        self.loop = asyncio.get_running_loop()
        self.rng = rng or random.Random()
        self.stats = RequestStats()
        # A response head is held to the same size as a request head (--max-header-bytes).
        self.pools = PoolRegistry(self.loop, max_head_bytes=options.limits.max_header_bytes)
        self.destinations = DestinationRegistry(self.stats)
        self.listeners: dict[str, Listener] = {}
        self.snapshot: Snapshot | None = None
        self.config_applied = asyncio.Event()
        self.listeners_bound = False
        self.tls: Any = None  # TlsContexts once this proxy has a workload identity
        self.draining = False
        self.app_probe: Any = None  # proxy.appprobe.AppProbe, in control-plane mode with --app
        self.stopped = asyncio.Event()
        self.access_log_enabled = False
        self.access_filter: Callable[[Any], bool] | None = None  # a Telemetry's filter
        # the listeners (kinds) whose AUDIT policies write lines even while the log is off
        self._audited: frozenset[str] = frozenset()
        self.on_snapshot: list[Callable[[Snapshot], None]] = []
        # OpenTelemetry's TracerProvider once tracing is on (proxy.tracing), shut down at exit
        self.tracing_provider: Any = None
        self.on_drain: list[Callable[[], None]] = []  # called once when the drain starts
        # stdout's writer thread starts with the first line logged (proxy/accesslog.py)
        self.access_log = AccessLogSink(sys.stdout)
        self.extra_collectors: list[Any] = [AccessLogCollector(self.access_log)]
        self.config_source: Any = None  # proxy.staticreload.StaticReloader in static mode
        self._compile_matches = _matcher_compiler()
        self._inbound_policy: InboundPolicy | None = None  # its rate-limit buckets outlive pushes
        self._rule_limits: RuleLimits | None = None  # route rules' buckets, likewise
        self.tcp_targets: dict[str, Any] = {}  # the snapshot's TCP services (proxy.tcpclient)
        self.source = ("unknown", "unknown")  # this proxy's workload and version, as a caller
        self.tcp_listeners: list[Any] = []  # proxy.tcpupstream.TcpUpstreamListener
        self.backends: tuple[Any, ...] = ()  # the snapshot's (proxy.routing.Backend)
        self.admin: Any = None  # proxy.adminhttp.AdminServer, once bound
        self.identity_agent: Any = None  # proxy.identity_agent.IdentityAgent (control plane)

    # --- configuration ------------------------------------------------------------------------
    def apply(self, snapshot: Snapshot) -> None:
        """Compile and swap in a snapshot; raises (and changes nothing) if it cannot be built."""
        if self.options.app_protocol is not None:
            snapshot = replace(snapshot, app_protocol=self.options.app_protocol)
        self.pools.begin()
        self.stats.rules.begin()
        self.stats.authz.begin()
        kinds = self.listeners or self._listener_kinds(snapshot)
        inbound_policy = InboundPolicy(snapshot.authorization, snapshot.inbound_mtls,
                                       snapshot.inbound_rate_limit, self.stats,
                                       snapshot.node.service, previous=self._inbound_policy,
                                       label=snapshot.node.metrics_name or None,
                                       authentication=snapshot.authentication,
                                       port=snapshot.app.port if snapshot.app else 0,
                                       providers=snapshot.ext_authz,
                                       exported="inbound" in kinds)
        gateway_policy = None
        if "gateway" in (self.listeners or self._listener_kinds(snapshot)):
            # `to: ports` at the gateway names its listening port, as at Istio's ingress
            gateway_address = self.listener_addresses(snapshot).get("gateway")
            gateway_policy = InboundPolicy(snapshot.authorization, snapshot.inbound_mtls, None,
                                           self.stats, snapshot.node.service,
                                           # (its series' label: the node's metrics name,
                                           # as the sidecar-side policy's and `meshctl authz`)
                                           label=snapshot.node.metrics_name or None,
                                           authentication=snapshot.authentication,
                                           gateway=True,
                                           port=gateway_address.port if gateway_address else 0,
                                           proxy_protocol=self.options.proxy_protocol,
                                           providers=snapshot.ext_authz)
        rule_limits = RuleLimits(self.stats, previous=self._rule_limits)
        builder = RouterBuilder(snapshot, self.pools, self.rng, self._compile_matches,
                                self.destinations, inbound_policy, gateway_policy,
                                self.stats.rules, rule_limits)
        passthrough = None
        if self.options.mode == "gateway" and snapshot.gateway_passthrough:
            from proxy.sniroutes import build as build_sni_routes

            passthrough = build_sni_routes(snapshot.gateway_passthrough, builder.tcp_targets(),
                                           snapshot.services)
        routers: dict[str, Router] = {}
        for kind in self.listeners or self._listener_kinds(snapshot):
            routers[kind] = (builder.inbound() if kind == "inbound"
                             else builder.gateway(
                                 "http" if self.options.gateway_tls is None else "https",
                                 # (terminated connections exist on the HTTPS gateway only)
                                 passthrough if self.options.gateway_tls is not None else None)
                             if kind == "gateway"
                             else builder.outbound(self._proxy_ports))
        # Everything compiled: now swap, one assignment per listener.
        for kind, router in routers.items():
            if kind in self.listeners:
                self.listeners[kind].use(router)
        for kind, policy in (("inbound", inbound_policy), ("gateway", gateway_policy)):
            if kind in self.listeners:  # (their access log lines may name a policy)
                self.listeners[kind].logs_authz = policy is not None and policy.tally is not None
        self._audited = frozenset(
            kind for kind, policy in (("inbound", inbound_policy), ("gateway", gateway_policy))
            if policy is not None and policy.audit is not None and policy.audit.enforced)
        gateway = self.listeners.get("gateway")
        if gateway is not None:
            gateway.passthrough = passthrough
            gateway.reads_hello = passthrough is not None or gateway.scheme == "https"
        peer_line = f"x-ami-peer: {snapshot.node.service};{snapshot.node.version}\r\n".encode()
        for listener in self.listeners.values():
            if listener.kind != "inbound":
                listener.peer_line = peer_line
        tcp_targets = builder.tcp_targets()
        inbound = self.listeners.get("inbound")
        if inbound is not None:
            inbound.tcp = _tcp_inbound(snapshot, inbound_policy, self.pools)
            inbound.xfcc_trusted = frozenset(snapshot.mesh.trusted_xfcc)
            inbound.xfcc_gateways = frozenset(snapshot.mesh.gateway_xfcc)
            if snapshot.inbound_mtls == "STRICT":
                if inbound.plaintext_allowed:
                    inbound.refuse_plaintext(self.options.drain_timeout)
            else:
                inbound.plaintext_allowed = True
        previous = self.snapshot
        policies_changed = previous is not None and (
            previous.authorization, previous.authentication, previous.app) != (
            snapshot.authorization, snapshot.authentication, snapshot.app)
        self._pending_routers = routers
        self._inbound_policy = inbound_policy
        rule_limits.settle()
        self._rule_limits = rule_limits
        self.tcp_targets = tcp_targets
        self.source = (snapshot.node.service, snapshot.node.version)
        self.backends = builder.backends()
        self.snapshot = snapshot
        self.pools.retire_unused(_tunnel_check(routers.get("outbound")))
        self.stats.rules.retire_unused()
        self.stats.authz.retire_unused()
        self._set_access_log(snapshot)
        if policies_changed:
            from proxy import revoke

            # Revoking access holds for what is open too: connections the new policies refuse
            # end now, before the ACK (proxy.revoke); after the access log is set, since an
            # open TCP connection a new AUDIT policy marks takes the listener's log
            if inbound is not None:
                revoke.recheck(inbound, inbound_policy)
            if gateway is not None and gateway_policy is not None:
                revoke.recheck(gateway, gateway_policy)
        if log.isEnabledFor(logging.DEBUG):  # once per push, not per request
            log.debug("config %s applied: %s", snapshot.version, _summary(snapshot))
        for hook in self.on_snapshot:
            hook(snapshot)
        self.config_applied.set()

    def set_identity(self, identity: Any) -> None:
        """Install a new workload identity (first one or a renewal) without dropping anything."""
        from proxy.tls import TlsContexts

        if self.tls is None:
            self.tls = TlsContexts(identity)
            self.pools.tls = self.tls
            if self.snapshot is not None:
                self.apply(self.snapshot)  # pools now reach mesh endpoints over mTLS
        else:
            self.tls.update(identity)
        for listener in self.listeners.values():
            if listener.kind == "inbound":
                listener.xfcc_by = identity.spiffe_id.encode()

    @property
    def identity_ready(self) -> bool:
        """A certificate is loaded, or neither the mesh nor this proxy's inbound uses mTLS."""
        if self.tls is not None:
            return True
        return (self.snapshot is not None and self.snapshot.mesh.mtls == "DISABLE"
                and self.snapshot.inbound_mtls == "DISABLE")

    def _set_access_log(self, snapshot: Snapshot) -> None:
        enabled = (self.options.access_log if self.options.access_log is not None
                   else snapshot.access_log)
        telemetry = snapshot.telemetry
        self.access_filter = telemetry.access_filter if telemetry is not None else None
        self.set_access_log(enabled)

    def set_access_log(self, enabled: bool) -> None:
        self.access_log_enabled = enabled
        sink = self.access_log if enabled else None
        for listener in self.listeners.values():
            if listener.kind in self._audited:
                # its AUDIT policies' marks are written whatever the switch and the filter
                # (decided here: a listener without them pays nothing per request)
                listener.access_log = self.access_log
                listener.access_filter = with_audits(self.access_filter, enabled)
                continue
            listener.access_log = sink
            listener.access_filter = self.access_filter if enabled else None
        for tcp in self.tcp_listeners:
            tcp.access_log = sink
            tcp.access_filter = self.access_filter if enabled else None

    def log_levels_changed(self) -> None:
        """Recompute the hot path's DEBUG flags (proxy.loglevels calls this after a change)."""
        from proxy import pools

        for listener in self.listeners.values():
            listener.set_debug()
        pools.set_debug()

    def _listener_kinds(self, snapshot: Snapshot) -> list[str]:
        return [k for k in self.listener_addresses(snapshot) if k != "admin"]

    def listener_addresses(self, snapshot: Snapshot | None) -> dict[str, Address]:
        """The listeners' addresses (admin too) ``snapshot`` gives, the command line's winning."""
        addresses = dict(snapshot.listeners) if snapshot is not None else {}
        addresses.update(self.options.listeners)
        if self.options.mode != "gateway":
            addresses.pop("gateway", None)
        return addresses

    # --- serving ------------------------------------------------------------------------------
    async def start_listeners(self) -> None:
        """Bind every data-plane listener declared on the command line or in the snapshot."""
        routers: dict[str, Router] = getattr(self, "_pending_routers", {})
        for kind, address in self.listener_addresses(self.snapshot).items():
            if kind == "admin" or kind in self.listeners:
                continue
            try:
                self.listeners[kind] = await self._bind(kind, address, routers.get(kind))
            except OSError as exc:
                raise ListenError(f"{kind} listener", address, exc) from None
            log.info("listening: %s on %s", kind, address)
        if not self.tcp_listeners:
            await self._start_tcp_upstreams()
        if self.snapshot is not None:
            self.apply(self.snapshot)  # build routers for listeners bound after the snapshot
        self.listeners_bound = True

    async def _bind(self, kind: str, address: Address, router: Router | None) -> Listener:
        """One data-plane listener, bound and accepting."""
        https = kind == "gateway" and self.options.gateway_tls is not None
        listener = Listener(kind, self.loop, router or Router({}), self.stats,
                            self.options.limits, tls=https)
        if kind == "gateway":
            listener.trusted_proxies = self.options.trusted_proxies
        if https:
            acceptor = TlsAcceptor(listener, bind_socket(address.host, address.port),
                                   lambda: self.options.gateway_tls, lambda: "STRICT",
                                   **downstream_protocols(listener),
                                   passthrough=_passthrough_of(listener),
                                   proxy_protocol=self.options.proxy_protocol)
            acceptor.start()
            listener.server = acceptor  # type: ignore[assignment]
        elif kind == "inbound":
            # Always through the acceptor: in STRICT a connection is refused until this
            # proxy has an identity, never served in plaintext.
            acceptor = TlsAcceptor(
                listener, bind_socket(address.host, address.port), lambda: self.tls,
                self._mtls_mode, **downstream_protocols(listener))
            acceptor.start()
            listener.server = acceptor  # type: ignore[assignment]
            if self.tls is not None:
                listener.xfcc_by = self.tls.identity.spiffe_id.encode()
        elif kind == "gateway" and self.options.proxy_protocol:
            # plaintext, its PROXY header read by the acceptor before HTTP (proxy.proxyread)
            acceptor = TlsAcceptor(listener, bind_socket(address.host, address.port),
                                   lambda: None, lambda: "DISABLE",
                                   **downstream_protocols(listener), proxy_protocol=True)
            acceptor.start()
            listener.server = acceptor  # type: ignore[assignment]
        else:
            listener.server = await self.loop.create_server(
                _protocol_factory(listener), address.host, address.port,
                backlog=1024, reuse_address=True,
            )
        return listener

    async def _start_tcp_upstreams(self) -> None:
        """Bind each --tcp-upstream port (proxy.tcpupstream)."""
        from proxy.tcpupstream import TcpUpstreamListener

        for spec in self.options.tcp_upstreams:
            listener = TcpUpstreamListener(spec, self.stats, lambda: self.tcp_targets,
                                           self.options.limits.max_connections,
                                           lambda: self.source)
            try:
                await listener.start(self.loop)
            except OSError as exc:
                raise ListenError(f"tcp upstream {spec.service}", spec.listen, exc) from None
            self.tcp_listeners.append(listener)
            log.info("listening: tcp upstream %s on %s", spec.service, spec.listen)

    def _proxy_ports(self) -> set[int]:
        """Ports this proxy takes requests on: a passthrough to one of them would loop."""
        ports: set[int] = set()
        for listener in self.listeners.values():
            if listener.kind in ("outbound", "gateway") and listener.server is not None:
                ports.update(sock.getsockname()[1] for sock in listener.server.sockets)
        return ports

    def _mtls_mode(self) -> str:
        """What the inbound acceptor takes now: this service's effective mode."""
        return self.snapshot.inbound_mtls if self.snapshot is not None else "STRICT"

    def bound_address(self, kind: str) -> Address:
        listener = self.listeners[kind]
        assert listener.server is not None
        host, port = listener.server.sockets[0].getsockname()[:2]
        return Address(host, port)

    @property
    def ready(self) -> bool:
        return (self.listeners_bound and self.config_applied.is_set() and self.identity_ready
                and not self.draining)

    async def run_sweeper(self) -> None:
        """Once a second: slow headers, idle keep-alive clients, idle upstream connections."""
        while not self.stopped.is_set():
            try:
                await asyncio.wait_for(self.stopped.wait(), 1.0)
            except TimeoutError:
                pass
            now = self.loop.time()
            for listener in self.listeners.values():
                listener.sweep(now)
            self.pools.sweep()

    async def shutdown(self, deadline: float | None = None) -> None:
        """Fail readiness, stop accepting, let in-flight requests finish, then stop."""
        if self.draining:
            return
        self.draining = True
        for hook in self.on_drain:
            hook()  # the control-plane agent reports "not ready" now, not at its next check
        log.info("draining: waiting up to %.1fs for in-flight requests", self.options.drain_timeout)
        for kind, listener in self.listeners.items():
            if kind != "outbound":  # the local app may still need the mesh while it finishes
                listener.drain()
        end = self.loop.time() + (deadline if deadline is not None else self.options.drain_timeout)
        inbound_side = [lst for lst in self.listeners.values() if lst.kind != "outbound"]
        await asyncio.gather(*(lst.wait_quiet(end - self.loop.time()) for lst in inbound_side))
        for tcp in self.tcp_listeners:  # the app's own side, as the outbound listener
            tcp.close()
        if "outbound" in self.listeners:
            outbound = self.listeners["outbound"]
            outbound.drain()
            await outbound.wait_quiet(end - self.loop.time())
        for tcp in self.tcp_listeners:
            tcp.close_all()
        for listener in self.listeners.values():
            for conn in list(listener.connections):
                if conn.transport is not None:
                    conn.lost_reason = "drain_timeout"  # what its requests in flight say
                    conn.transport.close()
        self.pools.close_all()
        self.stopped.set()

    def install_signal_handlers(self) -> None:
        for sig in (signal.SIGTERM, signal.SIGINT):
            self.loop.add_signal_handler(sig, lambda: self.loop.create_task(self.shutdown()))


def _tcp_inbound(snapshot: Snapshot, policy: InboundPolicy, pools: PoolRegistry) -> Any:
    """What the inbound listener takes `ami-tcp` connections with: only for a `tcp` app."""
    if snapshot.app_protocol != "tcp" or snapshot.app is None:
        return None
    from proxy.routing import tcp_idle_timeout
    from proxy.tcpinbound import TcpInbound

    # The service's own connectionPool.tcpIdleTimeout (1 h by default) bounds its idle
    # connections here too, as Envoy's inbound TCP proxy does: a plaintext caller without a
    # sidecar (PERMISSIVE) has no caller-side timer to end them.
    own = snapshot.services.get(snapshot.node.service)
    idle = tcp_idle_timeout(own.policy) if own is not None else tcp_idle_timeout(None)
    return TcpInbound(snapshot.app, policy, snapshot.node.service, snapshot.node.version,
                      idle_timeout=idle, metrics_name=snapshot.node.metrics_name)


def _summary(snapshot: Snapshot) -> str:
    """A config in one line, for ami.proxy's DEBUG: what an operator checks first."""
    endpoints = sum(len(s.endpoints) for s in snapshot.services.values())
    return (f"mTLS {snapshot.mesh.mtls} (inbound {snapshot.inbound_mtls}), "
            f"{len(snapshot.services)} services with {endpoints} endpoints, routes for "
            f"{', '.join(sorted(snapshot.routes)) or 'no host'}, "
            f"{len(snapshot.authorization)} authorization policies, "
            f"{len(snapshot.external)} external hosts")


def _passthrough_of(listener: Listener) -> Callable[[], Any]:
    """The gateway listener's current TLS passthrough table (swapped by `apply`)."""
    return lambda: listener.passthrough


def _protocol_factory(listener: Listener) -> Callable[[], DownstreamProtocol]:
    return lambda: DownstreamProtocol(listener)


def _matcher_compiler() -> Callable[[Any], Any]:
    from proxy.policy.matching import compile_matches

    def compile_or_none(matches: Any) -> Any:
        return compile_matches(matches) if matches else None

    return compile_or_none
