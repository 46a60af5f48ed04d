"""Routing tables compiled from a snapshot: host -> ordered rules -> weighted backends.

Everything here is built once per snapshot (never per request): matchers are compiled, weights
become a picker, each backend gets its balancer and its endpoint pools. A request then costs a
dict lookup, the rule matchers and two random draws.
"""

from __future__ import annotations

import random
import time
from collections.abc import Callable, Container, Hashable, Mapping
from typing import TYPE_CHECKING, Any

from meshctl.api.external import HTTP2_PROTOCOLS, TUNNEL_PROTOCOLS, is_mesh_name
from proxy.clientaddress import trusted_client
from proxy.config import Address, Endpoint, ExternalHost, RouteConfig, Service, Snapshot
from proxy.egress import Egress, Wildcard
from proxy.headers import service_from_authority
from proxy.layers import CorsPolicy, RateLimitPolicy, RuleLimits, attach
from proxy.localitylb import locality_balancer
from proxy.origination import origination_for
from proxy.passthrough import PASSTHROUGH, Passthrough, authority_address
from proxy.policy.balancer import (
    LeastRequestBalancer,
    PeakEwmaBalancer,
    RandomBalancer,
    RingHashBalancer,
    RoundRobinBalancer,
)
from proxy.policy.matching import hash_key
from proxy.policy.panic import PanicGuard
from proxy.policy.slowstart import NEVER, SlowStartBalancer
from proxy.policy.sticky import StickyBalancer
from proxy.policy.weighted import WeightedPicker
from proxy.servicenames import lookup_service_name, unresolved_names
from proxy.sessioncookie import CookieAffinity

if TYPE_CHECKING:
    from proxy.destinations import DestinationRegistry, DestinationState
    from proxy.exchange import Exchange
    from proxy.inbound import InboundPolicy
    from proxy.layers import FaultPolicy, HeaderEditor, MirrorPolicy, RetryPolicy
    from proxy.pools import EndpointPool, PoolRegistry
    from proxy.routemetrics import RuleCounter, RuleTable
    from proxy.sniroutes import SniRoutes
    from proxy.tcpclient import TcpTarget

Matcher = Callable[["Exchange"], bool]


class Backend:
    """A concrete destination: the endpoints of one service subset and how to pick one."""

    __slots__ = ("balancer", "ewma", "hash_key", "metric_prefix", "outlier", "panic", "pools",
                 "service", "single", "state", "subset", "tcp_idle_timeout", "warmup")

    def __init__(self, service: str, subset: str | None, pools: tuple[EndpointPool, ...],
                 balancer: Any, metric_prefix: tuple[str, ...],
                 state: DestinationState | None = None,
                 hash_key: Callable[[Exchange], str | None] | None = None) -> None:
        self.service = service
        self.subset = subset
        self.pools = pools
        self.balancer = balancer
        self.metric_prefix = metric_prefix
        self.state = state
        self.outlier = state.outlier if state is not None else None
        # PEAK_EWMA learns from response times; the exchange feeds it only when it is in use
        # (a locality balancer's groups share one, its ``inner``).
        inner = getattr(balancer, "inner", None) or balancer
        self.ewma = inner if isinstance(inner, PeakEwmaBalancer) else None
        self.hash_key = hash_key  # CONSISTENT_HASH: the request's key (None: no key, any pick)
        # The endpoint every request gets, decided once: the only one, and nothing ejectable.
        # None: pick_endpoint decides per request.
        self.single = pools[0] if len(pools) == 1 and self.outlier is None else None
        # A subset's own connectionPool.tcpIdleTimeout (None: its TCP service's, TcpTarget's)
        self.tcp_idle_timeout: float | None = None
        # outlierDetection.minHealthPercent above 0: ejections are ignored in panic
        self.panic: PanicGuard | None = None
        # DestinationPolicy warmup (meshctl.api.policy.Warmup), for the admin's views: the
        # balancer itself is wrapped only while some endpoint is warming (SlowStartBalancer)
        self.warmup: Any = None

    def pick_endpoint(self, ex: Exchange | None = None,
                      exclude: list[EndpointPool] | None = None) -> EndpointPool | None:
        if self.single is not None:
            return self.single
        pools = self.pools
        if not pools:
            return None
        if self.hash_key is not None and ex is not None:
            key = self.hash_key(ex)
            if key is not None:
                by_key: EndpointPool | None = self.balancer.pick_by_key(key, exclude)
                return by_key
        picked: EndpointPool | None = self.balancer.pick(pools, exclude)
        return picked

    def pick_untried_endpoint(self, tried: list[EndpointPool],
                              ex: Exchange | None = None) -> EndpointPool | None:
        """For a retry: an endpoint not in ``tried`` if the balancer has one, else any."""
        if len(self.pools) > 1 and self.balancer is not None:
            picked = self.pick_endpoint(ex, tried)
            if picked is not None:
                return picked
        return self.pick_endpoint(ex)

    def serves(self, pool: EndpointPool) -> bool:
        """Whether a request for this backend may be sent to ``pool`` now."""
        if pool not in self.pools:
            return False
        if self.panic is not None:
            return self.panic.available(pool)
        return self.outlier is None or not self.outlier.is_ejected(pool)


