"""Gateway host patterns (`a.example.com`, `*.example.com`, `*`): which covers which, the hosts
a bound Gateway's rules serve (and apply's warnings of those they leave out), and how specific
a pattern is (as Envoy picks virtual hosts)."""

from __future__ import annotations

from collections.abc import Iterable
from typing import TYPE_CHECKING, Any

from meshctl.api.istio.common import istio_path
from meshctl.api.kinds import GatewaySpec

if TYPE_CHECKING:
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


def bound_host_warnings(r: Resource, target: Resource | None) -> list[str]:
    """``meshctl apply``'s warnings of a bound Gateway ``r`` (a VirtualService bound to an
    Istio Gateway), on the fields as written (an Istio VirtualService's `spec.gateways[i]`,
    `spec.hosts[i]`): its Gateway ``target`` not known (Istio's IST0101: the rules apply
    once it is), or rule hosts that Gateway does not serve (Istio's IST0132: such a host is
    simply not served there; a VirtualService of the mesh and a gateway names the mesh's
    short name too). Warnings, not errors, as Istio's: the object applies."""
    spec = r.spec
    if not isinstance(spec, GatewaySpec) or spec.gateway is None:
        return []
    what = f"{r.origin} ({r.kind} {r.namespace}/{r.name})" if r.origin else \
        f"{r.kind} {r.namespace}/{r.name}"
    if target is None:
        return [f"{what}: {istio_path(r.istio_paths, 'spec.gateway')}: Gateway "
                f"{r.namespace}/{spec.gateway} does not exist: its rules apply once it is "
                "applied (Istio's IST0101)"]
    allowed: Any = getattr(target.spec, "hosts", ())
    lines: list[str] = []
    for i, rule in enumerate(spec.rules if allowed else ()):
        for j, host in enumerate(rule.hosts or ("*",)):
            if not served([host], allowed):
                where = istio_path(r.istio_paths, f"spec.rules[{i}].hosts[{j}]"
                                   if rule.hosts else f"spec.rules[{i}]")
                line = (f"{what}: {where}: host {host} is not among the hosts of Gateway "
                        f"{spec.gateway} ({', '.join(allowed)}): that gateway serves it no "
                        "request (Istio's IST0132)")
                if line not in lines:  # (a VirtualService's hosts are each of its rules')
                    lines.append(line)
    return lines
