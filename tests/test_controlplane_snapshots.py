"""Snapshot builder: deterministic versions, services before routes, authz selection."""

from __future__ import annotations

import json

import yaml

from meshctl.api.resources import Resource, load_documents
from meshctl.controlplane.registry import ProxyInfo
from meshctl.controlplane.snapshots import SnapshotBuilder
from proxy.config import Snapshot
from tests.resources import destination_policy, documents, route

TO_V3 = {"backends": [{"subset": "v3"}]}
# Authorization policies (for reviews, the namespace, ratings) and a Gateway.
OTHERS = """\
apiVersion: ami.mesh/v1alpha1
kind: AuthorizationPolicy
metadata: {name: reviews-only}
spec:
  selector: {service: reviews}
  rules: [{from: [{services: [productpage]}]}]
---
apiVersion: ami.mesh/v1alpha1
kind: AuthorizationPolicy
metadata: {name: namespace-wide}
spec:
  action: DENY
  rules: [{to: [{methods: [DELETE]}]}]
---
apiVersion: ami.mesh/v1alpha1
kind: AuthorizationPolicy
metadata: {name: ratings-only}
spec:
  selector: {service: ratings}
---
apiVersion: ami.mesh/v1alpha1
kind: Gateway
metadata: {name: main}
spec:
  listen: 0.0.0.0:8080
  rules: [{destination: productpage}]
"""


def docs(reviews_route: str = route("reviews", rules=[TO_V3])) -> str:
    """reviews' policy (v1, v3, round robin, 50/s) and ``reviews_route``, then OTHERS."""
    return documents(destination_policy("reviews", ("v1", "v3"), loadBalancer="ROUND_ROBIN",
                                        rateLimit={"requestsPerSecond": 50}),
                     reviews_route, OTHERS)


DOCS = docs()


def resources() -> list[Resource]:
    return load_documents(DOCS, "test.yaml")


def proxy(name: str, service: str, version: str, port: int, mode: str = "sidecar") -> ProxyInfo:
    return ProxyInfo(name=name, service=service, labels={"version": version},
                     inbound=f"127.0.0.1:{port}", admin="127.0.0.1:1", mode=mode, ready=True)


REVIEWS = proxy("reviews-v1-9001", "reviews", "v1", 9001)
PAGE = proxy("productpage-v1-9000", "productpage", "v1", 9000)


def test_version_is_deterministic_and_content_based() -> None:
    """The same inputs in any order give the same bytes and version; other content another."""
    a = SnapshotBuilder(resources(), [REVIEWS, PAGE]).build(PAGE)
    b = SnapshotBuilder(list(reversed(resources())), [PAGE, REVIEWS]).build(PAGE)
    assert a == b and len(a.version) == 12
    c = SnapshotBuilder(resources()[1:], [REVIEWS, PAGE]).build(PAGE)
    assert c.version != a.version


def test_snapshot_parses_in_the_proxy_with_services_before_routes() -> None:
    """The pushed JSON is a valid proxy snapshot; services precede the routes that use them."""
    built = SnapshotBuilder(resources(), [REVIEWS, PAGE]).build(PAGE)
    text = built.data.decode()
    assert text.index('"services"') < text.index('"routes"')
    data = json.loads(text)
    assert "app" not in data and "listeners" not in data
    snap = Snapshot.from_dict(data)
    reviews = snap.services["reviews"]
    assert [e.address.port for e in reviews.endpoints] == [9001]
    assert reviews.endpoints[0].identity == "spiffe://cluster.local/ns/default/sa/reviews"
    assert [s.name for s in reviews.subsets] == ["v1", "v3"]
    assert reviews.policy.load_balancer == "ROUND_ROBIN"
    # The route names subset v3, which has no endpoints: it still applies.
    assert snap.routes["reviews"].rules[0].backends[0].subset == "v3"
    assert reviews.subset("v3") == ()


def test_authorization_selects_own_service_and_namespace_wide() -> None:
    """inbound.authorization holds the policies for this service and the namespace-wide ones."""
    data = json.loads(SnapshotBuilder(resources(), [REVIEWS]).build(REVIEWS).data)
    actions = sorted(p.get("action", "ALLOW") for p in data["inbound"]["authorization"])
    assert actions == ["ALLOW", "DENY"]
    assert data["inbound"]["rateLimit"] == {"requestsPerSecond": 50}
    page = json.loads(SnapshotBuilder(resources(), [REVIEWS]).build(PAGE).data)
    assert [p["action"] for p in page["inbound"]["authorization"]] == ["DENY"]
    assert "rateLimit" not in page["inbound"]


def test_gateway_gets_rules_and_unready_proxies_are_not_endpoints() -> None:
    """A gateway proxy gets the Gateway rules; an unready sidecar is no endpoint."""
    gw = proxy("gw", "ingress", "v1", 8080, mode="gateway")
    unready = ProxyInfo(name="x", service="details", inbound="127.0.0.1:5", ready=False)
    builder = SnapshotBuilder(resources(), [p for p in (REVIEWS, unready) if p.is_endpoint])
    data = yaml.safe_load(builder.build(gw).data)
    assert data["gateway"] == {"rules": [{"destination": "productpage"}]}
    assert "details" not in data["services"]
    assert "gateway" not in json.loads(builder.build(REVIEWS).data)