class Decision:
    """A compiled route rule: where matching requests go and what policies apply."""

    __slots__ = ("admit", "backends", "counter", "fault", "mirror", "picker", "request_headers",
                 "response_header_ops", "retry", "rule", "timeout")

    def __init__(self, backends: tuple[Backend, ...], weights: tuple[int, ...],
                 rng: random.Random, rule: Any = None) -> None:
        self.backends = backends
        self.picker = WeightedPicker(weights, rng) if len(backends) > 1 else None
        self.rule = rule
        # Policies: None unless declared, so the exchange skips them at the cost of one test.
        self.timeout: float | None = None
        self.fault: FaultPolicy | None = None
        self.retry: RetryPolicy | None = None
        self.mirror: MirrorPolicy | None = None
        self.request_headers: HeaderEditor | None = None
        self.response_header_ops: HeaderEditor | None = None
        self.admit: Callable[[Exchange], Any] | None = None
        # A named rule's per-rule metrics (caller's side), read only by a listener whose
        # router has some (Router.counts_rules)
        self.counter: RuleCounter | None = None

    def pick_backend(self) -> Backend:
        if self.picker is None:
            return self.backends[0]
        return self.backends[self.picker.pick()]


class HostRoute:
    """The ordered rules of one host; the first matching rule wins."""

    __slots__ = ("only", "rules")

    def __init__(self, rules: tuple[tuple[Matcher | None, Decision], ...]) -> None:
        self.rules = rules
        # One rule matching everything (a service without a Route, the common case): its
        # decision, which Router.route returns without calling select
        self.only = rules[0][1] if len(rules) == 1 and rules[0][0] is None else None

    def select(self, ex: Exchange) -> Decision | None:
        for matcher, decision in self.rules:
            if matcher is None or matcher(ex):
                return decision
        return None


class ExternalHostRoute(HostRoute):
    """An ExternalService host: the rules of the request's port (HTTP ports only)."""

    __slots__ = ("fallback", "ports")

    def __init__(self, ports: Mapping[int, HostRoute], fallback: Passthrough | None) -> None:
        super().__init__(())
        self.ports = ports
        self.fallback = fallback  # ALLOW_ANY: an undeclared port of the host passes through

    def select(self, ex: Exchange) -> Decision | None:
        authority = ex.authority
        colon = authority.rfind(":")
        port = int(authority[colon + 1:]) if colon > authority.rfind("]") \
            and authority[colon + 1:].isdigit() else (80 if colon < 0 else -1)
        route = self.ports.get(port)
        if route is not None:
            return route.select(ex)
        if self.fallback is not None:
            decision = self.fallback.route(ex)
            return decision if isinstance(decision, Decision) else None
        return None


_AUTHORITY_CACHE = 512  # entries of Router._by_authority
_AUTHORITY_KEY_MAX = 255  # longer authorities are resolved each time, never kept


class Router:
    """Resolves a request to a Decision, or to a reason word for a local reply."""

    __slots__ = ("_by_authority", "_gateway", "_hosts", "_inbound", "_namespaces",
                 "counts_rules", "egress", "source", "tcp")

    def __init__(self, hosts: Mapping[str, HostRoute], inbound: Decision | None = None,
                 gateway: tuple[tuple[Matcher | None, HostRoute | None], ...] | None = None,
                 egress: Egress | None = None,
                 source: tuple[str, str] = ("unknown", "unknown"),
                 namespaces: Mapping[str, str] | None = None,
                 tcp: Mapping[str, TcpTarget] | None = None, counts_rules: bool = False) -> None:
        self._hosts = hosts
        # Authority as sent (`reviews:9080`) -> its host's rules, found once by
        # service_from_authority and the namespace forms: a request for a known host costs
        # one lookup. Bounded (_AUTHORITY_CACHE entries, short authorities only): a client
        # choosing Host values must not grow it; misses are not kept.
        self._by_authority: dict[str, HostRoute] = {}
        # Some decision has a named rule's counter: the listener records through it
        # (Listener.use); False, its requests pay nothing for per-rule metrics.
        self.counts_rules = counts_rules
        # TCP services (outbound): `CONNECT db:5432` to one is a byte tunnel (proxy.tcpclient)
        self.tcp = tcp or {}
        self._namespaces = namespaces or {}  # mesh service -> its namespace (outbound)
        self._inbound = inbound
        self._gateway = gateway
        # Hosts outside the mesh (ExternalServices, ALLOW_ANY; outbound listener only). Exact
        # ExternalService hosts with HTTP ports are in ``hosts`` (ExternalHostRoute): a request
        # for a mesh service never gets here.
        self.egress = egress
        # (workload, version) of the caller, for requests that get no backend (outbound and
        # gateway: this proxy's own node)
        self.source = source

    def route(self, ex: Exchange) -> Decision | str:
        if self._inbound is not None:
            return self._inbound
        egress = self.egress
        if egress is not None and ex.method == b"CONNECT":
            return egress.connect(ex)
        if self._gateway is not None:
            for matcher, target in self._gateway:
                if matcher is None or matcher(ex):
                    host_route = target
                    break
            else:
                return "no_route"
        else:
            authority = ex.authority
            host_route = self._by_authority.get(authority)
            if host_route is None:
                host = service_from_authority(authority)
                host_route = self._hosts.get(host)
                if host_route is None:
                    host_route = lookup_service_name(self._hosts, host, self._namespaces.get)
                if (host_route is not None and len(authority) <= _AUTHORITY_KEY_MAX
                        and len(self._by_authority) < _AUTHORITY_CACHE):
                    self._by_authority[authority] = host_route
        if host_route is None:
            return "no_route" if egress is None else egress.other(ex)
        decision = host_route.only
        if decision is not None:
            return decision
        decision = host_route.select(ex)
        return decision if decision is not None else "no_route"

    def is_mesh_host(self, authority: str) -> bool:
        """Whether ``authority``'s host is a mesh service or Route host, not an outside host."""
        host = service_from_authority(authority)
        found = self._hosts.get(host)
        if found is None:  # `reviews.default`, ... or an outside host a wildcard declares
            found = lookup_service_name(self._hosts, host, self._namespaces.get)
        return found is not None and not isinstance(found, ExternalHostRoute)

    def tunnels_into_mesh(self, authority: str) -> bool:
        """Whether `CONNECT authority` opens a tunnel whose requests this router takes (its
        host is a mesh service or a Route's host, as `Host` routing finds it), rather than a
        byte tunnel out of the mesh. Outbound only. A name outside the mesh is not taken by
        its first label (`reviews.example.com`: an outside host, not `reviews`), and an
        ExternalService declaring the host and port for TLS or TCP keeps it (egress's). A
        declared HTTP port (HTTP, HTTP2, GRPC) of an ExternalService host, exact or wildcard,
        is taken too: its requests are routed one by one (an exact host's Route applies) as
        direct ones are, instead of a byte tunnel bypassing that."""
        if self._inbound is not None or self._gateway is not None:
            return False
        host = service_from_authority(authority)
        host_route = self._hosts.get(host)
        if isinstance(host_route, ExternalHostRoute):
            address = authority_address(authority, 0)
            return address is not None and address.port in host_route.ports
        egress = self.egress
        if host_route is None:  # `api.b...`: b's `api`; never by a first label alone
            host_route = lookup_service_name(self._hosts, host, self._namespaces.get,
                                             first_label=False)
            if host_route is None:
                return egress is not None and egress.declares_http(authority)
        if host_route is None or isinstance(host_route, ExternalHostRoute):
            return False
        return egress is None or not egress.declares_tunnel(authority)


