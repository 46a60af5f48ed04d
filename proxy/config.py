"""The proxy's configuration snapshot: immutable, versioned, parsed once from YAML or a push.

The same `Snapshot.from_dict` reads a static `--config` file and a control-plane push, so both
paths give the same precise errors (which become the NACK text).
"""

from __future__ import annotations

import os
import re
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from typing import Any

from meshctl.api.errors import ValidationError
from meshctl.api.locality import (
    Locality,
    LocalityLbSetting,
    check_locality_lb,
    parse_locality,
    parse_locality_lb_setting,
)
from meshctl.api.policy import RateLimit, TrafficPolicy, parse_policy, parse_subset_policy


class ConfigError(ValueError):
    """A snapshot that cannot be applied; the message names the field path."""


class ListenError(ConfigError):
    """A listener's address cannot be bound (in use, not this host's, not permitted)."""

    def __init__(self, what: str, address: object, exc: OSError) -> None:
        # uvloop's message repeats the address; the errno's text says it once
        why = os.strerror(exc.errno) if exc.errno else str(exc)
        super().__init__(f"cannot listen on {address} ({what}): {why}")


# What the local app speaks (`appProtocol`, `--app-protocol`): `auto` keeps the client's
# protocol (an app found to answer HTTP/2 in HTTP/1.1 gets HTTP/1.1 from then on), `http1`
# downgrades HTTP/2 requests, `http2` (h2c only, a gRPC server) refuses HTTP/1.1 ones, `tcp`
# (opaque bytes: a database, a cache) takes `ami-tcp` connections only (proxy.tcpinbound).
APP_PROTOCOLS = ("auto", "http1", "http2", "tcp")
SERVICE_PROTOCOLS = ("http", "tcp")  # a snapshot service's `protocol`
MTLS_MODES = ("DISABLE", "PERMISSIVE", "STRICT")  # mesh.mtls, a service's and inbound.mtls


@contextmanager
def _config_errors() -> Iterator[None]:
    """The shared parsers of meshctl.api raise ValidationError: reported as ConfigError."""
    try:
        yield
    except (ValueError, ValidationError) as exc:
        raise ConfigError(str(exc)) from None


@dataclass(frozen=True, slots=True)
class Address:
    host: str
    port: int

    @classmethod
    def parse(cls, text: object, path: str) -> Address:
        if not isinstance(text, str) or ":" not in text:
            raise ConfigError(f"{path}: expected HOST:PORT, got {text!r}")
        host, _, port = text.rpartition(":")
        host = host.strip("[]")
        try:
            number = int(port)
        except ValueError:
            raise ConfigError(f"{path}: port {port!r} is not a number") from None
        if not 0 <= number <= 65535:
            raise ConfigError(f"{path}: port {number} out of range")
        return cls(host or "0.0.0.0", number)

    def __str__(self) -> str:
        return f"{self.host}:{self.port}"


@dataclass(frozen=True, slots=True)
class Endpoint:
    address: Address
    labels: Mapping[str, str]
    identity: str | None = None  # expected SPIFFE id of the peer when mTLS is on
    locality: Locality | None = None  # where it runs (region/zone/subzone), if known
    # Its sidecar's mode when a PeerAuthentication selecting it by labels or port makes it
    # differ from its service's; None: the service's
    mtls: str | None = None

    @property
    def version(self) -> str:
        return self.labels.get("version", "unknown")


@dataclass(frozen=True, slots=True)
class Subset:
    name: str
    labels: Mapping[str, str]
    # A subset that sets policy fields of its own: the service's policy with them (merged once,
    # here) for traffic routed to it, and a destination of its own (proxy.routing). None: the
    # service's policy and destination.
    policy: TrafficPolicy | None = None

    def selects(self, endpoint: Endpoint) -> bool:
        return all(endpoint.labels.get(k) == v for k, v in self.labels.items())


