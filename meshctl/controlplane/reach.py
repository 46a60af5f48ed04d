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
scope sees its host (and, for a policy, its namespace's: its rate limit); for an
ExternalService, those whose scope sees one of its hosts; for any other kind (MeshConfig,
PeerAuthentication: every caller's view of a service), every proxy.

Both diffs are of the inputs themselves, not of events, so a change no event described is
not missed.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Set
from dataclasses import dataclass, fields
from typing import Any

from meshctl.api.external import ExternalServiceSpec
from meshctl.api.kinds import RouteSpec
from meshctl.api.policy import DestinationPolicySpec
from meshctl.api.resources import Resource
from meshctl.api.sidecar import Scope, SidecarSpec
from meshctl.controlplane.registry import ProxyInfo
from meshctl.controlplane.snapshots import SnapshotBuilder

# Read by no snapshot (tests/test_snapshot_reach.py varies every other field).
UNREAD = frozenset({"cert_expiry", "cert_issued", "admin", "outbound", "admin_token",
                    "proxy_version", "build"})
_COMPARED = tuple(f.name for f in fields(ProxyInfo) if f.name not in UNREAD)

Service = tuple[str, str]  # (name, namespace)


def _facts(proxy: ProxyInfo) -> tuple[Any, ...]:
    values = [getattr(proxy, f) for f in _COMPARED]
    return tuple(tuple(sorted(v.items())) if isinstance(v, Mapping) else v for v in values)


@dataclass(frozen=True, slots=True)
class RegistryFacts:
    """What a pass's snapshots read from the registry: per service, and mesh-wide."""

    services: dict[Service, tuple[Any, ...]]
    mesh_wide: tuple[Any, ...]

    @classmethod
    def of(cls, endpoints: Iterable[ProxyInfo], idle: Iterable[ProxyInfo],
           gateways: Iterable[ProxyInfo]) -> RegistryFacts:
        """From the lists the pass's SnapshotBuilder is given."""
        listed: dict[Service, list[tuple[Any, ...]]] = {}
        for kind, proxies in (("endpoint", endpoints), ("idle", idle)):
            for p in proxies:
                listed.setdefault((p.service, p.namespace), []).append((kind, *_facts(p)))
        services = {key: tuple(sorted(items)) for key, items in listed.items()}
        mesh_wide = (tuple(sorted(services)), tuple(sorted(_facts(p) for p in gateways)))
        return cls(services, mesh_wide)

    def changed(self, before: RegistryFacts) -> set[Service] | None:
        """The services whose facts differ from ``before``; None when a mesh-wide one does."""
        if self.mesh_wide != before.mesh_wide:
            return None
        return {key for key in self.services.keys() | before.services.keys()
                if self.services.get(key) != before.services.get(key)}


class ScopeIndex:
    """What a proxy's snapshot can list, as ``builder`` scopes it (its Sidecar, if any)."""

    def __init__(self, builder: SnapshotBuilder) -> None:
        self._builder = builder
        self._scopes: dict[tuple[str, str], Scope | None] = {}

    def scope(self, proxy: ProxyInfo) -> Scope | None:
        """The proxy's scope; None: every service and host."""
        sidecar = self._builder.sidecar(proxy)
        if sidecar is None:
            return None
        key = (sidecar.namespace, sidecar.name)
        if key not in self._scopes:
            spec = sidecar.spec
            self._scopes[key] = (Scope(spec.hosts, sidecar.namespace,
                                       self._builder.mesh.trust_domain)
                                 if isinstance(spec, SidecarSpec) and spec.hosts is not None
                                 else None)
        return self._scopes[key]

    def sees_any(self, proxy: ProxyInfo, services: Set[Service]) -> bool:
        scope = self.scope(proxy)
        return scope is None or any(scope.sees_service(*s) for s in services)

    def sees_resource(self, proxy: ProxyInfo, r: Resource, host: str) -> bool:
        """Whether a Route, DestinationPolicy or ExternalService about ``host`` can be in
        the proxy's snapshot: as the builder scopes each (_by_host, _external), the mesh
        service ``host`` names (in the builder's current names) or the outside host; a policy
        also applies to an outside host declared in another namespace."""
        scope = self.scope(proxy)
        if scope is None:
            return True
        found = (None if isinstance(r.spec, ExternalServiceSpec)
                 else self._builder.names.resolve(host, r.namespace))
        if found is not None and scope.sees_service(*found):
            return True
        if isinstance(r.spec, DestinationPolicySpec):
            return scope.sees_host_anywhere(host)
        return found is None and scope.sees_host(host, r.namespace)


# Kinds that reach only the proxies of their own namespace (their own parts, or their scope).
_NAMESPACE_LOCAL = frozenset({"AuthorizationPolicy", "RequestAuthentication", "Gateway",
                              "Telemetry", "Sidecar"})

Objects = dict[tuple[str, str, str], tuple[int, Resource]]  # key -> (resourceVersion, resource)


def changed_resources(before: Objects, after: Objects) -> list[Resource]:
    """The old and new versions of every resource added, changed or deleted."""
    out: list[Resource] = []
    for key in before.keys() | after.keys():
        old, new = before.get(key), after.get(key)
        if old is None or new is None or old[0] != new[0] or old[1].raw != new[1].raw:
            out.extend(entry[1] for entry in (old, new) if entry is not None)
    return out


def resources_reach(changed: Iterable[Resource], proxies: Mapping[str, ProxyInfo],
                    scopes: ScopeIndex) -> set[str] | None:
    """The proxies (by name) the changed resources reach; None: every proxy."""
    reached: set[str] = set()
    for r in changed:
        spec = r.spec
        if r.kind in _NAMESPACE_LOCAL or isinstance(spec, DestinationPolicySpec):
            reached |= {n for n, p in proxies.items() if p.namespace == r.namespace}
        if r.kind in _NAMESPACE_LOCAL:
            continue
        if isinstance(spec, RouteSpec | DestinationPolicySpec):
            hosts: tuple[str, ...] = (spec.host,)
        elif isinstance(spec, ExternalServiceSpec):
            hosts = spec.hosts
        else:
            return None  # mesh-wide (or unknown): every proxy
        reached |= {n for n, p in proxies.items() if n not in reached
                    and any(scopes.sees_resource(p, r, h) for h in hosts)}
    return reached
