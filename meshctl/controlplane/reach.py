"""Which proxies a change reaches: a diff of what snapshots read, between two passes.

Registry. A pass compares the registry as its SnapshotBuilder sees it with what the previous
pass saw, per service: a change to a service's endpoints (one registering, turning ready, its
app failing its probe, leaving) reaches the proxies whose Sidecar scope lists that service
(all, without a Sidecar). Whatever every snapshot reads is mesh-wide: the set of services (it
decides how each proxy names them, meshctl.controlplane.names) and the gateways (trusted XFCC
peers); a change there reaches every proxy. A field of ProxyInfo is compared unless it is
known never to reach a snapshot (certificate dates, addresses other than inbound, tokens,
versions: a certificate renewal reaches nobody).

Resources. Each resource added, changed or deleted since the previous pass (old and new
versions both) reaches: for AuthorizationPolicy, RequestAuthentication, Gateway, Telemetry and
Sidecar, the proxies of its namespace; for a Route or DestinationPolicy, the proxies whose
scope sees its host (and, for a policy, its namespace's: its rate limit); for an HTTPRoute,
those whose scope sees one of its parent Services (the Routes it makes); for an
ExternalService, those whose scope sees one of its hosts; for a Canary (the control plane's
own, no snapshot reads it), none; for any other kind (MeshConfig, PeerAuthentication: every
caller's view of a service), every proxy.

Both diffs are of the inputs themselves, not of events, so a change no event described is
not missed.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Set
from dataclasses import dataclass
from typing import Any

from meshctl.api.external import ExternalServiceSpec
from meshctl.api.gamma import parents_of
from meshctl.api.httproute import HTTPRouteSpec
from meshctl.api.kinds import RouteSpec
from meshctl.api.policy import DestinationPolicySpec
from meshctl.api.resources import Resource
from meshctl.api.sidecar import Scope, SidecarSpec
from meshctl.controlplane.registry import SNAPSHOT_READ, ProxyInfo
from meshctl.controlplane.snapshots import SnapshotBuilder

Service = tuple[str, str]  # (name, namespace)


def _facts(proxy: ProxyInfo) -> tuple[Any, ...]:
    values = [getattr(proxy, f) for f in SNAPSHOT_READ]
    return tuple(tuple(sorted(v.items())) if isinstance(v, Mapping) else v for v in values)


Listed = tuple[tuple[str, ProxyInfo], ...]  # (endpoint | idle, proxy), in the registry's order


def _same(a: Listed, b: Listed) -> bool:
    # The registry replaces a ProxyInfo on every change: the same objects are the same facts,
    # and only a replaced one needs its fields compared.
    return len(a) == len(b) and all(
        x[0] == y[0] and (x[1] is y[1] or _facts(x[1]) == _facts(y[1]))
        for x, y in zip(a, b, strict=True))


@dataclass(frozen=True, slots=True)
class RegistryFacts:
    """What a pass's snapshots read from the registry: per service, and mesh-wide."""

    services: dict[Service, Listed]
    gateways: tuple[ProxyInfo, ...]

    @classmethod
    def of(cls, endpoints: Iterable[ProxyInfo], idle: Iterable[ProxyInfo],
           gateways: Iterable[ProxyInfo]) -> RegistryFacts:
        """From the lists (sorted by name) the pass's SnapshotBuilder is given."""
        listed: dict[Service, list[tuple[str, ProxyInfo]]] = {}
        for kind, proxies in (("endpoint", endpoints), ("idle", idle)):
            for p in proxies:
                listed.setdefault((p.service, p.namespace), []).append((kind, p))
        return cls({key: tuple(items) for key, items in listed.items()}, tuple(gateways))

    def changed(self, before: RegistryFacts) -> set[Service] | None:
        """The services whose facts differ from ``before``; None when a mesh-wide one does
        (the set of services, a gateway)."""
        if (self.services.keys() != before.services.keys()
                or [_facts(p) for p in self.gateways] != [_facts(p) for p in before.gateways]):
            return None
        return {key for key, listed in self.services.items()
                if not _same(listed, before.services[key])}


