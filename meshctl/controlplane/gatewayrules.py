"""The HTTP rules and TLS passthrough entries a gateway proxy gets: its namespace's Gateways'."""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

from meshctl.api.gatewayhosts import served, specificity
from meshctl.api.kinds import GatewaySpec
from meshctl.api.resources import Resource


def gateway_parts(gateways: Iterable[Resource], namespace: str,
                  raw_spec: Callable[[Resource], dict[str, Any]]
                  ) -> tuple[list[Any], list[Any]]:
    """(rules, passthrough entries) of ``namespace``'s Gateways (given in name order).

    The rules of Gateways written as they are (and Istio Gateways' HTTPS redirects) come
    first, in name order, each Gateway's in its order. Then the rules of Gateways bound to
    another (VirtualServices bound to an Istio Gateway), merged as Istio merges them at a
    gateway: one rule per host the bound Gateway serves of it (`served`), the most specific
    host first (Envoy's virtual host choice: exact, `*.suffix`, `*`), then by Gateway name,
    then in order. A Gateway bound to one that does not exist adds nothing (Istio applies no
    VirtualService bound to a missing Gateway)."""
    own = [r for r in gateways if r.namespace == namespace and isinstance(r.spec, GatewaySpec)]
    by_name = {r.name: r.spec for r in own if isinstance(r.spec, GatewaySpec)}
    written: list[Any] = []
    bound: list[tuple[tuple[int, int], str, int, dict[str, Any]]] = []
    passthrough: list[Any] = []
    for r in own:
        assert isinstance(r.spec, GatewaySpec)
        spec = raw_spec(r)
        # an inline rule with its Gateway's name (its per-rule metrics' route)
        rules = [rule if "destination" in rule else {**rule, "gateway": r.name}
                 for rule in spec.get("rules", [])]
        passthrough.extend(spec.get("passthrough", []))
        if r.spec.gateway is None:
            written.extend(rules)
            continue
        target = by_name.get(r.spec.gateway)
        if target is None:
            continue
        for index, rule in enumerate(rules):
            for host in served(rule.get("hosts") or ["*"], target.hosts):
                bound.append((specificity(host), r.name, index, {**rule, "hosts": [host]}))
    bound.sort(key=lambda b: b[:3])
    return written + [rule for *_, rule in bound], passthrough
