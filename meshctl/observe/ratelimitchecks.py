"""``meshctl check`` and ``meshctl apply`` on DestinationPolicy ``rateLimit``s no sidecar enforces.

A service's own sidecars enforce the rate limit of the DestinationPolicy of the service's own
namespace only (meshctl/controlplane/snapshots.py, ``_inbound``): one in namespace `a` for
`api.b` (or for a bare `api` that falls back to `b`'s) is silently ignored, as is one for a
host outside the mesh. Hosts are resolved as the control plane does (controlplane/names.py)
over the registered sidecars, and by their form alone (api/hostnames.py) where none is.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from meshctl.api.hostnames import mesh_form
from meshctl.api.policy import DestinationPolicySpec
from meshctl.controlplane.names import ServiceNames
from meshctl.observe.checks import Check, Group, sidecar_names


@dataclass(frozen=True, slots=True)
class Verdict:
    """Whether one DestinationPolicy's rateLimit is enforced, and if not why and what to do."""

    policy: Any  # the Resource
    enforced: bool
    detail: str
    hint: str = ""


def verdict(policy: Any, names: ServiceNames) -> Verdict:
    """The verdict on ``policy`` (a DestinationPolicy Resource with a rateLimit)."""
    host, ns = policy.spec.host, policy.namespace
    form = mesh_form(host)
    if form is None:
        return Verdict(policy, False, f"{host} is a host outside the mesh, which has no "
                       "sidecar to enforce a rate limit", "remove rateLimit; the rest of this "
                       "policy still applies to the calls to it")
    name, named_ns = form
    found = names.resolve(host, ns)
    home = found[1] if found is not None else named_ns
    if home is not None and home != ns:
        fallback = "" if named_ns is not None else f" (namespace {ns} has none)"
        return Verdict(
            policy, False, f"{host} is service {name} of namespace {home}{fallback}, whose "
            f"sidecars enforce only namespace {home}'s own DestinationPolicy's rateLimit",
            f"set rateLimit in a DestinationPolicy of namespace {home} (host: {name}) and "
            f"remove it here; the rest of this policy still applies to namespace {ns}'s "
            "callers")
    if names.ambiguous(host, ns):
        return Verdict(policy, False, f"{host} names no service from namespace {ns}: it has "
                       f"none, and several other namespaces have a {name}",
                       f"set rateLimit in the DestinationPolicy of the namespace whose {name} "
                       "it is meant for")
    if found is None:
        return Verdict(policy, True, f"for service {name} of namespace {ns} (no sidecar of "
                       "it registered yet)")
    return Verdict(policy, True, f"enforced by the sidecars of {name} in namespace {ns}")


def verdicts(policies: Iterable[Any], proxies: list[dict[str, Any]]) -> list[Verdict]:
    """A verdict for each DestinationPolicy with a rateLimit, in (namespace, name) order."""
    names = sidecar_names(proxies)
    return [verdict(r, names) for r in sorted(policies, key=lambda r: (r.namespace, r.name))
            if isinstance(r.spec, DestinationPolicySpec) and r.spec.policy.rate_limit is not None]


def rate_limit_checks(policies: Iterable[Any], proxies: list[dict[str, Any]]) -> list[Group]:
    """One check per DestinationPolicy with a rateLimit; no group when none has one."""
    checks = [Check(f"DestinationPolicy {v.policy.namespace}/{v.policy.name} rateLimit",
                    "ok" if v.enforced else "warn",
                    v.detail if v.enforced else f"not enforced: {v.detail}", v.hint)
              for v in verdicts(policies, proxies)]
    return [Group("Rate limits", tuple(checks))] if checks else []


def rate_limit_warnings(policies: Iterable[Any], proxies: list[dict[str, Any]]) -> list[str]:
    """``meshctl apply``'s warnings: the applied DestinationPolicies whose rateLimit no
    sidecar enforces."""
    return [f"DestinationPolicy {v.policy.namespace}/{v.policy.name}: spec.rateLimit is not "
            f"enforced: {v.detail}; {v.hint} (see docs/traffic.md#rate-limiting)"
            for v in verdicts(policies, proxies) if not v.enforced]