@dataclass(frozen=True, slots=True)
class Service:
    name: str
    namespace: str
    endpoints: tuple[Endpoint, ...]
    subsets: tuple[Subset, ...]
    policy: TrafficPolicy  # the DestinationPolicy's traffic policy (meshctl.api.policy)
    protocol: str = "http"  # `tcp`: its apps are TCP services (reached per connection)
    # What its sidecars accept when it differs from mesh.mtls (a PeerAuthentication); None:
    # the mesh's. Callers send plaintext to DISABLE, mTLS otherwise (auto mTLS).
    mtls: str | None = None
    # Its destination_service label when that is not its key: `name.namespace` for a name
    # several namespaces have (the same on every sidecar, see meshctl.controlplane.names)
    metrics_name: str = ""

    def subset(self, name: str | None) -> tuple[Endpoint, ...]:
        if name is None:
            return self.endpoints
        for s in self.subsets:
            if s.name == name:
                return tuple(e for e in self.endpoints if s.selects(e))
        # A subset not declared by a policy selects by the conventional `version` label.
        return tuple(e for e in self.endpoints if e.labels.get("version") == name)

    def subset_policy(self, name: str | None) -> TrafficPolicy | None:
        """The merged policy of subset ``name`` if it sets policy fields of its own."""
        for s in self.subsets if name is not None else ():
            if s.name == name:
                return s.policy
        return None


@dataclass(frozen=True, slots=True)
class ExternalHost:
    """A host outside the mesh declared by an ExternalService (snapshot ``external``)."""

    host: str  # an exact DNS name, or `*.suffix`
    namespace: str
    resource: str  # the ExternalService's name, for logs
    ports: tuple[tuple[int, str], ...]  # (number, protocol: HTTP, HTTPS, TLS or TCP)
    endpoints: tuple[str, ...]  # fixed addresses; empty: the host name is resolved (DNS)
    policy: TrafficPolicy  # the host's DestinationPolicy, if any
    # A port reached on another port of the endpoints (targetPort), e.g. 80 -> 443 when the
    # sidecar originates TLS for an app speaking plain HTTP (policy.tls)
    target_ports: Mapping[int, int] = field(default_factory=dict)

    @property
    def wildcard(self) -> bool:
        return self.host.startswith("*.")


@dataclass(frozen=True, slots=True)
class RouteConfig:
    host: str
    rules: tuple[Any, ...]  # meshctl.api.rules.Rule
    # A Route of another namespace than this proxy's: the services its backends name are
    # that namespace's. None: this proxy's own namespace.
    namespace: str | None = None
    # The Route's metadata.name, sent when one of its rules is named (the `route` label of
    # the per-rule metrics, proxy.routemetrics); None: the host stands for it.
    name: str | None = None


@dataclass(frozen=True, slots=True)
class MeshSettings:
    mtls: str = "DISABLE"
    access_log: bool = False
    retry_budget_percent: float = 20.0
    retry_budget_min_per_second: float = 10.0
    tracing_sampling: float = 0.0
    tracing_endpoint: str | None = None  # OTLP/gRPC HOST:PORT (MeshConfig tracing.otlpEndpoint)
    trust_domain: str = "cluster.local"
    allow_any_outbound: bool = False  # outboundTrafficPolicy ALLOW_ANY: unknown hosts pass through
    # Peers whose x-forwarded-client-cert the inbound listener keeps, appending its own
    # element (gateways, and MeshConfig's trustedXfccIdentities); from any other it is removed
    trusted_xfcc: tuple[str, ...] = ()
    # Those of them that are trusted gateways' ids (``gatewayIdentities``): kept only from a
    # certificate with the gateway marker, as any proxy of a gateway's service has its id
    gateway_xfcc: tuple[str, ...] = ()
    # MeshConfig localityLbSetting: for every destination whose policy sets none
    locality_lb: LocalityLbSetting | None = None


