"""The describe-service answer without processes: a store's objects and a registry seen from
one service, matched by the snapshot builder's rules (which Route each namespace's callers
get, live endpoints per subset, inbound policies, the mode's decider, Sidecar scoping)."""

from __future__ import annotations

from typing import Any

from meshctl.api.resources import load_documents
from meshctl.controlplane.registry import ProxyInfo, Registry
from meshctl.controlplane.servicedescribe import ServiceDescription, known_services
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


def test_known_services_close_matches_first() -> None:
    """Registered services as namespace/name, the close ones to the name asked first."""
    assert known_services(_registry().proxies(), "webb") == [
        "shop/web", "default/ratings", "default/reviews"]