class ScopeIndex:
    """The proxies grouped by what their snapshots can list: their namespace and the Sidecar
    scoping them, as ``builder`` picks it (one group per Sidecar, not one lookup per change)."""

    def __init__(self, builder: SnapshotBuilder, proxies: Mapping[str, ProxyInfo]) -> None:
        self._builder = builder
        groups: dict[tuple[str, str | None], tuple[Resource | None, list[str]]] = {}
        for name, proxy in proxies.items():
            sidecar = builder.sidecar(proxy)
            key = (proxy.namespace, None if sidecar is None else sidecar.name)
            groups.setdefault(key, (sidecar, []))[1].append(name)
        self._groups = [(key[0], self._scope(sidecar), names)
                        for key, (sidecar, names) in groups.items()]

    def _scope(self, sidecar: Resource | None) -> Scope | None:
        """None: every service and host."""
        spec = None if sidecar is None else sidecar.spec
        if not isinstance(spec, SidecarSpec) or spec.hosts is None or sidecar is None:
            return None
        return Scope(spec.hosts, sidecar.namespace, self._builder.mesh.trust_domain)

    def in_namespace(self, namespace: str) -> set[str]:
        return {n for ns, _, names in self._groups if ns == namespace for n in names}

    def seeing_services(self, services: Set[Service]) -> set[str]:
        """The proxies whose snapshots list one of ``services``."""
        return {n for _, scope, names in self._groups
                if scope is None or any(scope.sees_service(*s) for s in services)
                for n in names}

    def seeing(self, r: Resource, hosts: tuple[str, ...]) -> set[str]:
        """The proxies whose snapshots can hold a Route, DestinationPolicy or ExternalService
        about ``hosts``: as the builder scopes each (_by_host, _external), the mesh service a
        host names (in the builder's current names) or the outside host; a policy also
        applies to an outside host declared in another namespace."""
        external = isinstance(r.spec, ExternalServiceSpec)
        found = {h: None if external else self._builder.names.resolve(h, r.namespace)
                 for h in hosts}
        services = {f for f in found.values() if f is not None}
        outside = [h for h, f in found.items() if f is None]
        policy = isinstance(r.spec, DestinationPolicySpec)
        return {n for _, scope, names in self._groups
                if scope is None or any(scope.sees_service(*s) for s in services)
                or (policy and any(scope.sees_host_anywhere(h) for h in hosts))
                or any(scope.sees_host(h, r.namespace) for h in outside)
                for n in names}


# Kinds that reach only the proxies of their own namespace (their own parts, or their scope).
_NAMESPACE_LOCAL = frozenset({"AuthorizationPolicy", "RequestAuthentication", "Gateway",
                              "Telemetry", "Sidecar"})

# Kinds no snapshot reads (the control plane acts on them itself): they reach no proxy.
_NO_PROXY = frozenset({"Canary"})

Objects = dict[tuple[str, str, str], tuple[int, Resource]]  # key -> (resourceVersion, resource)


def changed_resources(before: Objects, after: Objects) -> list[Resource]:
    """The old and new versions of every resource added, changed or deleted."""
    out: list[Resource] = []
    for key in before.keys() | after.keys():
        old, new = before.get(key), after.get(key)
        if old is None or new is None or old[0] != new[0] or old[1].raw != new[1].raw:
            out.extend(entry[1] for entry in (old, new) if entry is not None)
    return out


def resources_reach(changed: Iterable[Resource], scopes: ScopeIndex) -> set[str] | None:
    """The proxies (by name) the changed resources reach; None: every proxy."""
    reached: set[str] = set()
    for r in changed:
        spec = r.spec
        if r.kind in _NO_PROXY:
            continue
        if r.kind in _NAMESPACE_LOCAL or isinstance(spec, DestinationPolicySpec):
            reached |= scopes.in_namespace(r.namespace)  # own parts (a policy: rate limit)
        if r.kind in _NAMESPACE_LOCAL:
            continue
        if isinstance(spec, RouteSpec | DestinationPolicySpec):
            reached |= scopes.seeing(r, (spec.host,))
        elif isinstance(spec, ExternalServiceSpec):
            reached |= scopes.seeing(r, spec.hosts)
        elif isinstance(spec, HTTPRouteSpec):  # the Routes of its parent Services
            reached |= scopes.seeing_services(set(parents_of(r)))
        else:
            return None  # mesh-wide (or unknown): every proxy
    return reached