@dataclass(frozen=True, slots=True)
class TelemetrySettings:
    """What the Telemetry resources make differ from ``mesh`` for this proxy (None: the
    mesh's); ``access_filter`` is compiled once per push (meshctl.api.accessfilter)."""

    access_log: bool | None = None
    filter_expression: str | None = None
    access_filter: Callable[[Any], bool] | None = field(default=None, compare=False)
    tracing_sampling: float | None = None
    disable_span_reporting: bool = False


@dataclass(frozen=True, slots=True)
class Node:
    service: str = "unknown"
    namespace: str = "default"
    labels: Mapping[str, str] = field(default_factory=dict)
    metrics_name: str = ""  # its own destination_service label, when not `service`
    # Where this proxy runs: with it, localityLbSetting orders endpoints (proxy.localitylb)
    locality: Locality | None = None

    @property
    def version(self) -> str:
        return self.labels.get("version", "unknown")


@dataclass(frozen=True, slots=True)
class Snapshot:
    version: str
    node: Node
    listeners: Mapping[str, Address]
    app: Address | None
    mesh: MeshSettings
    services: Mapping[str, Service]
    routes: Mapping[str, RouteConfig]
    gateway_rules: tuple[Any, ...]  # meshctl.api.kinds.GatewayRule
    authorization: tuple[Any, ...]  # meshctl.api.authz.AuthorizationPolicySpec
    inbound_rate_limit: RateLimit | None
    external: Mapping[str, ExternalHost] = field(default_factory=dict)
    # meshctl.api.authn.RequestAuthenticationSpec, keys inline (the control plane fetched them)
    authentication: tuple[Any, ...] = ()
    app_protocol: str = "auto"  # one of APP_PROTOCOLS
    own_mtls: str | None = None  # inbound.mtls: this service's mode if not the mesh's
    # meshctl.api.kinds.GatewayPassthrough: TLS the gateway relays by SNI, unterminated
    gateway_passthrough: tuple[Any, ...] = ()
    telemetry: TelemetrySettings | None = None  # None: no Telemetry applies, the mesh's
    # meshctl.api.extauthz.ExtensionProvider: the ones this proxy's CUSTOM policies name
    ext_authz: tuple[Any, ...] = ()

    @property
    def access_log(self) -> bool:
        """Whether this proxy writes access log lines: its Telemetry's say, else the mesh's."""
        own = self.telemetry.access_log if self.telemetry is not None else None
        return self.mesh.access_log if own is None else own

    @property
    def tracing_sampling(self) -> float:
        """The probability a request this proxy starts a trace for is sampled."""
        own = self.telemetry.tracing_sampling if self.telemetry is not None else None
        return self.mesh.tracing_sampling if own is None else own

    @classmethod
    def from_dict(cls, data: object) -> Snapshot:
        return _parse_snapshot(data)

    @property
    def inbound_mtls(self) -> str:
        """What the inbound listener accepts: this service's mode (PeerAuthentication), else
        the mesh's."""
        return self.own_mtls or self.mesh.mtls

    def route_service(self, route: RouteConfig, name: str | None) -> Service | None:
        """The service a backend or mirror of ``route`` names (None: the route's host): in a
        Route of another namespace, that namespace's (keyed `name.namespace` unless its name
        is unambiguous here, see meshctl.controlplane.names)."""
        if name is None:
            return self.services.get(route.host)
        if route.namespace is not None:
            found = self.services.get(f"{name}.{route.namespace}")
            if found is not None:
                return found
        return self.services.get(name)

    def service_mtls(self, service: Service, endpoint: Endpoint | None = None) -> bool:
        """Whether connections to ``service``'s endpoints (to ``endpoint``, when given) use
        mTLS: unless its mode is DISABLE."""
        own = endpoint.mtls if endpoint is not None else None
        return (own or service.mtls or self.mesh.mtls) != "DISABLE"