class RouterBuilder:
    """Compiles a snapshot into the routers of each listener kind."""

    def __init__(self, snapshot: Snapshot, pools: PoolRegistry, rng: random.Random,
                 compile_matches: Callable[[Any], Matcher | None],
                 destinations: DestinationRegistry, inbound_policy: Any = None,
                 gateway_policy: Any = None, rules: RuleTable | None = None,
                 limits: RuleLimits | None = None) -> None:
        self.snapshot = snapshot
        self.pools = pools
        self.rng = rng
        self.compile_matches = compile_matches
        self.destinations = destinations
        self.inbound_policy = inbound_policy
        self.gateway_policy = gateway_policy  # the policies selecting the gateway's service
        self._backends: dict[tuple[str, str | None, str], Backend] = {}
        self._tcp: dict[str, TcpTarget] | None = None
        self.rules = rules  # where named rules are counted (None: they are not)
        self._counted = False  # the router being built has a named rule's counter
        # route rules' rate-limit buckets (pass the proxy's, made with the previous one, to
        # keep them across pushes); the router being built: part of a limited rule's identity
        self.limits = limits  # (None: made when a rule has a limit, kept for this snapshot)
        self._router = "outbound"

    def backends(self) -> tuple[Backend, ...]:
        """Every backend the routers built so far use (for the admin's views)."""
        return tuple(self._backends.values())

    def tcp_targets(self) -> dict[str, TcpTarget]:
        """The snapshot's TCP services, as callers reach them (built once per snapshot)."""
        if self._tcp is None:
            from proxy.tcpclient import TcpTarget

            node = self.snapshot.node
            self._tcp = {name: TcpTarget(name, self._tcp_decision(service),
                                         (node.service, node.version),
                                         node.version.encode("ascii", "replace"),
                                         tcp_idle_timeout(service.policy), service.namespace)
                         for name, service in self.snapshot.services.items()
                         if service.protocol == "tcp"}
        return self._tcp

    def _tcp_decision(self, service: Service) -> Decision:
        """Where this proxy's connections to a TCP service go: the weighted backends of the
        first rule of its Route that applies to a connection, else the whole service (as
        Istio's default TCP route). A rule applies unless it has an HTTP-only action, or all
        its match blocks are for other sources or name an HTTP-only condition (a request's
        path, headers... which a connection has none of). Settled here, once per snapshot:
        a connection has nothing else to match."""
        snap = self.snapshot
        route = snap.routes.get(service.name)
        for rule in route.rules if route is not None else ():
            blocks = _own_blocks(rule.matches, snap.node)
            if (rule.http_actions or blocks is None
                    or (blocks and all(b.http_conditions for b in blocks))):
                continue
            backends = []
            for b in rule.backends:
                found = snap.route_service(route, b.service) if route is not None else None
                backends.append(self._backend(found if found is not None else Service(
                    b.service or service.name, "default", (), (), _default_policy()),
                    b.subset, "source"))
            return Decision(tuple(backends), tuple(b.weight for b in rule.backends), self.rng,
                            rule)
        return Decision((self._backend(service, None, "source"),), (100,), self.rng)

    def outbound(self, own_ports: Callable[[], set[int]] | None = None) -> Router:
        snap = self.snapshot
        ports = own_ports if own_ports is not None else set
        passthrough = None
        if snap.mesh.allow_any_outbound and own_ports is not None:
            passthrough = Passthrough(self.pools, self.rng, self._prefix(PASSTHROUGH), own_ports)
        # A mesh service wins over an ExternalService host naming it (see _names_mesh_service).
        external = {h: e for h, e in snap.external.items()
                    if not _names_mesh_service(h, snap.services)}
        self._counted = False
        self._router = "outbound"
        hosts = self._host_routes("source", skip=external)
        source = (snap.node.service, snap.node.version)
        namespaces = {name: s.namespace for name, s in snap.services.items()}
        tcp = self.tcp_targets()
        if not external and passthrough is None:
            return Router(hosts, source=source, namespaces=namespaces, tcp=tcp,
                          counts_rules=self._counted)
        tunnels: dict[tuple[str, int], Decision] = {}
        wildcards = []
        for host, ext in sorted(external.items()):
            if ext.wildcard:
                http2 = frozenset(n for n, protocol in ext.ports if protocol in HTTP2_PROTOCOLS)
                wildcards.append(Wildcard(ext, Passthrough(
                    self.pools, self.rng, self._prefix(host), ports, ext.policy, http2)))
                continue
            http, tunnel = self._external(ext, ports)
            if http:
                hosts[host] = ExternalHostRoute(http, passthrough)
            tunnels.update(((host, port), d) for port, d in tunnel.items())
        # Under ALLOW_ANY a bare name that means no service from here (several other
        # namespaces have it) is refused, not sent out of the mesh (see proxy.egress).
        unresolved = unresolved_names(namespaces) if passthrough is not None else frozenset()
        return Router(hosts, egress=Egress(tunnels, tuple(wildcards), passthrough, unresolved),
                      source=source, namespaces=namespaces, tcp=tcp, counts_rules=self._counted)

    def _prefix(self, destination: str) -> tuple[str, ...]:
        node = self.snapshot.node
        return ("source", node.service, node.version, destination, destination)

    def _external(self, ext: ExternalHost, own_ports: Callable[[], set[int]],
                  ) -> tuple[dict[int, HostRoute], dict[int, Decision]]:
        """An exact ExternalService host: the routes of its HTTP ports (HTTP/1.1 to the
        endpoints, HTTP/2 for HTTP2 and GRPC ones, which refuse HTTP/1.1 requests), the tunnel
        decision of each other port, each reaching the endpoints on its targetPort. Its
        endpoints are reached in plaintext (mTLS needs a sidecar there), or over TLS this sidecar
        originates when the host's DestinationPolicy says `tls: {mode: SIMPLE}`;
        one DestinationState (limits, ejections, budget) covers all its HTTP ports. Like a
        passthrough's, its connections may not reach ``own_ports`` on this host (an endpoint
        or a name that is this proxy's own listener: a request loop)."""
        snap, host, policy = self.snapshot, ext.host, ext.policy
        addresses = ext.endpoints or (host,)
        targets = ext.target_ports
        http2 = {port for port, protocol in ext.ports if protocol in HTTP2_PROTOCOLS}
        # TLS for the app's plain HTTP (ALPN http/1.1), and for its h2c (ALPN h2)
        origination = origination_for(host, policy.tls)
        origination_h2 = origination_for(host, policy.tls, http2=True) if http2 else None
        # The host's own pools (a destination of its own, as its DestinationState): another
        # ExternalService listing the same endpoint has its own connections and limits.
        destination = (host, None)
        http_pools = {port: tuple(self.pools.get(
            Address(a, targets.get(port, port)), None, "unknown", policy,
            destination=destination, external=True,
            loop_ports=own_ports, protocol="http2" if port in http2 else "http1",
            origination=origination_h2 if port in http2 else origination) for a in addresses)
            for port, protocol in ext.ports if protocol not in TUNNEL_PROTOCOLS}
        all_pools = tuple(p for pools in http_pools.values() for p in pools)
        state = self.destinations.configure(
            host, policy.connection_pool, policy.outlier_detection, all_pools,
            snap.mesh.retry_budget_percent, snap.mesh.retry_budget_min_per_second)
        prefix = self._prefix(host)
        routes: dict[int, HostRoute] = {}
        for port, pools in http_pools.items():
            backend = self._make_backend(host, None, pools, policy, state, prefix)
            route = snap.routes.get(host)
            if route is None:
                routes[port] = HostRoute(((None, Decision((backend,), (100,), self.rng)),))
            else:
                routes[port] = self._compile_route(host, route, "source", backend)
            if port in http2:
                _refuse_http1_to(routes[port], host)
        tunnels = {}
        for port, protocol in ext.ports:
            if protocol in TUNNEL_PROTOCOLS:
                pools = tuple(self.pools.get(Address(a, targets.get(port, port)), None,
                                             "unknown", policy, destination=destination,
                                             external=True, tunnel=True,
                                             loop_ports=own_ports)
                              for a in addresses)
                balancer = _balancer(policy.load_balancer, self.rng) if len(pools) > 1 else None
                tunnels[port] = Decision(
                    (Backend(host, None, pools, balancer, prefix),), (100,), self.rng)
        return routes, tunnels

    def gateway(self, scheme: str = "http", passthrough: SniRoutes | None = None) -> Router:
        """``scheme``: what the gateway's clients speak (`https` with a serving certificate),
        for match blocks with a `scheme` condition; ``passthrough``: the HTTPS gateway's TLS
        passthrough table, whose hosts its terminated connections answer 421
        (proxy.misdirected)."""
        node = self.snapshot.node
        self._counted = False
        self._router = "gateway"
        routes = self._host_routes("source", scheme=scheme)
        # Each rule resolved here to what it routes to: its destination's HostRoute (that
        # service's Route), or its inline Route rule's own (one decision, no matcher: the
        # gateway rule matched already), so a request costs the rule matchers alone.
        rules: list[tuple[Matcher | None, HostRoute | None]] = []
        inline: list[HostRoute] = []
        # An inline rule's place is in its own Gateway (an unnamed one's rate-limit buckets
        # are its place): another Gateway's rules before it do not move it.
        places: dict[str | None, int] = {}
        for r in self.snapshot.gateway_rules:
            place = places[r.gateway] = places.get(r.gateway, -1) + 1
            blocks = _own_blocks(r.matches, node, scheme)
            if blocks is None:
                continue
            if r.rule is None:
                target = routes.get(r.destination)
            else:
                target = self._gateway_rule(place, r, blocks)
                inline.append(target)
            rules.append((_for_hosts(r.hosts, self.compile_matches(blocks)), target))
        policy = self.gateway_policy
        if policy is not None and policy.needed:
            admission = self._admission(policy)
            # Admission runs first on every rule this router owns (its decisions are its own,
            # compiled for it), so routes without a policy keep their plain decisions.
            for host_route in (*routes.values(), *inline):
                for _, decision in host_route.rules:
                    decision.admit = _admit_first(admission, decision.admit)
        if passthrough is not None:
            from proxy.misdirected import MisdirectingRouter, misdirected

            return MisdirectingRouter(routes, gateway=tuple(rules),
                                      source=(node.service, node.version),
                                      counts_rules=self._counted,
                                      misdirected=misdirected(passthrough))
        return Router(routes, gateway=tuple(rules), source=(node.service, node.version),
                      counts_rules=self._counted)

    def _gateway_rule(self, index: int, r: Any, blocks: tuple[Any, ...]) -> HostRoute:
        """A gateway rule's inline Route rule, compiled as a Route's (a Route of the Gateway
        named ``r.gateway``, whose host is the first service the rule names; ``index``: its
        place among that Gateway's rules)."""
        host = r.services[0] if r.services else r.gateway or "gateway"
        route = RouteConfig(host, (r.rule,), None, r.gateway)
        _, decision = self._compile_rule(host, route, index, r.rule, blocks, "source", None)
        return HostRoute(((None, decision),))

    def inbound(self) -> Router:
        snap = self.snapshot
        if snap.app is None:
            return Router({})
        pool = self.pools.get(snap.app, None, snap.node.version, protocol=snap.app_protocol,
                              destination=(snap.node.service, None), inbound=True)
        prefix = ("destination", "unknown", "unknown",
                  snap.node.metrics_name or snap.node.service, snap.node.service)
        backend = Backend(snap.node.service, None, (pool,), None, prefix)
        decision = Decision((backend,), (100,), self.rng)
        if self.inbound_policy is not None and self.inbound_policy.needed:
            decision.admit = self._admission(self.inbound_policy)
        if snap.app_protocol == "tcp":
            # A TCP app (a database): HTTP would reach it as bytes it cannot parse.
            decision.admit = _refuse_http
        elif snap.app_protocol == "http2":
            # An h2c-only app (a gRPC server): an HTTP/1.1 request would reach it as bytes
            # it cannot parse; refused in words instead (after authorization, as any answer).
            decision.admit = _admit_first(decision.admit, refuse_http1) \
                if decision.admit is not None else refuse_http1
        return Router({}, inbound=decision)

    def _admission(self, policy: InboundPolicy) -> Callable[[Exchange], Any]:
        """The policy's admission step; with a CUSTOM policy, its external check first
        (decided here, once per config: other workloads' requests pay nothing for it)."""
        if policy.custom is None:
            # without a RequestAuthentication, the admission is its authorization alone
            return policy.admit if policy.authn is not None else policy.authorize
        from meshctl.api.extauthz import ExtAuthzGrpc
        from proxy.extauthz import HttpCheck, provider_backend

        name, spec, rules = policy.custom
        args = (policy, name, spec, rules, provider_backend(self, spec), policy.stats,
                policy.labels, policy.port)
        if not isinstance(spec, ExtAuthzGrpc):
            return HttpCheck(*args, proxy_protocol=policy.proxy_protocol)
        from proxy.grpcauthz import GrpcCheck

        check = GrpcCheck(*args, proxy_protocol=policy.proxy_protocol)
        check.pools = self.pools  # (its identity: the CheckRequest's destination.principal)
        return check

    def _host_routes(self, reporter: str, skip: Container[str] = (),
                     scheme: str = "http") -> dict[str, HostRoute]:
        """Every mesh service and every Route; routes of ``skip`` hosts are compiled apart."""
        snap = self.snapshot
        routes: dict[str, HostRoute] = {}
        for name, service in snap.services.items():
            route = snap.routes.get(name)
            if service.protocol == "tcp":
                # Reached per connection (`--tcp-upstream`, CONNECT), never by a request.
                refused = Decision((self._backend(service, None, reporter),), (100,), self.rng)
                refused.admit = _refuse_http
                routes[name] = HostRoute(((None, refused),))
            elif route is None:
                routes[name] = HostRoute(((None, Decision(
                    (self._backend(service, None, reporter),), (100,), self.rng)),))
        for host, route in snap.routes.items():
            tcp = host in snap.services and snap.services[host].protocol == "tcp"
            if host not in skip and not tcp:  # (a TCP service is no request's: no Route)
                routes[host] = self._compile_route(host, route, reporter, scheme=scheme)
        return routes

    def _compile_route(self, host: str, route: RouteConfig, reporter: str,
                       own: Backend | None = None, scheme: str = "http") -> HostRoute:
        """A Route's rules; ``own``: the backend of the route's host itself when that is no
        mesh service (an ExternalService port)."""
        compiled = []
        for index, rule in enumerate(route.rules):
            blocks = _own_blocks(rule.matches, self.snapshot.node, scheme)
            if blocks is None:
                continue  # no block accepts this proxy as a source: the rule is not ours
            compiled.append(self._compile_rule(host, route, index, rule, blocks, reporter, own))
        return HostRoute(tuple(compiled))

    def _compile_rule(self, host: str, route: RouteConfig, index: int, rule: Any,
                      blocks: tuple[Any, ...], reporter: str,
                      own: Backend | None) -> tuple[Matcher | None, Decision]:
        """One rule of ``route``: its matcher (of ``blocks``, those this proxy applies) and
        its decision."""
        snap = self.snapshot
        backends = []
        for b in rule.backends:
            if own is not None and (b.service or host) == host:
                # No endpoint of an outside host has labels: a subset selects none.
                backends.append(own if b.subset is None else Backend(
                    host, b.subset, (), None, own.metric_prefix, own.state))
                continue
            found = snap.route_service(route, b.service)
            service = found if found is not None else Service(
                b.service or host, "default", (), (), _default_policy())
            backends.append(self._backend(service, b.subset, reporter))
        decision = Decision(tuple(backends), tuple(b.weight for b in rule.backends),
                            self.rng, rule)
        mirror = None
        if rule.mirror is not None:
            msvc = snap.route_service(route, rule.mirror.service)
            if msvc is not None:
                mirror = self._backend(msvc, rule.mirror.subset, reporter)
        limited = None
        if rule.rate_limit is not None:
            # an unnamed rule is its place and its match blocks: by place alone, a limited
            # rule inserted before it took over its drained buckets
            limited = self._rate_limit(host, route, rule.name or (index, rule.matches),
                                       rule.rate_limit, own)
        attach(decision, rule, backends[0].state if backends else None, self.rng, mirror,
               blocks, limited)
        if rule.name is not None and self.rules is not None:
            decision.counter = self._counter(host, route, rule.name, reporter, own)
        return self.compile_matches(blocks), decision

    def _rate_limit(self, host: str, route: RouteConfig, rule: Hashable, limit: Any,
                    own: Backend | None) -> Callable[[Any], RateLimitPolicy]:
        """What puts a rule's rate limit before its other admission steps. Its buckets are
        the rule's in this router (a gateway's, an outbound listener's): found again by the
        next snapshot while the rule's identity and limit stay (RuleLimits)."""
        snap = self.snapshot
        route_id = f"{route.namespace or snap.node.namespace}/{route.name or host}"
        if self.limits is None:
            self.limits = RuleLimits(self.destinations.stats)
        limiter = self.limits.limiter((self._router, route_id, rule, host), limit)
        service = snap.services.get(host)
        label = (own.metric_prefix[3] if own is not None
                 else (service.metrics_name or service.name) if service is not None else host)
        stats = self.limits.stats
        return lambda then: RateLimitPolicy(limiter, stats, label, then)

    def _counter(self, host: str, route: RouteConfig, rule: str, reporter: str,
                 own: Backend | None) -> RuleCounter:
        """A named rule's counter: `route` = the Route's namespace/name (its host when the
        snapshot names no Route), as Linkerd's route_namespace and route_name."""
        assert self.rules is not None
        snap = self.snapshot
        self._counted = True
        label = f"{route.namespace or snap.node.namespace}/{route.name or host}"
        service = snap.services.get(host)
        unrouted = (own.metric_prefix[3] if own is not None
                    else (service.metrics_name or service.name) if service is not None else host)
        return self.rules.counter(reporter, label, rule, unrouted)

    def _backend(self, service: Service, subset: str | None, reporter: str) -> Backend:
        key = (service.name, subset, reporter)
        backend = self._backends.get(key)
        if backend is None:
            node = self.snapshot.node
            mesh = self.snapshot.mesh
            policy = service.subset_policy(subset)
            own: str | None  # the subset, when it is a destination of its own
            if policy is None:  # the service's destination, shared by its other subsets
                policy, own, members = service.policy, None, service.endpoints
            else:  # a subset with a policy of its own: its own pools, limits and ejections,
                # as Envoy's subset cluster
                assert subset is not None
                own, members = subset, service.subset(subset)
            # The destination's own pools (Envoy: a cluster's), also for an address another
            # service lists: its breaker, connection count and versions are its own.
            mtls = self.snapshot.service_mtls
            all_pools = tuple(self.pools.get(e.address, e.identity, e.version, policy,
                                             destination=(service.name, own),
                                             mtls=mtls(service, e))
                              for e in members)
            state = self.destinations.configure(
                service.name, policy.connection_pool, policy.outlier_detection, all_pools,
                mesh.retry_budget_percent, mesh.retry_budget_min_per_second, own,
                label=service.metrics_name or None)
            chosen = {e.address: e for e in service.subset(subset)}
            pools = tuple(p for p in all_pools if p.address in chosen)
            # destination_workload: the service's own name, also when this proxy keys it
            # `name.namespace` (another namespace's, see meshctl.controlplane.names)
            prefix = (reporter, node.service, node.version,
                      service.metrics_name or service.name, service.name.partition(".")[0])
            backend = self._make_backend(service.name, subset, pools, policy, state, prefix,
                                         tuple(chosen[p.address] for p in pools))
            if own is not None and service.protocol == "tcp":
                backend.tcp_idle_timeout = tcp_idle_timeout(policy)
            self._backends[key] = backend
        return backend

    def _make_backend(self, name: str, subset: str | None, pools: tuple[EndpointPool, ...],
                      policy: Any, state: DestinationState | None,
                      prefix: tuple[str, ...],
                      endpoints: tuple[Endpoint, ...] | None = None) -> Backend:
        """``endpoints``: the mesh endpoints of ``pools``, in order (None: an outside host's),
        for locality load balancing when this proxy has a locality."""
        outlier = state.outlier if state is not None else None
        available = None if outlier is None else (lambda p: not outlier.is_ejected(p))
        panic = self._panic_guard(name, subset, pools, policy, outlier)
        if panic is not None:  # consulted only for an ejected endpoint
            available = panic.available
        if policy.load_balancer == "CONSISTENT_HASH" and policy.consistent_hash is not None:
            def ring(group: tuple[EndpointPool, ...]) -> Any:
                return RingHashBalancer(group, lambda p: str(p.address), self.rng, available)

            balancer: Any = ring(pools)
            spec = policy.consistent_hash
            affinity = CookieAffinity(spec, pools, lambda p: str(p.address), available) \
                if spec.kind == "httpCookie" else None
            hash_key = _hash_key(spec) if affinity is None else affinity.key
        else:
            affinity = None
            balancer, hash_key = _balancer(policy.load_balancer, self.rng, available), None
        slow = None
        if policy.warmup is not None and hash_key is None and endpoints is not None \
                and state is not None:  # (a mesh service's: its endpoints arrive and leave)
            slow = _slow_start(balancer, policy.warmup, state, pools, self.rng,
                               self.destinations.clock, available)
            balancer = slow or balancer
        node = self.snapshot.node
        if node.locality is not None and endpoints is not None:  # else: no cost at all
            # a ring per group; the other balancers take their endpoints per pick: one serves
            # every group
            shared = None if hash_key is not None else balancer
            by_locality = locality_balancer(
                policy, node, endpoints, pools,
                ring if shared is None else (lambda group: shared), self.rng, outlier, shared,
                panic, self.snapshot.mesh.locality_lb)
            if by_locality is not None:
                balancer = by_locality
        if affinity is not None:  # the endpoint a cookie names first, while it may serve
            balancer = StickyBalancer(balancer, affinity.by_token, available)
        backend = Backend(name, subset, pools, balancer, prefix, state, hash_key)
        backend.panic = panic
        backend.warmup = policy.warmup if endpoints is not None else None  # (mesh only)
        if slow is not None and balancer is slow:  # (under a locality balancer it stays)
            def warm() -> None:  # the last window is over: the plain balancer from now on
                backend.balancer = slow.inner

            slow.done = warm
        if affinity is not None:
            backend.single = None  # even one endpoint: its answers may have a cookie to set
        return backend

    def _panic_guard(self, name: str, subset: str | None, pools: tuple[EndpointPool, ...],
                     policy: Any, outlier: Any) -> PanicGuard | None:
        """The backend's panic threshold, when outlier detection ejects and it is set."""
        detection = policy.outlier_detection
        if outlier is None or detection is None or detection.min_health_percent <= 0:
            return None
        registry = self.destinations
        return PanicGuard(pools, outlier, detection.min_health_percent,
                          lambda now: registry.panicked(name, subset, now))


