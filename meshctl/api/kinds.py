"""The spec of each resource kind (Route, MeshConfig, Gateway here; the others in their modules)."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping
from dataclasses import dataclass

from meshctl.api import fields as F
from meshctl.api.authn import RequestAuthenticationSpec, parse_request_authentication
from meshctl.api.authz import AuthorizationPolicySpec, parse_authorization
from meshctl.api.canary import CanarySpec, parse_canary
from meshctl.api.errors import Issue, ValidationError
from meshctl.api.extauthz import ExtensionProvider, parse_providers
from meshctl.api.external import ExternalServiceSpec, parse_external_service
from meshctl.api.fields import Fields
from meshctl.api.grpcroute import parse_grpcroute
from meshctl.api.httproute import HTTPRouteSpec, parse_httproute
from meshctl.api.locality import LocalityLbSetting, parse_locality_lb_setting
from meshctl.api.matches import Match, parse_match_blocks
from meshctl.api.peerauthn import PeerAuthenticationSpec, parse_peer_authentication
from meshctl.api.policy import HOST, SERVICE, DestinationPolicySpec, parse_destination_policy
from meshctl.api.rules import Rule, check_rule_names, parse_rule, parse_rules
from meshctl.api.sidecar import SidecarSpec, parse_sidecar
from meshctl.api.telemetry import TelemetrySpec, parse_telemetry
from meshctl.api.xfcc import trusted_xfcc_identities

MTLS_MODES = ("STRICT", "PERMISSIVE", "DISABLE")
MESH_CONFIG_NAME = "default"


@dataclass(frozen=True, slots=True)
class RouteSpec:
    """spec of a Route: ordered rules for requests to ``host`` (first match wins)."""

    host: str
    rules: tuple[Rule, ...]


@dataclass(frozen=True, slots=True)
class RetryBudget:
    """Retries allowed per destination: ``percent`` of requests plus a floor per second."""

    percent: float = 20.0
    min_retries_per_second: float = 10.0


@dataclass(frozen=True, slots=True)
class Tracing:
    """Trace sampling probability and where spans are exported (OTLP/gRPC), if anywhere."""

    sampling: float = 0.01
    otlp_endpoint: str | None = None


@dataclass(frozen=True, slots=True)
class MeshConfigSpec:
    """spec of the one MeshConfig; ``MeshConfigSpec()`` is the default when none exists."""

    trust_domain: str = "cluster.local"
    mtls_mode: str = "STRICT"
    certificate_ttl: float = 86400.0
    access_log: bool = False
    retry_budget: RetryBudget = RetryBudget()
    tracing: Tracing = Tracing()
    outbound_traffic: str = "REGISTRY_ONLY"  # or ALLOW_ANY: hosts outside the mesh too
    # Peers (an ingress that is not an Ami gateway) whose x-forwarded-client-cert sidecars
    # keep and append to; the registered gateways' ids are added by the control plane.
    trusted_xfcc_identities: tuple[str, ...] = ()
    # Istio's meshConfig.localityLbSetting: the default of every DestinationPolicy without one
    locality_lb: LocalityLbSetting | None = None
    # Istio's meshConfig.extensionProviders: AuthorizationPolicy CUSTOM's providers
    extension_providers: tuple[ExtensionProvider, ...] = ()


@dataclass(frozen=True, slots=True)
class GatewayRule:
    """Requests for one of ``hosts`` (none = any) matching any block (none = all) enter the
    mesh at ``destination`` (under that service's Route), or are handled by ``rule``, a Route
    rule applied as written (its matches are ``matches``)."""

    matches: tuple[Match, ...]
    destination: str | None
    hosts: tuple[str, ...] = ()
    rule: Rule | None = None
    # in a proxy snapshot: the name of the Gateway an inline rule is written in (the `route`
    # of its per-rule metrics, the identity of its rate-limit buckets)
    gateway: str | None = None

    @property
    def services(self) -> tuple[str, ...]:
        """The services the rule sends requests to (or mirrors them to)."""
        if self.rule is None:
            return (self.destination,) if self.destination else ()
        names = [b.service for b in self.rule.backends]
        if self.rule.mirror is not None:
            names.append(self.rule.mirror.service)
        return tuple(dict.fromkeys(n for n in names if n))


@dataclass(frozen=True, slots=True)
class GatewayPassthrough:
    """TLS connections whose server name (SNI) is one of ``sni_hosts`` go to ``destination``
    (a TCP service) unterminated: Istio's Gateway `tls.mode: PASSTHROUGH` with a
    VirtualService `tls` route matching `sniHosts`."""

    sni_hosts: tuple[str, ...]
    destination: str


@dataclass(frozen=True, slots=True)
class GatewaySpec:
    """spec of a Gateway: the listen address (informational, None: not said), its ordered
    entry rules and its TLS passthrough entries; ``hosts``: the hosts it serves to the
    Gateways bound to it, ``gateway``: the Gateway this one is bound to (Istio's Gateway and
    a VirtualService bound to it)."""

    listen: str | None
    rules: tuple[GatewayRule, ...]
    passthrough: tuple[GatewayPassthrough, ...] = ()
    hosts: tuple[str, ...] = ()
    gateway: str | None = None


Spec = (RouteSpec | DestinationPolicySpec | AuthorizationPolicySpec | RequestAuthenticationSpec
        | PeerAuthenticationSpec | MeshConfigSpec | GatewaySpec | ExternalServiceSpec
        | TelemetrySpec | SidecarSpec | CanarySpec | HTTPRouteSpec)


def parse_route(data: object, path: str) -> RouteSpec:
    """Parse Route.spec."""
    f = Fields(data, path)
    host = f.required("host", HOST, "")
    rules = f.required("rules", parse_rules, ())
    f.finish()
    return RouteSpec(host, rules)


def parse_mesh_config(data: object, path: str) -> MeshConfigSpec:
    """Parse MeshConfig.spec; every field has a default."""
    f = Fields(data, path)
    d = MeshConfigSpec()
    trust_domain = f.value("trustDomain",
                           F.string(F.DNS_SUBDOMAIN, "a domain like cluster.local", 253),
                           d.trust_domain)
    spec = MeshConfigSpec(
        trust_domain,
        f.value("mtls", _parse_mtls, d.mtls_mode),
        f.value("certificateTTL", F.duration(minimum=60.0), d.certificate_ttl),
        f.value("accessLog", F.boolean, d.access_log),
        f.value("retryBudget", _parse_retry_budget, d.retry_budget),
        f.value("tracing", _parse_tracing, d.tracing),
        f.value("outboundTrafficPolicy", _parse_outbound_traffic, d.outbound_traffic),
        f.value("trustedXfccIdentities", trusted_xfcc_identities(trust_domain),
                d.trusted_xfcc_identities),
        f.optional("localityLbSetting", parse_locality_lb_setting),
        f.value("extensionProviders", parse_providers, ()),
    )
    f.finish()
    return spec


OUTBOUND_TRAFFIC_MODES = ("REGISTRY_ONLY", "ALLOW_ANY")


def _parse_outbound_traffic(data: object, path: str) -> str:
    f = Fields(data, path)
    mode = f.required("mode", F.enum(OUTBOUND_TRAFFIC_MODES), "REGISTRY_ONLY")
    f.finish()
    return mode


def _parse_mtls(data: object, path: str) -> str:
    f = Fields(data, path)
    mode = f.value("mode", F.enum(MTLS_MODES), "STRICT")
    f.finish()
    return mode


def _parse_retry_budget(data: object, path: str) -> RetryBudget:
    f = Fields(data, path)
    budget = RetryBudget(f.value("percent", F.number(0, 100), 20.0),
                         f.value("minRetriesPerSecond", F.number(0), 10.0))
    f.finish()
    return budget


def _parse_tracing(data: object, path: str) -> Tracing:
    f = Fields(data, path)
    tracing = Tracing(f.value("sampling", F.number(0, 1), 0.01),
                      f.optional("otlpEndpoint", F.string(F.HOST_PORT, "host:port")))
    f.finish()
    return tracing


def parse_gateway(data: object, path: str) -> GatewaySpec:
    """Parse Gateway.spec: `rules`, `passthrough` or both (a gateway that only passes TLS
    through needs no HTTP rule)."""
    f = Fields(data, path)
    listen = f.optional("listen", F.string(F.HOST_PORT, "host:port like 0.0.0.0:8080"))
    hosts = f.value("hosts", F.list_of(_GATEWAY_HOST, 1, "at least one host is required"), ())
    bound = f.optional("gateway", F.string(F.DNS_SUBDOMAIN, "a Gateway's name"))
    if not f.has("rules") and not f.has("passthrough") and not f.has("hosts"):
        f.add(f.at("rules"), "field is required (or passthrough, or hosts)")
    if f.has("gateway") and not f.has("rules"):
        f.add(f.at("rules"), "field is required with gateway (the rules it binds)")
    if f.has("gateway") and (f.has("hosts") or f.has("passthrough")):
        f.add(f.at("gateway"), "a Gateway bound to another has rules only: its hosts and "
                               "passthrough are the other one's")
    rules = f.value("rules", parse_gateway_rules, ())
    passthrough = f.value("passthrough", parse_gateway_passthrough, ())
    f.finish()
    return GatewaySpec(listen, rules, passthrough, hosts, bound)


def parse_gateway_rules(data: object, path: str) -> tuple[GatewayRule, ...]:
    """Parse Gateway.spec.rules; the names of its inline rules are unique, as a Route's."""
    rules = F.list_of(_parse_gateway_rule, 1, "at least one rule is required")(data, path)
    named = [(i, r.rule.name) for i, r in enumerate(rules) if r.rule and r.rule.name]
    check_rule_names(named, path)
    return rules


def parse_snapshot_gateway_rules(data: object, path: str) -> tuple[GatewayRule, ...]:
    """Parse a proxy snapshot's gateway.rules: the rules of every Gateway of the namespace,
    each inline one with its Gateway's name (`gateway`)."""
    return F.list_of(_parse_snapshot_rule, 1, "at least one rule is required")(data, path)


def _parse_snapshot_rule(data: object, path: str) -> GatewayRule:
    gateway = data.get("gateway") if isinstance(data, Mapping) else None
    if gateway is None or not isinstance(data, Mapping):
        return _parse_gateway_rule(data, path)
    rest = {k: v for k, v in data.items() if k != "gateway"}
    name = F.string(F.DNS_SUBDOMAIN, "a Gateway name")(gateway, F.join(path, "gateway"))
    return dataclasses.replace(_parse_gateway_rule(rest, path), gateway=name)


# A DNS name, `*.` and a DNS suffix (any name ending in it), or `*` (any host), as Istio's
# Gateway hosts.
GATEWAY_HOST = r"^(\*|(\*\.)?" + F.DNS_SUBDOMAIN[1:-1] + r")$"
_GATEWAY_HOST = F.string(GATEWAY_HOST,
                         "a lower-case DNS name, *. and a DNS suffix, or * for any host")


def parse_gateway_passthrough(data: object, path: str) -> tuple[GatewayPassthrough, ...]:
    """Parse TLS passthrough entries (Gateway.spec.passthrough and a proxy snapshot's
    gateway.passthrough). A server name pattern in two entries is refused: which service
    gets the connection would be left to order (Envoy refuses two filter chains with the
    same server name, and Istio reports the conflict); `*.example.com` beside
    `db.example.com` is no conflict, the most specific pattern wins."""
    entries = F.list_of(_parse_passthrough, 1, "at least one entry is required")(data, path)
    issues: list[Issue] = []
    first: dict[str, str] = {}
    for i, entry in enumerate(entries):
        for j, host in enumerate(entry.sni_hosts):
            where = f"{path}[{i}].sniHosts[{j}]"
            if host in first:
                issues.append(Issue(None, None, where, f"{host} is already listed at "
                                    f"{first[host]}: each server name pattern may appear "
                                    "once (which entry takes it would be ambiguous)"))
            else:
                first[host] = where
    if issues:
        raise ValidationError(issues)
    return entries


def _parse_passthrough(data: object, path: str) -> GatewayPassthrough:
    f = Fields(data, path)
    hosts = f.required("sniHosts", F.list_of(_GATEWAY_HOST, 1, "at least one server name "
                                             "is required"), ())
    destination = f.required("destination", SERVICE, "")
    f.finish()
    return GatewayPassthrough(hosts, destination)


# What a gateway rule has besides the fields of a Route rule
_GATEWAY_RULE_OWN = ("hosts", "match", "destination")


def _parse_gateway_rule(data: object, path: str) -> GatewayRule:
    """`destination` (the service's Route applies), or the fields of a Route rule (parsed by
    the Route rule parser) applied as written; its backends and mirror name their service,
    as a gateway rule has no host of its own."""
    f = Fields(data, path)
    hosts = f.value("hosts", F.list_of(_GATEWAY_HOST), ())
    matches = f.value("match", parse_match_blocks, ())
    assert isinstance(data, Mapping)  # (Fields checked it)
    inline = {k: v for k, v in data.items() if k not in _GATEWAY_RULE_OWN}
    if f.has("destination"):
        destination = f.value("destination", SERVICE, "")
        for key in inline:
            f.has(key)
            f.add(f.at(key), f"a rule with a destination is routed by that service's Route: "
                             f"remove {key}, or the destination to write a Route rule here")
        f.finish()
        return GatewayRule(matches, destination, hosts)
    if "matches" in inline:
        f.has("matches")
        f.add(f.at("matches"), "a gateway rule's match blocks are its `match`")
        inline.pop("matches")
    for key in inline:
        f.has(key)  # (checked by the Route rule parser)
    rule: Rule | None = None
    if not any(k in inline for k in ("backends", "redirect", "directResponse")):
        f.add(f.at("destination"), "field is required (or the fields of a Route rule: "
                                   "backends, redirect or directResponse)")
    else:
        try:
            rule = parse_rule(inline, path)
        except ValidationError as err:
            f.issues.extend(err.issues)
    if rule is not None:
        for j, b in enumerate(rule.backends):
            if b.service is None:
                f.add(f"{f.at('backends')}[{j}].service", "field is required in a gateway "
                      "rule (it has no host of its own to default to)")
        if rule.mirror is not None and rule.mirror.service is None:
            f.add(f"{f.at('mirror')}.service", "field is required in a gateway rule (it has "
                                               "no host of its own to default to)")
    f.finish()
    assert rule is not None
    return GatewayRule(matches, None, hosts, dataclasses.replace(rule, matches=matches))


@dataclass(frozen=True, slots=True)
class Kind:
    """How one kind's spec is parsed; a kind whose spec is optional parses a missing one as {}."""

    name: str
    parse: Callable[[object, str], Spec]
    spec_required: bool = True


KINDS: dict[str, Kind] = {k.name: k for k in (
    Kind("Route", parse_route),
    Kind("DestinationPolicy", parse_destination_policy),
    Kind("AuthorizationPolicy", parse_authorization),
    Kind("RequestAuthentication", parse_request_authentication),
    Kind("PeerAuthentication", parse_peer_authentication),
    Kind("MeshConfig", parse_mesh_config, spec_required=False),
    Kind("Gateway", parse_gateway),
    Kind("ExternalService", parse_external_service),
    Kind("Telemetry", parse_telemetry),
    Kind("Sidecar", parse_sidecar),
    Kind("Canary", parse_canary),
    Kind("HTTPRoute", parse_httproute),
    Kind("GRPCRoute", parse_grpcroute),
)}
