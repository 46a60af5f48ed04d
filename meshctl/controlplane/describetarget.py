"""What a ``describe service NAME`` names: a registered service, one the store declares (no
instance yet), a host an ExternalService declares, or nothing (then: the names to suggest).

A service is declared when a Route or DestinationPolicy is about it, a Route sends to it or a
Gateway rule routes to it: traffic is meant for it, so its page has something to say before its
first sidecar registers. (A policy selecting a name alone does not make it a service: that is
how a typo in a selector would look.)
"""

from __future__ import annotations

import difflib
from collections.abc import Iterable, Sequence

from meshctl.api.external import ExternalServiceSpec
from meshctl.api.hostnames import service_of
from meshctl.api.kinds import GatewaySpec, RouteSpec
from meshctl.api.policy import DestinationPolicySpec
from meshctl.controlplane.names import ServiceNames
from meshctl.controlplane.registry import ProxyInfo
from meshctl.controlplane.store import StoredObject

Service = tuple[str, str]  # (name, namespace)
SHOWN = 10  # known names an error line lists when none is close


def registered_services(proxies: Iterable[ProxyInfo]) -> set[Service]:
    return {(p.service, p.namespace) for p in proxies if p.mode == "sidecar"}


def declared_services(objects: Iterable[StoredObject], names: ServiceNames) -> set[Service]:
    """Mesh services the stored objects name, each host read in its object's namespace as the
    control plane does (else by its form alone); outside hosts are not services."""
    found: set[Service | None] = set()
    for o in objects:
        spec, ns = o.resource.spec, o.resource.namespace

        def means(host: str, ns: str = ns) -> Service | None:
            return names.resolve(host, ns) or service_of(host, ns)

        if isinstance(spec, RouteSpec | DestinationPolicySpec):
            found.add(means(spec.host))
        if isinstance(spec, RouteSpec):
            found.update(means(b.service) for rule in spec.rules for b in rule.backends
                         if b.service is not None)
        elif isinstance(spec, GatewaySpec):
            found.update(means(s) for r in spec.rules for s in r.services)
    return {s for s in found if s is not None}


def host_matches(declared: str, host: str) -> bool:
    """Whether an ExternalService host (``api.example.com``, ``*.example.com``) covers
    ``host``."""
    return declared == host or (declared.startswith("*.") and host.endswith(declared[1:])
                                and len(host) > len(declared) - 1)


def external_declaring(objects: Iterable[StoredObject], host: str) -> list[StoredObject]:
    """The ExternalServices (of every namespace: each is in every proxy's view) covering
    ``host``."""
    return [o for o in objects if isinstance(o.resource.spec, ExternalServiceSpec)
            and any(host_matches(h, host) for h in o.resource.spec.hosts)]


def external_hosts(objects: Iterable[StoredObject]) -> set[str]:
    return {h for o in objects if isinstance(o.resource.spec, ExternalServiceSpec)
            for h in o.resource.spec.hosts}


def known_names(services: Iterable[Service], hosts: Iterable[str], name: str) -> list[str]:
    """Services as ``namespace/name`` and external hosts, those close to ``name`` first."""
    entries = sorted({*(f"{ns}/{s}" for s, ns in services), *hosts})
    bare = {e: e.rpartition("/")[2] for e in entries}
    close = difflib.get_close_matches(name, sorted(set(bare.values())),
                                      n=max(len(entries), 1), cutoff=0.6)
    rank = {s: i for i, s in enumerate(close)}
    return sorted(entries, key=lambda e: (rank.get(bare[e], len(rank)), e))


def unknown_message(name: str, namespace: str, known: Sequence[str]) -> str:
    """The one line an unknown name gets: close names if there are any, else what is known."""
    head = (f"no service {name!r} in namespace {namespace}: no sidecar of it is registered "
            "and no Route, DestinationPolicy, Gateway or ExternalService names it")
    return suggest(head, name, known)


def suggest(head: str, name: str, known: Sequence[str]) -> str:
    """``head``, then the known names close to ``name`` (``namespace/name`` entries compared by
    their name), else the known names (the first SHOWN), else that there are none."""
    suggested = close_names(name, known)
    if suggested:
        return f"{head}; did you mean {' or '.join(suggested[:3])}?"
    if not known:
        return f"{head}; the mesh has no services yet"
    more = f" (and {len(known) - SHOWN} more)" if len(known) > SHOWN else ""
    return f"{head}; known services: {', '.join(known[:SHOWN])}{more}"


def close_names(name: str, known: Sequence[str]) -> list[str]:
    """The ``known`` names (``namespace/name`` entries compared by their name) close to
    ``name``, in ``known``'s order."""
    close = set(difflib.get_close_matches(name, [k.rpartition("/")[2] for k in known],
                                          n=max(len(known), 1), cutoff=0.6))
    return [k for k in known if k.rpartition("/")[2] in close]
