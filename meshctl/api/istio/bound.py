"""A VirtualService bound to Istio Gateways -> per Gateway, an Ami Gateway of its http routes."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from meshctl.api.fields import Fields
from meshctl.api.hostnames import service_of
from meshctl.api.istio.common import Translation, ami_doc


def gateway_rules(f: Fields, rules: list[dict[str, Any]], http: list[tuple[str, Any]],
                  namespace: str) -> list[dict[str, Any]]:
    """The http routes (as Route rules) as gateway rules: Route rules written at the
    gateway, since Istio applies a bound VirtualService's routes as written there (the
    destination's own mesh VirtualService does not apply), each backend and mirror naming
    its service, as a gateway rule has no host to default to."""
    out = []
    for index, rule in enumerate(rules):
        rule = dict(rule)
        where = http[index][0]
        if "matches" in rule:
            rule["match"] = rule.pop("matches")
        if "backends" in rule:
            rule["backends"] = [_named(f, b, f"{where}.route[{j}].destination.host", namespace)
                                for j, b in enumerate(rule["backends"])]
        if "mirror" in rule:
            rule["mirror"] = _named(f, rule["mirror"], f"{where}.mirror.host", namespace)
        out.append(rule)
    return out


def _named(f: Fields, target: Mapping[str, Any], where: str,
           namespace: str) -> dict[str, Any]:
    """A backend or mirror with its service named (`_host` resolved)."""
    out = dict(target)
    host = out.pop("_host", None)
    if host is None:
        return out
    found = service_of(host, namespace)
    if found is None or found[1] != namespace:
        if not any(i.path == where for i in f.issues):  # (unless _target refused it)
            f.add(where, f"not supported by Ami: destination {host!r} at a gateway, which "
                         f"sends requests to the services of its own namespace ({namespace})")
        return out
    return {"service": found[0], **out}


def bound_gateway(meta: Mapping[str, Any], name: str, gateway: str, where: str,
                  hosts: list[str], rules: list[dict[str, Any]],
                  paths: list[tuple[str, str]], origin: str) -> Translation:
    """The Ami Gateway `<gateway>.<name>` bound to Istio Gateway ``gateway``: the rules with
    the VirtualService's hosts (`*`: any), owned by the VirtualService (its `delete -f`
    removes it, a new apply replaces it). Named apart from the VirtualService: an Ami
    Gateway of its name (the demo's `bookinfo`) is another object."""
    spec = {"gateway": gateway, "rules": [{"hosts": hosts, **rule} for rule in rules]}
    t = Translation(ami_doc("Gateway", {**meta, "name": f"{gateway}.{name}"}, spec, origin),
                    origin)
    t.at("metadata.name", "metadata.name")
    t.at("spec.gateway", where)
    t.at("spec.rules", "spec.http")
    for ami, istio in paths:
        t.at(ami.replace(".matches", ".match"), istio)
    for i in range(len(rules)):
        t.at(f"spec.rules[{i}].hosts", "spec.hosts")
    return t
