"""What a Canary steps, found among stored documents: its Route, the rule's split and the
subsets its service's DestinationPolicies define (the controller and `meshctl check` alike)."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from meshctl.api.canary import CanarySpec
from meshctl.canary.meshtarget import current_split
from meshctl.commands.shift import ShiftRefused, about_service

Doc = dict[str, Any]


def find_route(spec: CanarySpec, namespace: str, routes: Iterable[Doc]) -> Doc | None:
    """The Route named ``spec.route``, or the namespace's first Route for the service (as
    `meshctl shift` picks it); None when there is none, or the named one is another host's."""
    about = about_service(spec.service, namespace)
    for route in routes:
        if (spec.route is None or route["metadata"]["name"] == spec.route) and about(route):
            return route
    return None


def subsets(spec: CanarySpec, namespace: str, policies: Iterable[Doc]) -> list[Doc]:
    """The subsets (``{name, labels}``) the service's DestinationPolicies define."""
    about = about_service(spec.service, namespace)
    return [dict(s) for p in policies if about(p) for s in (p["spec"].get("subsets") or [])]


def problems(spec: CanarySpec, namespace: str, routes: Iterable[Doc],
             policies: Iterable[Doc]) -> list[str]:
    """Why the Canary cannot run now, in words (empty: it can)."""
    route = find_route(spec, namespace, routes)
    if route is None:
        named = f"Route {spec.route}" if spec.route else "Route"
        return [f"no {named} for service {spec.service} in namespace {namespace}"]
    out: list[str] = []
    try:
        current_split(route, spec.rule)
    except ShiftRefused as exc:
        out.append(str(exc))
    names = {str(s.get("name")) for s in subsets(spec, namespace, policies)}
    out += [f"subset '{s}' of {spec.service} is not defined by a DestinationPolicy"
            for s in (spec.stable, spec.canary) if s not in names]
    return out