def test_gateway_gets_the_passthrough_entries_of_every_gateway_of_its_namespace() -> None:
    """TLS passthrough entries of the namespace's Gateways reach its gateway proxies together
    (a Gateway with passthrough alone has no HTTP rule), and parse there; another
    namespace's stay out, and a gateway without any gets no `passthrough` key (its
    snapshot keeps its bytes)."""
    docs = load_documents(DOCS + """\
---
apiVersion: ami.mesh/v1alpha1
kind: Gateway
metadata: {name: tls}
spec:
  listen: 0.0.0.0:8443
  passthrough:
    - {sniHosts: [db.example.com, "*.apps.example.com"], destination: db}
---
apiVersion: ami.mesh/v1alpha1
kind: Gateway
metadata: {name: elsewhere, namespace: other}
spec:
  listen: 0.0.0.0:9443
  passthrough: [{sniHosts: [x.example.com], destination: x}]
""", "test.yaml")
    gw = proxy("gw", "ingress", "v1", 8080, mode="gateway")
    data = json.loads(SnapshotBuilder(docs, [REVIEWS]).build(gw).data)
    assert data["gateway"] == {
        "rules": [{"destination": "productpage"}],
        "passthrough": [{"sniHosts": ["db.example.com", "*.apps.example.com"],
                         "destination": "db"}]}
    entry = Snapshot.from_dict(data).gateway_passthrough[0]
    assert (entry.sni_hosts, entry.destination) == (("db.example.com", "*.apps.example.com"),
                                                     "db")
    plain = json.loads(SnapshotBuilder(resources(), [REVIEWS]).build(gw).data)
    assert "passthrough" not in plain["gateway"]


def test_a_service_whose_sidecars_take_no_traffic_is_listed_without_endpoints() -> None:
    """An idle sidecar (unready, or its app not serving) keeps its service known, with no
    endpoint, so callers get 503 no_healthy_upstream rather than 404 no_route; a gateway
    declares no service, and a service with one serving endpoint keeps only that one."""
    from dataclasses import replace

    app_down = replace(proxy("details-v1", "details", "v1", 9002), app_health="not_serving")
    assert not app_down.is_endpoint and replace(app_down, app_health="serving").is_endpoint
    reviews_v2_down = replace(proxy("reviews-v2", "reviews", "v2", 9003), ready=False)
    gw = proxy("gw", "ingress", "v1", 8080, mode="gateway")
    builder = SnapshotBuilder(resources(), [REVIEWS],
                              idle=[app_down, reviews_v2_down, replace(gw, ready=False)])
    snap = Snapshot.from_dict(json.loads(builder.build(PAGE).data))
    assert snap.services["details"].endpoints == ()
    assert [e.address.port for e in snap.services["reviews"].endpoints] == [9001]
    assert "ingress" not in snap.services


def test_mesh_config_reaches_the_proxy_settings() -> None:
    """MeshConfig's mTLS mode, sampling and OTLP endpoint arrive in the proxy's mesh settings."""
    mesh = load_documents("""\
apiVersion: ami.mesh/v1alpha1
kind: MeshConfig
metadata: {name: default}
spec:
  mtls: {mode: PERMISSIVE}
  tracing: {sampling: 0.25, otlpEndpoint: "jaeger:4317"}
""", "mesh.yaml")
    built = SnapshotBuilder([*resources(), *mesh], [REVIEWS, PAGE]).build(PAGE)
    settings = Snapshot.from_dict(json.loads(built.data)).mesh
    assert (settings.mtls, settings.tracing_sampling, settings.tracing_endpoint) == (
        "PERMISSIVE", 0.25, "jaeger:4317")


def test_a_service_is_tcp_when_all_its_sidecars_declare_tcp() -> None:
    """Sidecars declaring `--app-protocol tcp` make their service `protocol: tcp` in every
    snapshot; while some declare tcp and others not (a rollout), the service stays HTTP and
    only the sidecars that speak HTTP are its endpoints: neither protocol is sent to an app
    that does not speak it."""
    from dataclasses import replace

    db = [replace(proxy(f"db-{v}", "db", v, port), app_protocol="tcp")
          for v, port in (("v1", 9101), ("v2", 9102))]
    snap = Snapshot.from_dict(json.loads(SnapshotBuilder(resources(), db).build(PAGE).data))
    assert snap.services["db"].protocol == "tcp"
    assert [e.address.port for e in snap.services["db"].endpoints] == [9101, 9102]
    mixed = [db[0], replace(db[1], app_protocol="auto")]
    data = json.loads(SnapshotBuilder(resources(), mixed).build(PAGE).data)
    assert "protocol" not in data["services"]["db"]
    assert [e["address"] for e in data["services"]["db"]["endpoints"]] == ["127.0.0.1:9102"]
    idle_http = SnapshotBuilder(resources(), db[:1], idle=[replace(db[1], app_protocol="http1",
                                                                    ready=False)])
    data = json.loads(idle_http.build(PAGE).data)
    assert "protocol" not in data["services"]["db"] and data["services"]["db"]["endpoints"] == []


def test_a_route_with_a_named_rule_carries_its_name() -> None:
    """A Route naming a rule sends its metadata.name (the `route` label of the per-rule
    metrics, with its namespace); one naming none keeps the snapshot's bytes as they were."""
    other = docs(route("reviews", rules=[{"name": "canary", **TO_V3}], name="reviews-split"))
    data = json.loads(SnapshotBuilder(load_documents(other, "t.yaml"), [REVIEWS, PAGE])
                      .build(PAGE).data)
    assert data["routes"] == [{"host": "reviews", "name": "reviews-split",
                               "rules": [{"name": "canary", "backends": [{"subset": "v3"}]}]}]
    assert Snapshot.from_dict(data).routes["reviews"].name == "reviews-split"
    plain = json.loads(SnapshotBuilder(resources(), [REVIEWS, PAGE]).build(PAGE).data)
    assert plain["routes"] == [{"host": "reviews", "rules": [{"backends": [{"subset": "v3"}]}]}]