def _names_mesh_service(host: str, services: Mapping[str, Service]) -> bool:
    """Whether an ExternalService host is a mesh service's own name, which the router would
    otherwise look up before the service's (exact hosts first) and send in plaintext to the
    ExternalService's endpoints: `reviews`, `reviews.<its namespace>` and longer forms, or any
    `name.namespace.svc...` (a mesh name even while that service has no endpoint), or a
    wildcard over such names (`*.svc.cluster.local`, `*.default.svc.cluster.local`)."""
    if host in services or is_mesh_name(host):
        return True
    labels = host.split(".")
    if len(labels) > 1 and f"{labels[0]}.{labels[1]}" in services:  # another namespace's
        return True
    service = services.get(labels[0])
    return service is not None and len(labels) > 1 and labels[1] == service.namespace


def _refuse_http(ex: Exchange) -> Any:
    """An HTTP request for a TCP service (or to a `tcp` app): `protocol_mismatch`."""
    return ("protocol_mismatch", None, ())


def refuse_http1(ex: Exchange) -> Any:
    """An HTTP/1.1 request to an app declared `http2`, or to an outside host's HTTP2/GRPC
    port: `protocol_mismatch` (HTTP/1.1 is not upgraded to HTTP/2 upstream)."""
    return None if ex.http2 else ("protocol_mismatch", None, ())