# The keys the snapshot parser reads where it reads a mapping itself (rules, policies and
# authorization have the resource parsers, which refuse unknown keys on their own). A hand-
# written static file is checked against them; a control plane's push is not, so that a newer
# control plane's snapshot still loads.
_KNOWN: dict[str, frozenset[str]] = {
    "": frozenset({"version", "node", "listeners", "mesh", "services", "routes", "gateway",
                   "app", "appProtocol", "inbound", "external", "telemetry"}),
    "node": frozenset({"service", "namespace", "labels", "metricsName", "locality"}),
    "mesh": frozenset({"mtls", "accessLog", "retryBudget", "tracing", "trustDomain",
                       "outboundTrafficPolicy", "trustedXfccIdentities", "gatewayIdentities",
                       "localityLbSetting"}),
    "mesh.retryBudget": frozenset({"percent", "minRetriesPerSecond"}),
    "mesh.tracing": frozenset({"sampling", "otlpEndpoint"}),
    "mesh.outboundTrafficPolicy": frozenset({"mode"}),
    "service": frozenset({"namespace", "identity", "endpoints", "subsets", "policy",
                          "protocol", "mtls", "metricsName"}),
    "endpoint": frozenset({"address", "labels", "identity", "locality", "mtls"}),
    "subset": frozenset({"name", "labels", "policy"}),
    "route": frozenset({"host", "rules", "namespace", "name"}),
    "external": frozenset({"namespace", "name", "ports", "endpoints", "policy"}),
    "external port": frozenset({"number", "protocol", "targetPort"}),
    "gateway": frozenset({"rules", "passthrough"}),
    "inbound": frozenset({"authorization", "authentication", "rateLimit", "mtls",
                          "extAuthz"}),
    "telemetry": frozenset({"accessLog", "tracing"}),
    "telemetry.accessLog": frozenset({"disabled", "filter"}),
    "telemetry.tracing": frozenset({"sampling", "disableSpanReporting"}),
}


def check_known_keys(data: object) -> None:
    """Refuse keys a hand-written snapshot misspelt (`endpoint:`, `acessLog:`), which would
    otherwise be ignored without a word; names the path and the closest known key."""
    def check(obj: object, kind: str, path: str) -> None:
        if not isinstance(obj, Mapping):
            return  # the parser reports the wrong type
        for key in obj:
            if str(key) not in _KNOWN[kind]:
                from difflib import get_close_matches

                where = f"{path}.{key}" if path else str(key)
                close = get_close_matches(str(key), sorted(_KNOWN[kind]), n=1)
                hint = f"did you mean '{close[0]}'?" if close else \
                    f"expected one of {', '.join(sorted(_KNOWN[kind]))}"
                raise ConfigError(f"{where}: unknown field, {hint}")  # as the resource parsers

    check(data, "", "")
    if not isinstance(data, Mapping):
        return
    for kind in ("node", "mesh", "gateway", "inbound", "telemetry"):
        check(data.get(kind), kind, kind)
    telemetry = data.get("telemetry")
    if isinstance(telemetry, Mapping):
        for sub in ("accessLog", "tracing"):
            check(telemetry.get(sub), f"telemetry.{sub}", f"telemetry.{sub}")
    mesh = data.get("mesh")
    if isinstance(mesh, Mapping):
        for sub in ("retryBudget", "tracing", "outboundTrafficPolicy"):
            check(mesh.get(sub), f"mesh.{sub}", f"mesh.{sub}")
    services = data.get("services")
    if isinstance(services, Mapping):
        for name, svc in services.items():
            check(svc, "service", f"services.{name}")
            if not isinstance(svc, Mapping):
                continue
            for field, kind in (("endpoints", "endpoint"), ("subsets", "subset")):
                items = svc.get(field)
                for i, item in enumerate(items if isinstance(items, list) else ()):
                    check(item, kind, f"services.{name}.{field}[{i}]")
    routes = data.get("routes")
    for i, route in enumerate(routes if isinstance(routes, list) else ()):
        check(route, "route", f"routes[{i}]")
    external = data.get("external")
    if isinstance(external, Mapping):
        for host, ext in external.items():
            check(ext, "external", f"external.{host}")
            ports = ext.get("ports") if isinstance(ext, Mapping) else None
            for i, port in enumerate(ports if isinstance(ports, list) else ()):
                check(port, "external port", f"external.{host}.ports[{i}]")


