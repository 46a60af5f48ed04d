"""The describe-service answer without processes: a store's objects and a registry seen from
one service, matched by the snapshot builder's rules (which Route each namespace's callers
get, live endpoints per subset, inbound policies, the mode's decider, Sidecar scoping)."""

from __future__ import annotations

from typing import Any

from meshctl.api.resources import load_documents
from meshctl.controlplane.describetarget import (
    declared_services,
    external_declaring,
    known_names,
    registered_services,
    unknown_message,
)
from meshctl.controlplane.names import ServiceNames
from meshctl.controlplane.registry import ProxyInfo, Registry
from meshctl.controlplane.servicedescribe import ServiceDescription
from meshctl.controlplane.store import StoredObject

OBJECTS = """\
apiVersion: ami.mesh/v1alpha1
kind: Route
metadata: {name: reviews}
spec: {host: reviews, rules: [{backends: [{subset: v1}]}]}
---
apiVersion: ami.mesh/v1alpha1
kind: Route
metadata: {name: shop-reviews, namespace: shop}
spec: {host: reviews.default, rules: [{backends: [{subset: v2}]}]}
---
apiVersion: ami.mesh/v1alpha1
kind: DestinationPolicy
metadata: {name: reviews}
spec: {host: reviews, subsets: [{name: v1, labels: {version: v1}},
                                {name: v2, labels: {version: v2}}]}
---
apiVersion: ami.mesh/v1alpha1
kind: AuthorizationPolicy
metadata: {name: everyone}
spec: {action: ALLOW, rules: [{from: [{namespaces: [default]}]}]}
---
apiVersion: ami.mesh/v1alpha1
kind: AuthorizationPolicy
metadata: {name: ratings-only}
spec: {selector: {service: ratings}, action: ALLOW, rules: [{from: [{services: [x]}]}]}
---
apiVersion: ami.mesh/v1alpha1
kind: MeshConfig
metadata: {name: default}
spec: {mtls: {mode: PERMISSIVE}}
---
apiVersion: ami.mesh/v1alpha1
kind: Sidecar
metadata: {name: v1-only}
spec: {workloadSelector: {labels: {version: v1}}, egress: [{hosts: ["./*"]}]}
"""


def _registry() -> Registry:
    registry = Registry()
    for name, service, namespace, version, ready in (
            ("reviews-v1", "reviews", "default", "v1", True),
            ("reviews-v2", "reviews", "default", "v2", False),  # registered, not ready
            ("ratings-v1", "ratings", "default", "v1", True),
            ("web-v1", "web", "shop", "v1", True)):
        registry.register(ProxyInfo(name, service, namespace, {"version": version},
                                    inbound=f"127.0.0.1:{len(name)}", ready=ready))
    return registry


def _describe() -> dict[str, Any]:
    objects = [StoredObject(r, n) for n, r in enumerate(load_documents(OBJECTS, "o.yaml"), 1)]
    registry = _registry()
    return ServiceDescription(objects, registry, ("reviews", "default")).as_json(
        [{"name": p.name} for p in registry.proxies()], 7)


def test_each_namespace_gets_its_own_route_for_the_service() -> None:
    """shop's callers get shop's Route for reviews.default, default's get default's."""
    routes = _describe()["routes"]
    assert [(r["name"], r["namespace"], r["callers"]) for r in routes] == [
        ("reviews", "default", ["default"]), ("shop-reviews", "shop", ["shop"])]


def test_subsets_count_live_endpoints_only() -> None:
    """An unready sidecar is an instance but no endpoint of its subset."""
    data = _describe()
    assert [p["name"] for p in data["instances"]] == ["reviews-v1", "reviews-v2"]
    subsets = data["destinationPolicies"][0]["subsets"]
    assert [(s["name"], s["endpoints"]) for s in subsets] == [("v1", ["reviews-v1"]),
                                                              ("v2", [])]


def test_inbound_policies_mtls_and_sidecar_scope() -> None:
    """A namespace-wide AuthorizationPolicy applies, another service's does not; with no
    PeerAuthentication the mesh's mode decides; a Sidecar scopes the sidecars it selects."""
    data = _describe()
    assert [a["name"] for a in data["authorizationPolicies"]] == ["everyone"]
    mtls = data["peerAuthentication"]
    assert mtls["mode"] == "PERMISSIVE" and mtls["decidedBy"] is None
    assert data["sidecars"] == [{"name": "v1-only", "namespace": "default",
                                 "resourceVersion": "7", "proxies": ["reviews-v1"]}]