def _refuse_http1_to(route: HostRoute, host: str) -> None:
    """An HTTP2/GRPC port of an outside host: its rules sending requests to the host refuse
    HTTP/1.1 ones (after their own admission step: a redirect or CORS answer still comes;
    before a rate limit: a request refused spends no token)."""
    for _, decision in route.rules:
        if any(b.service == host for b in decision.backends):
            admit = decision.admit
            cors = admit if isinstance(admit, CorsPolicy) else None
            limit = cors.then if cors is not None else admit
            if isinstance(limit, RateLimitPolicy):
                checked = _admit_first(refuse_http1, limit)
                if cors is not None:
                    cors.then = checked
                else:
                    decision.admit = checked
            else:
                decision.admit = refuse_http1 if admit is None \
                    else _admit_first(admit, refuse_http1)


def _admit_first(admit: Callable[[Exchange], Any],
                 then: Callable[[Exchange], Any] | None) -> Callable[[Exchange], Any]:
    """``admit``, then (if it let the request through) the rule's own step, if any."""
    if then is None:
        return admit

    def both(ex: Exchange) -> Any:
        refusal = admit(ex)
        return refusal if refusal is not None else then(ex)

    return both


def _own_blocks(matches: tuple[Any, ...], node: Any,
                scheme: str = "http") -> tuple[Any, ...] | None:
    """The match blocks whose sourceLabels / sourceNamespace / scheme accept this proxy's
    listener (settled once per config, not per request); None when blocks were declared and
    none does."""
    blocks = tuple(m for m in matches if m.applies_to(node.namespace, node.labels, scheme))
    return None if matches and not blocks else blocks