def _mapping(data: object, path: str) -> Mapping[str, Any]:
    if data is None:
        return {}
    if not isinstance(data, Mapping):
        raise ConfigError(f"{path}: expected a mapping, got {type(data).__name__}")
    return data


def _list(data: object, path: str) -> list[Any]:
    if data is None:
        return []
    if not isinstance(data, list):
        raise ConfigError(f"{path}: expected a list, got {type(data).__name__}")
    return data


def _labels(data: object, path: str) -> dict[str, str]:
    return {str(k): str(v) for k, v in _mapping(data, path).items()}


def _policy(data: object, path: str) -> TrafficPolicy:
    """A service's traffic policy: the same parser (and errors) as DestinationPolicy.spec."""
    if data is None:
        return TrafficPolicy()
    with _config_errors():
        return parse_policy(data, path)


def _parse_service(name: str, data: object, path: str) -> Service:
    raw = _mapping(data, path)
    service_identity = raw.get("identity")  # the service's SPIFFE id; an endpoint may override
    endpoints = []
    for i, e in enumerate(_list(raw.get("endpoints"), f"{path}.endpoints")):
        ep = f"{path}.endpoints[{i}]"
        em = _mapping(e, ep)
        endpoints.append(Endpoint(
            Address.parse(em.get("address"), f"{ep}.address"),
            _labels(em.get("labels"), f"{ep}.labels"),
            em.get("identity", service_identity),
            _locality(em.get("locality"), f"{ep}.locality"),
            _mtls_mode(em["mtls"], f"{ep}.mtls") if "mtls" in em else None,
        ))
    policy = _policy(raw.get("policy"), f"{path}.policy")
    subsets = []
    for i, s in enumerate(_list(raw.get("subsets"), f"{path}.subsets")):
        sp = f"{path}.subsets[{i}]"
        sm = _mapping(s, sp)
        if not sm.get("name"):
            raise ConfigError(f"{sp}.name: required")
        own = None
        if sm.get("policy") is not None:
            with _config_errors():
                own = parse_subset_policy(sm["policy"], f"{sp}.policy")
        subsets.append(Subset(str(sm["name"]), _labels(sm.get("labels"), sp),
                              own.over(policy) if own is not None else None))
    if policy.locality_lb is not None:  # refused as in a DestinationPolicy
        outliers = policy.outlier_detection is not None or any(
            s.policy is not None and s.policy.outlier_detection is not None for s in subsets)
        with _config_errors():
            check_locality_lb(policy.locality_lb, outliers, f"{path}.policy.localityLbSetting")
    protocol = raw.get("protocol", "http")
    if protocol not in SERVICE_PROTOCOLS:
        raise ConfigError(f"{path}.protocol: expected http or tcp, got {protocol!r}")
    return Service(
        name=name,
        namespace=str(raw.get("namespace", "default")),
        endpoints=tuple(endpoints),
        subsets=tuple(subsets),
        policy=policy,
        protocol=protocol,
        mtls=_mtls_mode(raw.get("mtls"), f"{path}.mtls") if "mtls" in raw else None,
        metrics_name=str(raw.get("metricsName", "")),
    )


def _locality(value: object, path: str) -> Locality | None:
    if value is None or value == "":
        return None
    with _config_errors():
        return parse_locality(value, path)


def _mtls_mode(value: object, path: str) -> str:
    if value not in MTLS_MODES:
        raise ConfigError(f"{path}: expected DISABLE, PERMISSIVE or STRICT, got {value!r}")
    return str(value)


