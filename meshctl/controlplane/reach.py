"""Which proxies a registry change reaches: a diff of what snapshots read from the registry.

A pass compares the registry as its SnapshotBuilder sees it with what the previous pass saw,
per service: a change to a service's endpoints (one registering, turning ready, its app failing
its probe, leaving) reaches the proxies whose Sidecar scope lists that service (all, without
a Sidecar). Whatever every snapshot reads is mesh-wide: the set of services (it decides how
each proxy names them, meshctl.controlplane.names) and the gateways (trusted XFCC peers); a
change there reaches every proxy. The diff is of the inputs themselves, not of events, so a
change no event described is not missed; a field of ProxyInfo is compared unless it is known
never to reach a snapshot (certificate dates, addresses other than inbound, tokens, versions:
a certificate renewal reaches nobody).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Set
from dataclasses import dataclass, fields
from typing import Any

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
    """Whether a proxy's snapshot lists a service, as ``builder`` scopes it (Sidecar)."""

    def __init__(self, builder: SnapshotBuilder) -> None:
        self._builder = builder
        self._scopes: dict[tuple[str, str], Scope | None] = {}

    def sees_any(self, proxy: ProxyInfo, services: Set[Service]) -> bool:
        sidecar = self._builder.sidecar(proxy)
        if sidecar is None:
            return True  # no Sidecar: every service
        key = (sidecar.namespace, sidecar.name)
        if key not in self._scopes:
            spec = sidecar.spec
            self._scopes[key] = (Scope(spec.hosts, sidecar.namespace,
                                       self._builder.mesh.trust_domain)
                                 if isinstance(spec, SidecarSpec) and spec.hosts is not None
                                 else None)
        scope = self._scopes[key]
        return scope is None or any(scope.sees_service(*s) for s in services)