def _for_hosts(hosts: tuple[str, ...], matcher: Matcher | None) -> Matcher | None:
    """``matcher``, restricted to requests whose authority (port and final dot dropped) is
    one of ``hosts``: exact names, or `*.suffix` for any name ending in `.suffix` (`*`, or no
    hosts at all: any)."""
    if not hosts or "*" in hosts:
        return matcher
    names = frozenset(h for h in hosts if not h.startswith("*."))
    suffixes = tuple(h[1:] for h in hosts if h.startswith("*."))

    def match(ex: Exchange) -> bool:
        host = service_from_authority(ex.authority).rstrip(".")
        if host not in names and not (suffixes and host.endswith(suffixes)):
            return False
        return matcher is None or matcher(ex)

    return match


def _hash_key(spec: Any) -> Callable[[Exchange], str | None]:
    """What a CONSISTENT_HASH destination keys requests by (meshctl.api.policy.ConsistentHash)."""
    name = spec.name
    if spec.kind == "header":  # (every value of a header sent twice: matching.hash_key)
        return lambda ex: hash_key(ex.headers, name)
    if spec.kind == "queryParameter":
        def parameter(ex: Exchange) -> str | None:
            for pair in ex.query.split("&"):
                key, _, value = pair.partition("=")
                if key == name:
                    return value
            return None

        return parameter
    def source_ip(ex: Exchange) -> str:  # the gateway's: its trusted client's (--trusted-proxies)
        hops = ex.downstream.listener.trusted_proxies
        return (trusted_client(ex, hops) if hops else ex.downstream.client_ip).decode("latin-1")

    return source_ip


