"""Gateway host patterns (`a.example.com`, `*.example.com`, `*`): which covers which, the hosts
a bound Gateway's rules serve, and how specific a pattern is (as Envoy picks virtual hosts)."""

from __future__ import annotations

from collections.abc import Iterable
from typing import TYPE_CHECKING, Any

from meshctl.api.errors import Issue

if TYPE_CHECKING:
    from meshctl.api.kinds import GatewaySpec
    from meshctl.api.resources import Resource


def covers(pattern: str, host: str) -> bool:
    """Whether every name ``host`` stands for (itself a pattern) is one ``pattern`` takes."""
    if pattern in ("*", host):
        return True
    return pattern.startswith("*.") and host != "*" and host.endswith(pattern[1:])


def served(hosts: Iterable[str], allowed: Iterable[str]) -> list[str]:
    """The part of ``hosts`` that ``allowed`` (a Gateway's hosts; none: any) admits, as Istio
    intersects a VirtualService's hosts with its Gateway's: `*` bound to a Gateway of
    `a.example.com` serves `a.example.com`; a host no pattern overlaps serves nothing."""
    gateway = list(allowed)
    if not gateway:
        return list(dict.fromkeys(hosts))
    out: list[str] = []
    for host in hosts:
        for pattern in gateway:
            if covers(pattern, host):
                out.append(host)
            elif covers(host, pattern):
                out.append(pattern)
    return list(dict.fromkeys(out))


def specificity(host: str) -> tuple[int, int]:
    """Sort key of Envoy's virtual host choice: exact names, then `*.suffix` (longest
    suffix first), then `*`."""
    if host == "*":
        return (2, 0)
    if host.startswith("*."):
        return (1, -len(host))
    return (0, 0)


def bound_host_issues(r: Resource, spec: GatewaySpec, target: Resource | None) -> list[Issue]:
    """A bound Gateway's rule hosts outside its Gateway's hosts (Istio requires a
    VirtualService's hosts to be within its Gateway's); none when that Gateway is not
    known here (it may come later: until then its rules are not applied)."""
    allowed: Any = getattr(target.spec, "hosts", ()) if target is not None else ()
    if not allowed:
        return []
    issues = []
    for i, rule in enumerate(spec.rules):
        for j, host in enumerate(rule.hosts or ("*",)):
            if not served([host], allowed):
                where = f"spec.rules[{i}].hosts[{j}]" if rule.hosts else f"spec.rules[{i}]"
                issues.append(Issue(r.source, r.doc, where, (
                    f"host {host} is not among the hosts of Gateway {spec.gateway} "
                    f"({', '.join(allowed)}): no request for it would reach this rule")))
    return issues
