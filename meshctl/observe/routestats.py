"""`meshctl routes SERVICE`: golden metrics per named rule of the service's Routes, plus the rest.

Everything is seen from the callers' side (reporter `source`), where rules are applied: the
named rules' own series (ami_route_*), and one `[unnamed]` row for the requests the callers'
sidecars sent the service otherwise (unnamed rules, no Route, no route at all), computed as
the service's caller-side requests less those its named rules sent it, per response code and
latency bucket. Both are counted by the same sidecar at the same moment with the same
duration, so the difference is exact.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

from meshctl import output
from meshctl.api.hostnames import service_of
from meshctl.controlplane.names import ServiceNames
from meshctl.observe.golden import Golden, Rate, golden
from meshctl.observe.samples import (
    CODE,
    DST,
    GRPC,
    R_CODE,
    R_DST,
    R_GRPC,
    R_ROUTE,
    R_RULE,
)

UNNAMED = "[unnamed]"
_EPSILON = 1e-9  # rates below this are rounding left over from a subtraction


@dataclass(frozen=True, slots=True)
class DeclaredRoute:
    """A Route about the service, as the store holds it: its `namespace/name` (the `route`
    label) and its named rules with their backends (`v1=90,v3=10`)."""

    label: str
    rules: tuple[tuple[str, str], ...]
    unnamed: int  # how many of its rules have no name


def declared_route(resource: Any) -> DeclaredRoute:
    """From a stored Route resource (its raw spec, as `meshctl get` shows it)."""
    spec = resource.raw.get("spec") or {}
    host = str(spec.get("host", ""))
    rules = list(spec.get("rules") or [])
    named = tuple((str(r["name"]), output.weights_text(r.get("backends") or [], host))
                  for r in rules if r.get("name"))
    return DeclaredRoute(f"{resource.namespace}/{resource.name}", named, len(rules) - len(named))


@dataclass(frozen=True, slots=True)
class RouteRow:
    """One named rule (``route`` and ``rule``), or the `[unnamed]` rest (``route`` None)."""

    route: str | None
    rule: str
    golden: Golden
    share: float | None  # of the requests of every row
    backends: str  # as declared; "" for the rest, or a rule no Route in the store has

    def as_json(self) -> dict[str, object]:
        figures = self.golden.as_json()
        figures.pop("mtlsShare")  # the rules' series have no security label
        return {"route": self.route, "rule": self.rule, **figures,
                "share": None if self.share is None else round(self.share, 4),
                "backends": self.backends}


def route_rows(service: str, declared: Sequence[DeclaredRoute], rules: Iterable[Rate],
               callers: Iterable[Rate]) -> list[RouteRow]:
    """The rows for the service whose `destination_service` label is ``service``: each named
    rule of ``declared`` (idle ones too) and any other named rule with requests to it, then
    the `[unnamed]` rest. ``rules``: the named rules' rates; ``callers``: the caller-side
    request rates (both from ScrapeWindow.rule_rates)."""
    own = {d.label for d in declared}
    backends = {(d.label, name): text for d in declared for name, text in d.rules}
    groups: dict[tuple[str, str], list[Rate]] = {key: [] for key in backends}
    landed: list[Rate] = []  # the named rules' requests to this service
    for r in rules:
        if r.key[R_ROUTE] in own or r.key[R_DST] == service:
            groups.setdefault((r.key[R_ROUTE], r.key[R_RULE]), []).append(r)
        if r.key[R_DST] == service:
            landed.append(r)
    rest = remainder(service, [r for r in callers if r.key[DST] == service], landed)
    figures = [((route, rule), golden(rates, R_CODE, R_GRPC, None))
               for (route, rule), rates in sorted(groups.items())]
    rest_figures = golden(rest, R_CODE, R_GRPC, None)
    total = sum(g.rps for _, g in figures) + rest_figures.rps

    def share(g: Golden) -> float | None:
        return g.rps / total if total > 0 else None

    rows = [RouteRow(route, rule, g, share(g), backends.get((route, rule), ""))
            for (route, rule), g in figures]
    rows.append(RouteRow(None, UNNAMED, rest_figures, share(rest_figures), ""))
    return rows


def remainder(service: str, callers: Iterable[Rate], landed: Iterable[Rate]) -> list[Rate]:
    """The caller-side rates of ``service`` less its named rules' (``landed``), per response
    code and grpc-status, as rates of named-rule keys with the rule `[unnamed]`."""
    acc: dict[tuple[str, str], tuple[float, dict[float, float]]] = {}

    def add(code: str, grpc: str, rate: Rate, sign: float) -> None:
        rps, buckets = acc.get((code, grpc), (0.0, {}))
        for le, c in rate.buckets:
            buckets[le] = buckets.get(le, 0.0) + sign * c
        acc[(code, grpc)] = (rps + sign * rate.rps, buckets)

    for r in callers:
        add(r.key[CODE], r.key[GRPC], r, 1.0)
    for r in landed:
        add(r.key[R_CODE], r.key[R_GRPC], r, -1.0)
    return [Rate(("source", service, "", UNNAMED, code, grpc), rps,
                 tuple((le, max(c, 0.0)) for le, c in sorted(buckets.items())))
            for (code, grpc), (rps, buckets) in sorted(acc.items()) if rps > _EPSILON]


def routes_report(service: str, namespace: str, label: str, window: float,
                  declared: Sequence[DeclaredRoute], rules: Iterable[Rate],
                  callers: Iterable[Rate]) -> dict[str, object]:
    """The body of GET /api/v1/routes: the rows, and a message when there is no rule to show
    (no Route about the service, or none of its rules named)."""
    rows = route_rows(label, declared, rules, callers)
    message = None
    if not declared and len(rows) == 1:
        message = (f"no Route for service {service} in namespace {namespace}: its requests "
                   f"are all in `meshctl stat {service}`")
    elif len(rows) == 1:
        names = ", ".join(d.label for d in declared)
        message = (f"Route {names} names none of its rules: give a rule a `name` to see "
                   f"its requests apart (its requests are all in `meshctl stat {service}`)")
    return {"service": service, "namespace": namespace, "window": window,
            "routes": [_route_json(d) for d in declared],
            "rows": [r.as_json() for r in rows], "message": message}


def _route_json(d: DeclaredRoute) -> dict[str, object]:
    return {"route": d.label, "rules": [name for name, _ in d.rules], "unnamedRules": d.unnamed}


def routes_about(resources: Iterable[Any], service: str, namespace: str,
                 names: ServiceNames) -> list[DeclaredRoute]:
    """The stored Routes about the service (however their host spells it, resolved in their
    own namespace as the control plane does, else by the host's form alone)."""
    found = []
    for r in resources:
        host = str((r.raw.get("spec") or {}).get("host", ""))
        if (names.resolve(host, r.namespace) or service_of(host, r.namespace)) == (service,
                                                                                  namespace):
            found.append(declared_route(r))
    return found


def gateway_rules_about(resources: Iterable[Any], service: str, namespace: str,
                        names: ServiceNames) -> list[DeclaredRoute]:
    """The stored Gateways with Route rules sending to the service (a backend naming it, in
    the Gateway's namespace): their `namespace/name` is the `route` label of those rules."""
    found = []
    for r in resources:
        rules = [rule for rule in (r.raw.get("spec") or {}).get("rules") or []
                 if "destination" not in rule and any(
                     names.resolve(str(b.get("service")), r.namespace) == (service, namespace)
                     for b in rule.get("backends") or [])]
        if rules:
            named = tuple((str(rule["name"]), output.weights_text(rule["backends"], ""))
                          for rule in rules if rule.get("name"))
            found.append(DeclaredRoute(f"{r.namespace}/{r.name}", named,
                                       len(rules) - len(named)))
    return found