def _parse_snapshot(data: object) -> Snapshot:
    from meshctl.api.rules import parse_rules

    raw = _mapping(data, "snapshot")
    node_raw = _mapping(raw.get("node"), "node")
    node = Node(
        service=str(node_raw.get("service", "unknown")),
        namespace=str(node_raw.get("namespace", "default")),
        labels=_labels(node_raw.get("labels"), "node.labels"),
        metrics_name=str(node_raw.get("metricsName", "")),
        locality=_locality(node_raw.get("locality"), "node.locality"),
    )
    listeners = {
        str(k): Address.parse(v, f"listeners.{k}")
        for k, v in _mapping(raw.get("listeners"), "listeners").items()
    }
    for k in listeners:
        if k not in ("outbound", "inbound", "admin", "gateway"):
            raise ConfigError(
                f"listeners.{k}: unknown listener (outbound, inbound, admin, gateway)")
    mesh_raw = _mapping(raw.get("mesh"), "mesh")
    budget = _mapping(mesh_raw.get("retryBudget"), "mesh.retryBudget")
    tracing = _mapping(mesh_raw.get("tracing"), "mesh.tracing")
    mtls = _mtls_mode(str(mesh_raw.get("mtls", "DISABLE")), "mesh.mtls")
    outbound = _mapping(mesh_raw.get("outboundTrafficPolicy"), "mesh.outboundTrafficPolicy")
    outbound_mode = str(outbound.get("mode", "REGISTRY_ONLY"))
    if outbound_mode not in ("REGISTRY_ONLY", "ALLOW_ANY"):
        raise ConfigError("mesh.outboundTrafficPolicy.mode: expected REGISTRY_ONLY or "
                          f"ALLOW_ANY, got {outbound_mode!r}")
    trust_domain = str(mesh_raw.get("trustDomain", "cluster.local"))
    trusted_xfcc: tuple[str, ...] = ()
    gateway_xfcc: tuple[str, ...] = ()
    for key in ("trustedXfccIdentities", "gatewayIdentities"):
        if mesh_raw.get(key) is not None:
            from meshctl.api.xfcc import trusted_xfcc_identities

            with _config_errors():
                ids = trusted_xfcc_identities(trust_domain)(mesh_raw[key], f"mesh.{key}")
            if key == "gatewayIdentities":
                gateway_xfcc = ids
            else:
                trusted_xfcc = ids
    locality_lb = None
    if mesh_raw.get("localityLbSetting") is not None:
        with _config_errors():
            locality_lb = parse_locality_lb_setting(mesh_raw["localityLbSetting"],
                                                    "mesh.localityLbSetting")
    mesh = MeshSettings(
        mtls=mtls,
        access_log=bool(mesh_raw.get("accessLog", False)),
        retry_budget_percent=float(budget.get("percent", 20.0)),
        retry_budget_min_per_second=float(budget.get("minRetriesPerSecond", 10.0)),
        tracing_sampling=float(tracing.get("sampling", 0.0)),
        tracing_endpoint=str(tracing["otlpEndpoint"]) if tracing.get("otlpEndpoint") else None,
        trust_domain=trust_domain,
        allow_any_outbound=outbound_mode == "ALLOW_ANY",
        trusted_xfcc=trusted_xfcc,
        gateway_xfcc=gateway_xfcc,
        locality_lb=locality_lb,
    )
    services = {
        str(name): _parse_service(str(name), svc, f"services.{name}")
        for name, svc in _mapping(raw.get("services"), "services").items()
    }
    routes: dict[str, RouteConfig] = {}
    for i, r in enumerate(_list(raw.get("routes"), "routes")):
        rp = f"routes[{i}]"
        rm = _mapping(r, rp)
        host = rm.get("host")
        if not isinstance(host, str) or not host:
            raise ConfigError(f"{rp}.host: required")
        with _config_errors():
            rules = parse_rules(rm.get("rules"), f"{rp}.rules")
        namespace = rm.get("namespace")
        name = rm.get("name")
        routes[host] = RouteConfig(host, rules, str(namespace) if namespace else None,
                                   str(name) if name else None)
    gw_raw = _mapping(raw.get("gateway"), "gateway")
    gateway_rules: tuple[Any, ...] = ()
    if gw_raw.get("rules"):  # none, or [] from a control plane with no Gateway in the namespace
        from meshctl.api.kinds import parse_snapshot_gateway_rules  # the Gateway's own parser

        with _config_errors():
            gateway_rules = parse_snapshot_gateway_rules(gw_raw["rules"], "gateway.rules")
    gateway_passthrough: tuple[Any, ...] = ()
    if gw_raw.get("passthrough"):
        from meshctl.api.kinds import parse_gateway_passthrough

        with _config_errors():
            gateway_passthrough = parse_gateway_passthrough(gw_raw["passthrough"],
                                                            "gateway.passthrough")
    app = Address.parse(raw["app"], "app") if raw.get("app") else None
    app_protocol = raw.get("appProtocol", "auto")
    if app_protocol not in APP_PROTOCOLS:
        raise ConfigError(f"appProtocol: expected one of {', '.join(APP_PROTOCOLS)}, "
                          f"got {app_protocol!r}")
    inbound_raw = _mapping(raw.get("inbound"), "inbound")
    authorization = _parse_authorization(inbound_raw.get("authorization"))
    authentication = _parse_authentication(inbound_raw.get("authentication"))
    ext_authz = _parse_ext_authz(inbound_raw.get("extAuthz"))
    own_mtls = _mtls_mode(inbound_raw["mtls"], "inbound.mtls") if "mtls" in inbound_raw \
        else None
    inbound_rate = _policy({"rateLimit": inbound_raw["rateLimit"]}, "inbound").rate_limit \
        if inbound_raw.get("rateLimit") is not None else None
    external = {
        str(host): _parse_external(str(host), e, f"external.{host}")
        for host, e in _mapping(raw.get("external"), "external").items()
    }
    return Snapshot(
        version=str(raw.get("version", "static")),
        node=node,
        listeners=listeners,
        app=app,
        mesh=mesh,
        services=services,
        routes=routes,
        gateway_rules=gateway_rules,
        authorization=authorization,
        inbound_rate_limit=inbound_rate,
        external=external,
        authentication=authentication,
        app_protocol=app_protocol,
        own_mtls=own_mtls,
        gateway_passthrough=gateway_passthrough,
        ext_authz=ext_authz,
        telemetry=_parse_telemetry(raw["telemetry"]) if "telemetry" in raw else None,
    )