def test_known_names_close_matches_first() -> None:
    """Registered services as namespace/name and external hosts, the close ones to the name
    asked first."""
    services = registered_services(_registry().proxies())
    assert known_names(services, ["api.example.com"], "webb") == [
        "shop/web", "api.example.com", "default/ratings", "default/reviews"]


def test_unknown_message_suggests_close_names_else_lists_known() -> None:
    """One line: close names as suggestions when there are some, else the known names (at
    most ten), else that the mesh has none."""
    known = known_names({("ratings", "default"), ("reviews", "default")}, [], "ratngs")
    assert unknown_message("ratngs", "default", known).endswith(
        "; did you mean default/ratings?")
    many = [f"default/svc{i:02}" for i in range(12)]
    assert unknown_message("zzz", "default", many).endswith(
        "known services: " + ", ".join(many[:10]) + " (and 2 more)")
    assert unknown_message("x", "default", []).endswith("; the mesh has no services yet")


DECLARED = """apiVersion: ami.mesh/v1alpha1
kind: Route
metadata: {name: details}
spec: {host: details, rules: [{backends: [{subset: v1}]}]}
---
apiVersion: ami.mesh/v1alpha1
kind: DestinationPolicy
metadata: {name: details}
spec: {host: details, subsets: [{name: v1, labels: {version: v1}}]}
---
apiVersion: ami.mesh/v1alpha1
kind: Route
metadata: {name: web, namespace: shop}
spec: {host: web, rules: [{backends: [{service: cart}]}]}
---
apiVersion: ami.mesh/v1alpha1
kind: ExternalService
metadata: {name: github}
spec: {hosts: [api.github.com, "*.example.com"], ports: [{number: 80, protocol: HTTP}]}
---
apiVersion: ami.mesh/v1alpha1
kind: Route
metadata: {name: github}
spec: {host: api.github.com, rules: [{timeout: 2s, backends: [{}]}]}
"""


def _objects(text: str) -> list[StoredObject]:
    return [StoredObject(r, n) for n, r in enumerate(load_documents(text, "o.yaml"), 1)]


def test_declared_services_are_those_objects_name() -> None:
    """A Route's or DestinationPolicy's host and a Route's backends are services; an outside
    host is not."""
    names = ServiceNames(registered_services(_registry().proxies()))
    assert declared_services(_objects(DECLARED), names) == {
        ("details", "default"), ("web", "shop"), ("cart", "shop")}


def test_a_declared_service_without_instances_gets_its_route_and_subsets() -> None:
    """With no sidecar, the Route and DestinationPolicy about it still show, the subset with
    no endpoint."""
    data = ServiceDescription(_objects(DECLARED), _registry(), ("details", "default")).as_json(
        [], 3)
    assert data["kind"] == "mesh" and data["instances"] == []
    assert [(r["name"], r["callers"]) for r in data["routes"]] == [("details", ["default",
                                                                                 "shop"])]
    assert data["destinationPolicies"][0]["subsets"] == [
        {"name": "v1", "labels": {"version": "v1"}, "endpoints": []}]


def test_an_external_host_gets_its_declaration_and_route() -> None:
    """An exact ExternalService host shows its ports, DNS resolution and its Route; a name only
    a wildcard covers gets no Route (they do not apply to wildcards), counted under it."""
    objects = _objects(DECLARED)
    exact = ServiceDescription(objects, _registry(), ("api.github.com", "default"),
                               external_declaring(objects, "api.github.com")).as_json([], 3)
    assert exact["kind"] == "external" and exact["metricsName"] == "api.github.com"
    assert [(e["name"], e["host"], e["resolution"]) for e in exact["externalServices"]] == [
        ("github", "api.github.com", "DNS")]
    assert [r["name"] for r in exact["routes"]] == ["github"]
    wild = ServiceDescription(objects, _registry(), ("a.example.com", "default"),
                              external_declaring(objects, "a.example.com")).as_json([], 3)
    assert wild["metricsName"] == "*.example.com" and wild["routes"] == []
    assert external_declaring(objects, "example.com") == []
