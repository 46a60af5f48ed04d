"""Fields naming a service nothing knows (Istio's IST0101 ReferencedResourceNotFound):
``meshctl check``'s "Service references" group and ``meshctl apply``'s warnings.

A name is known when a sidecar or gateway of it is registered, an ExternalService host covers
it, or another object declares it: a Route's host, a DestinationPolicy's host, a Gateway
rule's destination (an object never declares what it names itself, else a typo would vouch for
itself). Names are resolved as the control plane does (controlplane/names.py).
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import Any

from meshctl.api.authn import RequestAuthenticationSpec
from meshctl.api.authz import AuthorizationPolicySpec
from meshctl.api.external import ExternalServiceSpec
from meshctl.api.hostnames import service_of
from meshctl.api.istio.common import istio_path
from meshctl.api.kinds import GatewaySpec, RouteSpec
from meshctl.api.policy import DestinationPolicySpec
from meshctl.api.rules import Rule
from meshctl.controlplane.describetarget import close_names, host_matches, known_names
from meshctl.controlplane.names import ServiceNames

Service = tuple[str, str]  # (name, namespace)
# The kinds whose fields name services (apply asks for the stored ones only then).
NAMING = (RouteSpec, DestinationPolicySpec, GatewaySpec, AuthorizationPolicySpec,
          RequestAuthenticationSpec)
# The kinds that name or declare services: the objects these checks read.
KINDS = ("Route", "DestinationPolicy", "Gateway", "ExternalService", "AuthorizationPolicy",
         "RequestAuthentication")


@dataclass(frozen=True, slots=True)
class Unknown:
    """One field of ``resource`` (a Resource) naming ``name``, which nothing knows."""

    resource: Any
    path: str  # the Ami field path
    name: str
    close: tuple[str, ...]  # known names close to it (`namespace/name` or hosts)

    @property
    def field(self) -> str:
        """The field's path in the document as written (an Istio one's own path)."""
        return istio_path(self.resource.istio_paths, self.path)


def _names(spec: Any) -> Iterator[tuple[str, str, bool]]:
    """(field path, name, whether a selector) of every service ``spec`` names."""
    if isinstance(spec, RouteSpec | DestinationPolicySpec):
        yield "spec.host", spec.host, False
    if isinstance(spec, RouteSpec):
        for i, rule in enumerate(spec.rules):
            yield from _rule_names(f"spec.rules[{i}]", rule)
    elif isinstance(spec, GatewaySpec):
        for i, gateway_rule in enumerate(spec.rules):
            if gateway_rule.destination is not None:
                yield f"spec.rules[{i}].destination", gateway_rule.destination, False
            elif gateway_rule.rule is not None:  # a Route rule written in the Gateway
                yield from _rule_names(f"spec.rules[{i}]", gateway_rule.rule)
    elif isinstance(spec, AuthorizationPolicySpec | RequestAuthenticationSpec) \
            and spec.service is not None:
        yield "spec.selector.service", spec.service, True


def _rule_names(path: str, rule: Rule) -> Iterator[tuple[str, str, bool]]:
    """The services a Route rule (of a Route or a Gateway, at ``path``) sends to or mirrors to."""
    for j, backend in enumerate(rule.backends):
        if backend.service is not None:
            yield f"{path}.backends[{j}].service", backend.service, False
    if rule.mirror is not None and rule.mirror.service is not None:
        yield f"{path}.mirror.service", rule.mirror.service, False


def _declares(resource: Any, names: ServiceNames) -> set[Service]:
    """The services ``resource`` declares: a Route's or DestinationPolicy's host, a Gateway
    rule's destination or backends (as controlplane/describetarget.py reads them)."""
    spec, ns = resource.spec, resource.namespace
    hosts = ([spec.host] if isinstance(spec, RouteSpec | DestinationPolicySpec)
             else [svc for r in spec.rules for svc in r.services] if isinstance(spec, GatewaySpec)
             else [])
    return {s for h in hosts if (s := names.resolve(h, ns) or service_of(h, ns)) is not None}


def unknown_references(checked: Iterable[Any], objects: Iterable[Any],
                       proxies: list[dict[str, Any]]) -> list[Unknown]:
    """The fields of the ``checked`` Resources naming what nothing knows; ``objects``: every
    Resource that may declare a name (the checked ones included), ``proxies``: the
    registered proxies as ``/api/v1/proxies`` lists them."""
    registered = {(str(p["service"]), str(p.get("namespace") or "default"))
                  for p in proxies if p.get("service")}
    by_key = {r.key: r for r in objects}
    hosts = {h for r in by_key.values() if isinstance(r.spec, ExternalServiceSpec)
             for h in r.spec.hosts}
    base = ServiceNames(registered)
    declared = {key: _declares(r, base) for key, r in by_key.items()}
    counts = Counter(s for found in declared.values() for s in found)
    found: list[Unknown] = []
    for resource in checked:
        own = declared.get(resource.key) or _declares(resource, base)
        services = registered | {s for s, n in counts.items() if n > (s in own)}
        known = ServiceNames(services)
        for path, name, selector in _names(resource.spec):
            ns = resource.namespace
            if ((name, ns) in services if selector else known.resolve(name, ns) is not None
                    or any(host_matches(h, name) for h in hosts)):
                continue
            entries = known_names(services if not selector else
                                  {s for s in services if s[1] == ns}, () if selector else hosts,
                                  name)
            found.append(Unknown(resource, path, name, tuple(close_names(name, entries))))
    return found


def reference_warnings(unknown: Iterable[Unknown]) -> list[str]:
    """``meshctl apply``'s warnings: one per field, the object and its field path."""
    lines = []
    for u in unknown:
        r = u.resource
        what = f"{r.origin} ({r.kind} {r.namespace}/{r.name})" if r.origin else \
            f"{r.kind} {r.namespace}/{r.name}"
        close = f"; did you mean {' or '.join(u.close[:3])}?" if u.close else ""
        lines.append(f"{what}: {u.field} {u.name!r} names no known service (no sidecar of it "
                     "is registered and no Route, DestinationPolicy, Gateway or "
                     f"ExternalService declares it){close}")
    return lines