def _parse_telemetry(data: object) -> TelemetrySettings:
    """The effective Telemetry settings the control plane computed for this proxy."""
    from meshctl.api.accessfilter import FilterError, compile_filter

    raw = _mapping(data, "telemetry")
    access = _mapping(raw.get("accessLog"), "telemetry.accessLog") \
        if raw.get("accessLog") is not None else None
    tracing = _mapping(raw.get("tracing"), "telemetry.tracing")
    expression = access.get("filter") if access is not None else None
    predicate = None
    if expression is not None:
        try:
            predicate = compile_filter(str(expression))
        except FilterError as err:
            raise ConfigError(f"telemetry.accessLog.filter: {err}") from None
    sampling = tracing.get("sampling")
    if sampling is not None and (isinstance(sampling, bool) or not isinstance(sampling, int | float)
                                 or not 0 <= sampling <= 1):
        raise ConfigError(f"telemetry.tracing.sampling: expected 0 to 1, got {sampling!r}")
    return TelemetrySettings(
        access_log=None if access is None else not access.get("disabled", False),
        filter_expression=None if expression is None else str(expression),
        access_filter=predicate,
        tracing_sampling=None if sampling is None else float(sampling),
        disable_span_reporting=bool(tracing.get("disableSpanReporting", False)),
    )


