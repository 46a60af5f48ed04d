"""Builds each proxy's snapshot (the format of docs/design.md) from resources and the registry.

The parts every proxy of a namespace shares (``mesh``, ``services``, ``routes``) are serialized
once per build (per namespace, and per Sidecar resource scoping some of its proxies to the
hosts it names: meshctl.api.sidecar) and spliced into each proxy's JSON, so a pass over
1,000 proxies does not re-serialize 1,000 endpoint lists 1,000 times. Keys appear in a fixed
order (``mesh``, ``services``, ``routes``, ``external`` when an ExternalService exists, then
the proxy's own ``gateway``, ``inbound``, ``node``, ``telemetry`` when a Telemetry applies)
and every list is sorted, so equal content gives equal bytes and the version (first 12 hex
digits of the sha256 of those bytes) changes only when the content does. Services come before
the routes that use them; a route naming a subset with no endpoints still applies (the proxy
answers ``no_healthy_upstream``). ``app`` and ``listeners`` are not pushed: the proxy knows
them from its command line. A builder computes one snapshot per distinct SnapshotInputs (what
of a proxy it reads), which the replicas of a workload share.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from typing import Any

from meshctl.api.annotations import is_dry_run
from meshctl.api.authn import RequestAuthenticationSpec
from meshctl.api.authz import AuthorizationPolicySpec
from meshctl.api.external import ExternalServiceSpec
from meshctl.api.gamma import routes_of
from meshctl.api.kinds import MeshConfigSpec, RouteSpec
from meshctl.api.locality import locality_lb_setting_json
from meshctl.api.peerauthn import MtlsModes, PeerAuthenticationSpec
from meshctl.api.policy import (
    POLICY_FIELDS,
    SUBSET_POLICY_FIELDS,
    DestinationPolicySpec,
    Subset,
)
from meshctl.api.resources import Resource
from meshctl.api.sidecar import Scope, SidecarSpec
from meshctl.api.telemetry import TelemetrySpec, effective
from meshctl.controlplane.gatewayrules import gateway_parts
from meshctl.controlplane.jsonpieces import Pieces
from meshctl.controlplane.names import ServiceNames
from meshctl.controlplane.registry import ProxyInfo
from meshctl.controlplane.scoping import sidecar_for
from meshctl.controlplane.snapshotinputs import SnapshotInputs


@dataclass(frozen=True, slots=True)
class BuiltSnapshot:
    """One proxy's snapshot: its content-hash version and its JSON bytes, which are the
    ``shared`` pieces (the same tuple for every proxy of the namespace) then ``own``."""

    version: str
    data: bytes
    shared: tuple[bytes, ...] = ()
    own: bytes = b""

    def pieces(self) -> Iterator[bytes]:
        """The pieces whose concatenation is ``data`` (a delta reuses them)."""
        if not self.shared and not self.own:
            yield self.data
            return
        yield from self.shared
        yield self.own


# services > a service > its endpoints > one endpoint; routes > a route > its rules > one rule
_PIECE_DEPTH = 3


def snapshot_version(data: bytes) -> str:
    """The content hash that names a snapshot."""
    return hashlib.sha256(data).hexdigest()[:12]


def _dumps(value: Any) -> str:
    return json.dumps(value, sort_keys=True, separators=(",", ":"))


def _raw_spec(resource: Resource) -> dict[str, Any]:
    spec = resource.raw.get("spec") or {}
    return dict(json.loads(json.dumps(spec)))  # deep, JSON-safe copy


def _policy_item(resource: Resource) -> dict[str, Any]:
    """An AuthorizationPolicy as sidecars get it: its spec, its `namespace/name` (the label
    its decisions are counted under) and, when annotated so, ``dryRun`` (absent otherwise)."""
    item = {"name": f"{resource.namespace}/{resource.name}", **_raw_spec(resource)}
    if is_dry_run(resource.annotations):
        item["dryRun"] = True
    return item


def _subset(subset: Subset, raw: dict[str, Any]) -> dict[str, Any]:
    """A DestinationPolicy subset in the snapshot: its policy fields, if it sets any, under
    ``policy`` (absent otherwise: such snapshots keep their bytes)."""
    entry: dict[str, Any] = {"name": subset.name, "labels": dict(subset.labels)}
    if subset.policy is not None:
        entry["policy"] = {k: raw[k] for k in SUBSET_POLICY_FIELDS if k in raw}
    return entry


def mesh_settings(spec: MeshConfigSpec, trusted_xfcc: Iterable[str] = ()) -> dict[str, Any]:
    """MeshConfig.spec in the snapshot's ``mesh`` shape; ``trusted_xfcc``: more peers whose
    x-forwarded-client-cert sidecars keep (the registered gateways'), listed again in
    ``gatewayIdentities``: a sidecar keeps theirs only from a certificate with the gateway
    marker. (They stay in trustedXfccIdentities for sidecars from before the marker.)"""
    gateways = sorted(set(trusted_xfcc))
    trusted = sorted({*spec.trusted_xfcc_identities, *gateways})
    return {
        "mtls": spec.mtls_mode,
        "accessLog": spec.access_log,
        "retryBudget": {"percent": spec.retry_budget.percent,
                        "minRetriesPerSecond": spec.retry_budget.min_retries_per_second},
        "tracing": {"sampling": spec.tracing.sampling,
                    **({"otlpEndpoint": spec.tracing.otlp_endpoint}
                       if spec.tracing.otlp_endpoint else {})},
        "trustDomain": spec.trust_domain,
        "outboundTrafficPolicy": {"mode": spec.outbound_traffic},
        # absent when there is none: snapshots of meshes without gateways keep their bytes
        **({"trustedXfccIdentities": trusted} if trusted else {}),
        **({"gatewayIdentities": gateways} if gateways else {}),
        # likewise absent unless MeshConfig sets one
        **({"localityLbSetting": locality_lb_setting_json(spec.locality_lb)}
           if spec.locality_lb is not None else {}),
    }


def jwks_uris(objects: Iterable[tuple[Resource, int]]) -> dict[str, int]:
    """Each jwksUri that a RequestAuthentication among (resource, resourceVersion) names, with
    the newest resourceVersion naming it (what JwksCache.want takes)."""
    uris: dict[str, int] = {}
    for resource, version in objects:
        if isinstance(resource.spec, RequestAuthenticationSpec):
            for rule in resource.spec.jwt_rules:
                if rule.jwks_uri is not None:
                    uris[rule.jwks_uri] = max(uris.get(rule.jwks_uri, 0), version)
    return uris


def inbound_selects(selector: str | None, service: str, mode: str) -> bool:
    """Whether an AuthorizationPolicy or RequestAuthentication with ``spec.service``
    ``selector`` (None: the namespace's) applies to a proxy of ``service`` of its namespace. A
    gateway enforces only the policies that select it by service; a namespace-wide one is
    about the namespace's sidecars."""
    return selector == service if mode == "gateway" else selector in (None, service)


class SnapshotBuilder:
    """Snapshots for one state of (resources, endpoints); build one per reconcile pass."""

    def __init__(self, resources: Iterable[Resource], endpoints: Iterable[ProxyInfo],
                 jwks: Callable[[str], str] | None = None, *,
                 idle: Iterable[ProxyInfo] = (), gateways: Iterable[ProxyInfo] = ()) -> None:
        # jwks(uri): the JWK Set the control plane fetched for a jwksUri (JwksCache.jwks)
        self._jwks = jwks or (lambda uri: '{"keys":[]}')
        # Sidecars registered but taking no traffic (unready, draining, app not serving): their
        # service is listed even with no endpoint, so a caller gets 503 no_healthy_upstream,
        # as from a Kubernetes Service without ready pods, not 404 no_route.
        idle = [p for p in idle if p.mode == "sidecar"]
        self._idle = sorted({(p.service, p.namespace) for p in idle})
        self._by_kind: dict[str, list[Resource]] = {}
        resources = list(resources)
        endpoints = list(endpoints)
        # HTTPRoutes (GAMMA) become the Routes they mean: one engine (meshctl.api.gamma); for
        # the parent Services that exist, i.e. have a registered sidecar (as their status says)
        self.derived_routes = routes_of(resources, {(p.service, p.namespace)
                                                    for p in (*endpoints, *idle)
                                                    if p.mode == "sidecar"})
        for r in sorted([*resources, *self.derived_routes], key=lambda r: r.key):
            self._by_kind.setdefault(r.kind, []).append(r)
        meshes = [r.spec for r in self._by_kind.get("MeshConfig", [])
                  if isinstance(r.spec, MeshConfigSpec)]
        self.mesh = meshes[0] if meshes else MeshConfigSpec()
        # Trusted gateways (registered with a gateway token; connected or in their grace),
        # ready or not: each strips its clients' XFCC and sets its own, so sidecars may keep
        # theirs (docs/security.md). A gateway with a plain service token is not one.
        self._gateway_ids = {self._identity(p.namespace, p.service)
                             for p in gateways if p.mode == "gateway" and p.trusted_gateway}
        self._telemetry = [(r.namespace, r.name, r.spec) for r in self._by_kind.get("Telemetry", [])
                           if isinstance(r.spec, TelemetrySpec)]
        self.mtls = MtlsModes(self.mesh.mtls_mode, (
            (r.namespace, r.spec) for r in self._by_kind.get("PeerAuthentication", [])
            if isinstance(r.spec, PeerAuthenticationSpec)))
        self._endpoints = sorted(endpoints, key=lambda p: (p.service, p.inbound, p.name))
        # Whether each service's sidecars declare a TCP app (--app-protocol tcp): all of them
        # (True), none (False), or some (a rollout changing it: both in the set).
        self._tcp: dict[tuple[str, str], set[bool]] = {}
        for p in (*self._endpoints, *idle):
            self._tcp.setdefault((p.service, p.namespace), set()).add(p.app_protocol == "tcp")
        # A service is its name in its namespace: `api` of `a` and `api` of `b` are two.
        self.names = ServiceNames(self._tcp)
        # (namespace, Sidecar name or None) -> ('{"mesh":..,"services":..,"routes":..,'
        # bytes, its sha256 so far, its pieces)
        self._shared: dict[tuple[str, str | None], tuple[bytes, Any, tuple[bytes, ...]]] = {}
        self._sidecars: dict[str, list[Resource]] = {}  # by namespace
        for r in self._by_kind.get("Sidecar", []):
            self._sidecars.setdefault(r.namespace, []).append(r)
        # One snapshot per distinct SnapshotInputs: the replicas of a workload share it.
        self._built: dict[SnapshotInputs, BuiltSnapshot] = {}
        self.computed = 0  # snapshots computed (not shared): the reconciler counts them

    def sidecar(self, proxy: ProxyInfo | SnapshotInputs) -> Resource | None:
        """The Sidecar resource scoping ``proxy``, if any (meshctl.controlplane.scoping)."""
        own = self._sidecars.get(proxy.namespace)
        if not own:  # namespaces without one: no per-proxy lookup at all
            return None
        return sidecar_for(own, proxy.service, proxy.namespace, proxy.labels, proxy.mode)

    def build(self, proxy: ProxyInfo) -> BuiltSnapshot:
        """The snapshot for ``proxy``: computed once per distinct SnapshotInputs, shared by
        the proxies that have them (the same object, so the same bytes in memory too)."""
        inputs = SnapshotInputs.of(proxy)
        built = self._built.get(inputs)
        if built is None:
            built = self._built[inputs] = self._compute(inputs)
            self.computed += 1
        return built

    def _compute(self, proxy: SnapshotInputs) -> BuiltSnapshot:
        prefix, hashed, pieces = self._shared_part(proxy.namespace, self.sidecar(proxy))
        own = _dumps(self._own_parts(proxy))[1:].encode()  # '"inbound":...}'
        digest = hashed.copy()  # the shared prefix is hashed once per namespace, not per proxy
        digest.update(own)
        return BuiltSnapshot(digest.hexdigest()[:12], prefix + own, pieces, own)

    # -- shared by every proxy of a namespace ------------------------------------------------
    def _shared_part(self, namespace: str,
                     sidecar: Resource | None) -> tuple[bytes, Any, tuple[bytes, ...]]:
        """``{"mesh":..,"services":..,"routes":..,`` as bytes, its running sha256 and its
        pieces (an endpoint, a route, a subset each: what deltas reuse): one per namespace,
        and one per Sidecar scoping some of its proxies."""
        key = (namespace, None if sidecar is None else sidecar.name)
        if key not in self._shared:
            scope = None
            mesh = mesh_settings(self.mesh, self._gateway_ids)
            if sidecar is not None and isinstance(sidecar.spec, SidecarSpec):
                if sidecar.spec.hosts is not None:
                    scope = Scope(sidecar.spec.hosts, namespace, self.mesh.trust_domain)
                if sidecar.spec.outbound_traffic is not None:
                    mesh["outboundTrafficPolicy"] = {"mode": sidecar.spec.outbound_traffic}
            parts = [("mesh", mesh),
                     ("services", self._services(namespace, scope)),
                     ("routes", self._routes(namespace, scope))]
            external = self._external(namespace, scope)
            if external:  # absent when none is declared: such snapshots keep their bytes
                parts.append(("external", external))
            writer = Pieces()  # the bytes of _dumps, section by section, cut into pieces
            writer.raw("{")
            for i, (name, value) in enumerate(parts):
                writer.raw(("," if i else "") + json.dumps(name) + ":")
                writer.value(value, _PIECE_DEPTH)
            writer.raw(",")
            pieces = writer.finish()
            prefix = b"".join(pieces)
            self._shared[key] = (prefix, hashlib.sha256(prefix), pieces)
        return self._shared[key]

    def _in_view(self, kind: str, namespace: str) -> list[Resource]:
        """Resources of a kind, the proxy's own namespace last so it wins a name clash."""
        items = self._by_kind.get(kind, [])
        return ([r for r in items if r.namespace != namespace]
                + [r for r in items if r.namespace == namespace])

    def _services(self, namespace: str, scope: Scope | None = None) -> dict[str, Any]:
        """Every service (in ``scope``), keyed as this namespace's proxies name it (see
        ServiceNames)."""
        names = self.names
        policies = self.by_host("DestinationPolicy", namespace, scope)
        services: dict[str, Any] = {}
        # Out-of-scope services are skipped before their endpoints are listed: a Sidecar
        # `./*` in each of 10 namespaces then costs each namespace its own endpoints only.
        for ep in self._endpoints:
            if scope is not None and not scope.sees_service(ep.service, ep.namespace):
                continue
            tcp = self._tcp[(ep.service, ep.namespace)]
            if ep.app_protocol == "tcp" and tcp != {True}:
                # Some of the service's sidecars declare tcp, others not: it stays an HTTP
                # service, served by those that speak HTTP, until they all agree. (A TCP app
                # sent HTTP requests, or an HTTP app sent opaque bytes, would both break.)
                continue
            # The identity is the service's (one SPIFFE id per service account), stated once
            # rather than per endpoint: at 1000 endpoints that is ~40% of the snapshot.
            svc = services.setdefault(names.key(ep.service, ep.namespace, namespace), {
                "namespace": ep.namespace, "identity": self._identity(ep.namespace, ep.service),
                "endpoints": []})
            endpoint = {"address": ep.inbound, "labels": dict(ep.labels)}
            if ep.locality:  # absent when not said: such snapshots keep their bytes
                endpoint["locality"] = ep.locality
            if self.mtls.per_workload:
                # A selector by labels or ports makes this sidecar's mode its own: stated
                # (after the loop) where it differs from its service's, so callers follow it.
                endpoint["mtls"] = self.mtls.mode(ep.namespace, ep.service, labels=ep.labels,
                                                  port=ep.app_port)
            svc["endpoints"].append(endpoint)
        for service, ns in self._idle:
            if scope is not None and not scope.sees_service(service, ns):
                continue
            services.setdefault(names.key(service, ns, namespace), {
                "namespace": ns, "identity": self._identity(ns, service), "endpoints": []})
        for key, svc in services.items():
            name = key.partition(".")[0]
            label = names.metrics_name(name, svc["namespace"])
            if label != key:  # (absent when equal: such snapshots keep their bytes)
                svc["metricsName"] = label
            if self._tcp.get((name, svc["namespace"])) == {True}:
                svc["protocol"] = "tcp"  # absent for HTTP: such snapshots keep their bytes
            mode = self.mtls.mode(svc["namespace"], name)
            if mode != self.mesh.mtls_mode:
                # What its sidecars accept, when a PeerAuthentication makes it differ from
                # the mesh's: callers send it plaintext if DISABLE, mTLS otherwise (auto mTLS).
                svc["mtls"] = mode
            for endpoint in svc["endpoints"] if self.mtls.per_workload else ():
                if endpoint["mtls"] == mode:  # absent when the service's: fewer bytes
                    del endpoint["mtls"]
            policy = policies.get(key)
            if policy is None or not isinstance(policy.spec, DestinationPolicySpec):
                continue
            raw = _raw_spec(policy)
            svc["subsets"] = [_subset(s, raw_subset) for s, raw_subset
                              in zip(policy.spec.subsets, raw.get("subsets") or [], strict=True)]
            svc["policy"] = {k: raw[k] for k in POLICY_FIELDS if k in raw}
        return services

    def _routes(self, namespace: str, scope: Scope | None = None) -> list[dict[str, Any]]:
        """Every Route (of a host in ``scope``), its host keyed as this namespace's proxies
        name the service; one from another namespace says so (``namespace``: its backends'
        services are named there)."""
        routes: dict[str, dict[str, Any]] = {}
        for host, r in self.by_host("Route", namespace, scope).items():
            entry = {"host": host, "rules": _raw_spec(r).get("rules", [])}
            if r.namespace != namespace:  # absent for its own: such snapshots keep bytes
                entry["namespace"] = r.namespace
            if any(rule.get("name") or rule.get("rateLimit") for rule in entry["rules"]):
                # the `route` label of its named rules' metrics (proxy.routemetrics), and part
                # of a rate-limited rule's identity (its buckets outlive pushes: proxy.layers
                # RuleLimits), however its other rules change; absent without either: such
                # snapshots keep their bytes
                entry["name"] = r.name
            routes[host] = entry
        return [routes[host] for host in sorted(routes)]

    def by_host(self, kind: str, namespace: str,
                 scope: Scope | None = None) -> dict[str, Resource]:
        """The Route (or DestinationPolicy) of each host, keyed as ``namespace``'s proxies name
        it. For a mesh service: the proxies' own namespace's, else the service's own
        namespace's (Istio's lookup path for DestinationRules); one of a third namespace is
        for that namespace's callers only, so no caller's gets one of two at chance. Within a
        namespace, a host naming the service's namespace beats a bare name falling back to
        another namespace's. A bare host that several other namespaces have is about none of
        them: left out. An outside host's: the own namespace's, else any. With a ``scope``, only
        those about a host in it."""
        names = self.names
        chosen: dict[str, tuple[tuple[bool, bool], Resource]] = {}
        for r in self._in_view(kind, namespace):
            if not isinstance(r.spec, RouteSpec | DestinationPolicySpec):
                continue
            found = names.resolve(r.spec.host, r.namespace)
            if ((found is not None and r.namespace not in (namespace, found[1]))
                    or names.ambiguous(r.spec.host, r.namespace)):
                continue
            if scope is not None and not (scope.sees_host(r.spec.host, r.namespace)
                                          if found is None else scope.sees_service(*found)):
                continue
            key = r.spec.host if found is None else names.key(*found, namespace)
            rank = (r.namespace == namespace, names.written_as(r.spec.host, r.namespace))
            if key not in chosen or rank >= chosen[key][0]:
                chosen[key] = (rank, r)
        return {key: r for key, (_, r) in chosen.items()}

    def _external(self, namespace: str, scope: Scope | None = None) -> dict[str, Any]:
        """ExternalService hosts (in ``scope``): ports, fixed addresses (none: DNS) and the
        host's policy."""
        policies = {r.spec.host: r for r in self._in_view("DestinationPolicy", namespace)
                    if isinstance(r.spec, DestinationPolicySpec)}
        external: dict[str, Any] = {}
        for r in self._in_view("ExternalService", namespace):
            if not isinstance(r.spec, ExternalServiceSpec):
                continue
            for host in r.spec.hosts:
                if scope is not None and not scope.sees_host(host, r.namespace):
                    continue
                entry: dict[str, Any] = {
                    "namespace": r.namespace, "name": r.name,
                    "ports": [{"number": p.number, "protocol": p.protocol,
                               **({"targetPort": p.target_port} if p.target_port else {})}
                              for p in r.spec.ports],
                    "endpoints": list(r.spec.endpoints)}
                policy = policies.get(host)
                if policy is not None:
                    raw = _raw_spec(policy)
                    entry["policy"] = {k: raw[k] for k in POLICY_FIELDS if k in raw}
                external[host] = entry
        return external

    def _identity(self, namespace: str, service: str) -> str:
        return f"spiffe://{self.mesh.trust_domain}/ns/{namespace}/sa/{service}"

    # -- this proxy's own parts ---------------------------------------------------------------
    def _own_parts(self, proxy: SnapshotInputs) -> dict[str, Any]:
        parts: dict[str, Any] = {
            "node": {"service": proxy.service, "namespace": proxy.namespace,
                     "labels": dict(proxy.labels)},
            "inbound": self._inbound(proxy),
        }
        if proxy.locality:  # (absent when not said: such snapshots keep their bytes)
            parts["node"]["locality"] = proxy.locality
        label = self.names.metrics_name(proxy.service, proxy.namespace)
        if label != proxy.service:  # its callers label it so: its own metrics must agree
            parts["node"]["metricsName"] = label
        telemetry = effective(self._telemetry, proxy.namespace, proxy.service, proxy.labels) \
            if self._telemetry else None
        if telemetry is not None:  # absent unless a Telemetry applies: the bytes stay
            parts["telemetry"] = telemetry
        if proxy.mode == "gateway":
            rules, passthrough = gateway_parts(self._by_kind.get("Gateway", []),
                                               proxy.namespace, _raw_spec)
            parts["gateway"] = {"rules": rules}
            if passthrough:  # absent otherwise: gateways without one keep their bytes
                parts["gateway"]["passthrough"] = passthrough
        return parts

    def _inbound(self, proxy: SnapshotInputs) -> dict[str, Any]:
        def selects(service: str | None) -> bool:
            return inbound_selects(service, proxy.service, proxy.mode)

        inbound: dict[str, Any] = {"authorization": [
            _policy_item(r) for r in self._by_kind.get("AuthorizationPolicy", [])
            if r.namespace == proxy.namespace and isinstance(r.spec, AuthorizationPolicySpec)
            and selects(r.spec.service)]}
        authentication = [
            self._inline_keys(_raw_spec(r)) for r in self._by_kind.get("RequestAuthentication", [])
            if r.namespace == proxy.namespace and isinstance(r.spec, RequestAuthenticationSpec)
            and selects(r.spec.service)]
        if authentication:  # absent otherwise: snapshots without one keep their bytes
            inbound["authentication"] = authentication
        providers = self._ext_authz(proxy.namespace, inbound["authorization"])
        if providers:  # likewise absent without a CUSTOM policy
            inbound["extAuthz"] = providers
        mode = self.mtls.mode(proxy.namespace, proxy.service, proxy.mode != "gateway",
                              proxy.labels, proxy.app_port)
        if mode != self.mesh.mtls_mode:  # what this inbound listener accepts, when not mesh's
            inbound["mtls"] = mode
        own = (proxy.service, proxy.namespace)
        for r in self._by_kind.get("DestinationPolicy", []):
            # The own namespace's policy for this service, however its host is spelled (`api`,
            # `api.b`, FQDN); other namespaces' policies are their callers' (see by_host).
            if (r.namespace == proxy.namespace and isinstance(r.spec, DestinationPolicySpec)
                    and (r.spec.host == proxy.service
                         or self.names.resolve(r.spec.host, r.namespace) == own)):
                rate = _raw_spec(r).get("rateLimit")
                if rate is not None:
                    inbound["rateLimit"] = rate
        return inbound

    def _ext_authz(self, namespace: str, policies: list[dict[str, Any]]) -> list[Any]:
        """The MeshConfig extensionProviders these policies' CUSTOM ones name, each service
        written as the proxy keys it (a mesh service's `name` or `name.ns`; an outside host as
        it is), so the proxy reaches it as any outbound call."""
        names = {(p.get("provider") or {}).get("name") for p in policies
                 if p.get("action") == "CUSTOM"}
        meshes = self._by_kind.get("MeshConfig", [])
        raw = (_raw_spec(meshes[0]).get("extensionProviders") or []) if meshes else []
        providers = []
        for item in raw:
            if item.get("name") in names:
                spec = item.get("envoyExtAuthzHttp") or item.get("envoyExtAuthzGrpc")
                found = self.names.resolve(spec["service"], namespace) if spec else None
                if spec and found is not None:
                    spec["service"] = self.names.key(*found, namespace)
                providers.append(item)
        return providers

    def _inline_keys(self, spec: dict[str, Any]) -> dict[str, Any]:
        """A RequestAuthentication spec as sidecars get it: each jwksUri replaced by the keys
        fetched from it (an empty set until a fetch succeeds)."""
        for rule in spec.get("jwtRules") or []:
            uri = rule.pop("jwksUri", None)
            if isinstance(uri, str):
                rule["jwks"] = self._jwks(uri)
        return spec