def _default_policy() -> Any:
    from meshctl.api.policy import TrafficPolicy

    return TrafficPolicy()


def tcp_idle_timeout(policy: Any) -> float:
    """A TCP service's idle timeout: its connectionPool's, else the default (1 h)."""
    from meshctl.api.policy import ConnectionPool

    pool = policy.connection_pool if policy is not None else None
    return float((pool or ConnectionPool()).tcp_idle_timeout)


def _slow_start(balancer: Any, warmup: Any, state: DestinationState,
                pools: tuple[EndpointPool, ...], rng: random.Random,
                clock: Callable[[], float],
                available: Callable[[Any], bool] | None) -> SlowStartBalancer | None:
    """``balancer`` under slow start while some of ``pools`` is warming (arrived less than
    ``warmup.duration`` ago, DestinationState.arrivals); None when none is: the destination
    then pays nothing per request."""
    arrivals = state.arrivals or {}
    now = clock()
    warming = {p: arrivals[p.address] for p in pools
               if now - arrivals.get(p.address, NEVER) < warmup.duration}
    if not warming or len(pools) < 2:
        return None
    return SlowStartBalancer(balancer, warming, warmup.duration, clock, rng,
                             minimum_percent=warmup.minimum_percent,
                             aggression=warmup.aggression, is_available=available)


def _balancer(kind: str, rng: random.Random, available: Any = None) -> Any:
    if kind == "ROUND_ROBIN":
        return RoundRobinBalancer(rng, available)
    if kind == "RANDOM":
        return RandomBalancer(rng, available)
    if kind == "PEAK_EWMA":
        return PeakEwmaBalancer(rng, time.monotonic, is_available=available)
    return LeastRequestBalancer(rng, available)