def _parse_external(host: str, data: object, path: str) -> ExternalHost:
    from meshctl.api.external import EXTERNAL_HOST, PROTOCOLS

    if not re.fullmatch(EXTERNAL_HOST, host):
        raise ConfigError(f"{path}: not a DNS name or *. and a DNS suffix")
    raw = _mapping(data, path)
    ports = []
    target_ports: dict[int, int] = {}
    for i, p in enumerate(_list(raw.get("ports"), f"{path}.ports")):
        pm = _mapping(p, f"{path}.ports[{i}]")
        number, protocol = pm.get("number"), pm.get("protocol", "HTTP")
        if isinstance(number, bool) or not isinstance(number, int) or not 0 < number < 65536:
            raise ConfigError(f"{path}.ports[{i}].number: expected a port, got {number!r}")
        if protocol not in PROTOCOLS:
            raise ConfigError(f"{path}.ports[{i}].protocol: expected one of "
                              f"{', '.join(PROTOCOLS)}, got {protocol!r}")
        ports.append((number, str(protocol)))
        target = pm.get("targetPort", number)
        if isinstance(target, bool) or not isinstance(target, int) or not 0 < target < 65536:
            raise ConfigError(f"{path}.ports[{i}].targetPort: expected a port, got {target!r}")
        if target != number:
            target_ports[number] = target
    endpoints = tuple(str(e) for e in _list(raw.get("endpoints"), f"{path}.endpoints"))
    return ExternalHost(host, str(raw.get("namespace", "default")), str(raw.get("name", host)),
                        tuple(ports), endpoints, _policy(raw.get("policy"), f"{path}.policy"),
                        target_ports)


def _parse_authorization(data: object) -> tuple[Any, ...]:
    """The policies, each with its name (the control plane's `namespace/name`; a static
    file's `name`, else `inbound.authorization[i]`) and `dryRun` (Istio's annotation)."""
    from meshctl.api.authz import parse_authorization

    policies = []
    for i, spec in enumerate(_list(data, "inbound.authorization")):
        path = f"inbound.authorization[{i}]"
        item = dict(spec) if isinstance(spec, Mapping) else spec  # (else the parser's error)
        name, dry_run = path, False
        if isinstance(item, dict):
            name, dry_run = item.pop("name", path), item.pop("dryRun", False)
        if not isinstance(name, str) or not name:
            raise ConfigError(f"{path}.name: expected a policy name, got {name!r}")
        if not isinstance(dry_run, bool):
            raise ConfigError(f"{path}.dryRun: expected true or false, got {dry_run!r}")
        with _config_errors():
            policy = parse_authorization(item, path)
        if dry_run and policy.action == "CUSTOM":
            # (as `meshctl apply` refuses it: the provider's answer would be enforced anyway)
            raise ConfigError(f"{path}.dryRun: a CUSTOM policy cannot be dry-run: its "
                              "provider decides for real; dry-run an ALLOW or DENY policy")
        policies.append(replace(policy, name=name, dry_run=dry_run))
    return tuple(policies)


def _parse_ext_authz(data: object) -> tuple[Any, ...]:
    from meshctl.api.extauthz import parse_provider

    providers = []
    for i, spec in enumerate(_list(data, "inbound.extAuthz")):
        with _config_errors():
            providers.append(parse_provider(spec, f"inbound.extAuthz[{i}]"))
    return tuple(providers)


def _parse_authentication(data: object) -> tuple[Any, ...]:
    from meshctl.api.authn import parse_snapshot_authentication

    policies = []
    for i, spec in enumerate(_list(data, "inbound.authentication")):
        path = f"inbound.authentication[{i}]"
        with _config_errors():
            policy = parse_snapshot_authentication(spec, path)
        for j, rule in enumerate(policy.jwt_rules):
            if rule.jwks is None:
                raise ConfigError(f"{path}.jwtRules[{j}].jwksUri: a sidecar fetches no keys; "
                                  "give them inline as jwks (the control plane does so)")
        policies.append(policy)
    return tuple(policies)
