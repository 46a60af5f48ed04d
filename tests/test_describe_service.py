"""meshctl describe service and get all against a real control plane, sidecars and apps.

reviews v1 and v2 and ratings v1 run behind their sidecars, productpage's sidecar is the
caller. The store holds what applies to reviews (its Route, DestinationPolicy with a subset v3
that no sidecar serves, an AuthorizationPolicy, the namespace's PeerAuthentication, a
Telemetry, a Gateway rule, productpage's Route sending to it) and what must not show on its
page (an AuthorizationPolicy for ratings, one for reviews in another namespace).
"""

from __future__ import annotations

import json
from collections.abc import Iterator

import pytest

from tests import meshbuilder
from tests.helpers_mesh import http_json, proxies, wait_for
from tests.resources import destination_policy, documents, header_rule, peer_authentication, route

pytestmark = pytest.mark.timeout(180)

# What is particular to this module; the plain documents come from the factories.
CALLERS = """\
apiVersion: ami.mesh/v1alpha1
kind: Route
metadata: {name: productpage}
spec:
  host: productpage
  rules:
    - matches: [{path: {prefix: /reviews}}]
      backends: [{service: reviews, subset: v1}]
    - backends: [{}]
---
apiVersion: ami.mesh/v1alpha1
kind: AuthorizationPolicy
metadata: {name: reviews-callers}
spec: {selector: {service: reviews}, action: ALLOW, rules: [{from: [{services: [productpage]}]}]}
---
apiVersion: ami.mesh/v1alpha1
kind: AuthorizationPolicy
metadata: {name: ratings-callers}
spec: {selector: {service: ratings}, action: ALLOW, rules: [{from: [{services: [reviews]}]}]}
---
apiVersion: ami.mesh/v1alpha1
kind: AuthorizationPolicy
metadata: {name: elsewhere-reviews, namespace: other}
spec: {selector: {service: reviews}, action: DENY, rules: [{from: [{services: [x]}]}]}
"""
REST = """\
apiVersion: ami.mesh/v1alpha1
kind: PeerAuthentication
metadata: {name: reviews-v2}
spec: {selector: {matchLabels: {app: reviews, version: v2}}, mtls: {mode: STRICT}}
---
apiVersion: ami.mesh/v1alpha1
kind: Telemetry
metadata: {name: logs}
spec: {accessLogging: [{}]}
---
apiVersion: ami.mesh/v1alpha1
kind: Gateway
metadata: {name: ingress}
spec:
  listen: 127.0.0.1:8080
  rules: [{match: [{path: {prefix: /api/reviews}}], destination: reviews},
          {destination: productpage}]
"""
RESOURCES = documents(
    destination_policy("reviews", ("v1", "v2", "v3"), loadBalancer="ROUND_ROBIN",
                       outlierDetection={"consecutive5xxErrors": 3}),
    route("reviews", {"v1": 90, "v2": 10}, rules=[header_rule("v2", name="jason")]),
    CALLERS, peer_authentication("default", "PERMISSIVE"), REST)


class Mesh(meshbuilder.Mesh):
    """The processes and a way to run meshctl against their control plane."""

    bare_env = True

    def build(self) -> Mesh:
        self.control_plane(RESOURCES, warmup=0.0, args=("--scrape-interval", "0.25"))
        self.service("reviews", "v1", "v2")
        self.service("ratings", "v1")
        self.client = self.sidecar("productpage")
        # each sidecar's name in the registry by service-version
        self.named = {p.info["name"].rsplit("-", 1)[0]: p.info["name"] for p in self.sidecar_procs}
        return self

    def call(self, headers: dict[str, str] | None = None) -> tuple[int, bytes]:
        return self.get(self.client, "reviews", headers=headers)


@pytest.fixture(scope="module")
def mesh(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Mesh]:
    with Mesh(tmp_path_factory.mktemp("describe")) as m:
        m.build().wait_synced()
        wait_for(lambda: m.call()[0] == 200, 20, "reviews reachable")
        yield m


def _section(page: str, title: str) -> str:
    """The lines of one section of the page: its title line and the indented ones after."""
    lines = page.splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith(title))
    end = next((i for i in range(start + 1, len(lines)) if not lines[i].startswith(" ")),
               len(lines))
    return "\n".join(lines[start:end])


def test_page_names_what_applies_to_the_service(mesh: Mesh) -> None:
    """The page lists reviews' sidecars, its Route's rules, its subsets with their live
    endpoints (v3: none, flagged), its own AuthorizationPolicy only, the effective mTLS mode
    and the object deciding it (v2's own selector), the Gateway rule and productpage's Route
    sending to it."""
    out = mesh.meshctl("describe", "service", "reviews")
    assert out.returncode == 0, out.stderr
    page = out.stdout
    instances = _section(page, "Instances:")
    assert mesh.named["reviews-v1"] in instances and mesh.named["reviews-v2"] in instances
    assert mesh.named["ratings-v1"] not in instances and "SYNCED" in instances
    routes = _section(page, "Routes:")
    assert "route.ami.mesh/reviews (namespace default, version " in routes
    assert "[jason] headers end-user exact=jason -> v2 100%" in routes
    assert "* -> v1 90%, v2 10%" in routes
    assert ("route.ami.mesh/productpage (namespace default, version" in routes
            and "path prefix=/reviews -> reviews/v1 100%" in routes)
    policy = _section(page, "Destination Policy:").splitlines()
    rows = {line.split()[0]: line for line in policy
            if line.split()[:1] in (["v1"], ["v2"], ["v3"])}
    assert rows["v1"].split()[1:] == ["version=v1", "1"]
    assert rows["v2"].split()[1:] == ["version=v2", "1"]
    assert rows["v3"].split()[1:3] == ["version=v3", "0"]
    assert rows["v3"].endswith("WARNING: selects no live endpoint")
    assert "loadBalancer: ROUND_ROBIN" in "\n".join(policy)
    authz = _section(page, "Authorization:")
    assert "reviews-callers" in authz
    assert "ratings-callers" not in authz and "elsewhere-reviews" not in authz
    mtls = _section(page, "mTLS:")
    assert mtls.startswith("mTLS:              PERMISSIVE, decided by "
                           "peerauthentication.ami.mesh/default")
    v1_row = next(line for line in mtls.splitlines() if mesh.named["reviews-v1"] in line)
    v2_row = next(line for line in mtls.splitlines() if mesh.named["reviews-v2"] in line)
    assert "PERMISSIVE" in v1_row and "STRICT" in v2_row and "reviews-v2" in v2_row.split()[-1]
    assert "telemetry.ami.mesh/logs: namespace-wide" in _section(page, "Telemetry:")
    assert "gateway.ami.mesh/ingress (namespace default) rule 0: any host, path prefix=" \
           "/api/reviews" in _section(page, "Exposure:")


def test_json_output_is_the_gathered_data(mesh: Mesh) -> None:
    """-o json prints the data the page is made of: endpoints per subset by proxy name, and
    the Route about the service with the namespaces whose callers get it."""
    out = mesh.meshctl("describe", "svc", "reviews", "-o", "json")
    assert out.returncode == 0, out.stderr
    data = json.loads(out.stdout)
    assert {p["name"] for p in data["instances"]} == {mesh.named["reviews-v1"],
                                                      mesh.named["reviews-v2"]}
    subsets = {s["name"]: s["endpoints"] for s in
               data["destinationPolicies"][0]["subsets"]}
    assert subsets == {"v1": [mesh.named["reviews-v1"]], "v2": [mesh.named["reviews-v2"]],
                       "v3": []}
    by_host = [r for r in data["routes"] if r["via"] == "host"]
    assert [(r["name"], r["callers"]) for r in by_host] == [("reviews", ["default", "other"])]
    assert [a["name"] for a in data["authorizationPolicies"]] == ["reviews-callers"]
    assert data["peerAuthentication"]["decidedBy"] == "default"


def test_metrics_per_version_once_there_is_traffic(mesh: Mesh) -> None:
    """With requests to reviews the page shows its golden metrics per version; ratings, never
    called, says it has no traffic."""
    def metrics_rows() -> str | None:
        for _ in range(5):
            assert mesh.call()[0] == 200
            assert mesh.call({"end-user": "jason"})[0] == 200
        page = mesh.meshctl("describe", "service", "reviews").stdout
        section = _section(page, "Metrics")
        versions = {line.split()[0] for line in section.splitlines()[2:]}
        return section if {"v1", "v2"} <= versions else None

    section = wait_for(metrics_rows, 60, "reviews' metrics per version", interval=0.2)
    assert section.startswith("Metrics (last 30s):") and "100.00%" in section
    ratings = mesh.meshctl("describe", "service", "ratings")
    assert ratings.returncode == 0, ratings.stderr
    assert "Metrics:           no traffic in the last 30s" in ratings.stdout


def test_unknown_service_lists_the_known_ones_close_first(mesh: Mesh) -> None:
    """An unknown service is one error line suggesting the close names; the API lists every
    known one, close matches first."""
    out = mesh.meshctl("describe", "service", "ratngs")
    assert out.returncode == 1 and out.stdout == ""
    assert out.stderr == ("error: no service 'ratngs' in namespace default: no sidecar of it "
                          "is registered and no Route, DestinationPolicy, Gateway or "
                          "ExternalService names it; did you mean default/ratings?\n")
    status, body = http_json(mesh.cp.info["api"] + "/api/v1/services/other/reviews/describe")
    assert status == 404 and body["reason"] == "NotFound" and body["known"][0] == \
        "default/reviews"


def test_get_all_lists_each_applied_kind(mesh: Mesh) -> None:
    """get all prints a table per kind holding objects, in the Kinds table's order, objects
    named as kubectl names them; -A adds the other namespace's; -o json is one List; a NAME
    is refused; an empty namespace says so."""
    out = mesh.meshctl("get", "all")
    assert out.returncode == 0, out.stderr
    tables = out.stdout.split("\n\n")
    firsts = [t.splitlines()[1].split()[0] for t in tables]
    assert firsts == ["route.ami.mesh/productpage", "destinationpolicy.ami.mesh/reviews",
                      "authorizationpolicy.ami.mesh/ratings-callers",
                      "peerauthentication.ami.mesh/default", "gateway.ami.mesh/ingress",
                      "telemetry.ami.mesh/logs"]
    assert all(t.startswith("NAME ") for t in tables)
    assert "route.ami.mesh/reviews " in tables[0]
    assert "elsewhere-reviews" not in out.stdout
    every = mesh.meshctl("get", "all", "-A")
    assert every.returncode == 0 and every.stdout.startswith("NAMESPACE ")
    assert "other       authorizationpolicy.ami.mesh/elsewhere-reviews" in every.stdout
    listed = json.loads(mesh.meshctl("get", "all", "-o", "json").stdout)
    assert listed["kind"] == "List" and [d["kind"] for d in listed["items"]] == [
        "Route", "Route", "DestinationPolicy", "AuthorizationPolicy", "AuthorizationPolicy",
        "PeerAuthentication", "PeerAuthentication", "Gateway", "Telemetry"]
    named = mesh.meshctl("get", "all", "reviews")
    assert (named.returncode, named.stderr) == (2, "error: `get all` takes no NAME\n")
    empty = mesh.meshctl("get", "all", "-n", "nowhere")
    assert (empty.returncode, empty.stdout, empty.stderr) == (
        0, "", "No resources found in namespace nowhere.\n")


def test_the_ingress_gateway_is_named_as_such(mesh: Mesh) -> None:
    """`proxy-status` lists the gateway under service `gateway`: `describe svc gateway` says
    it is the ingress gateway, its proxy, and where to look instead (not 'no service')."""
    gateway = mesh.gateway("gateway-1")
    try:
        wait_for(lambda: any(p["name"] == "gateway-1" for p in proxies(mesh.cp)), 20,
                 "the gateway registered")
        out = mesh.meshctl("describe", "svc", "gateway")
        assert (out.returncode, out.stdout) == (1, ""), out
        assert out.stderr == (
            "error: 'gateway' in namespace default is the ingress gateway (proxies: "
            "gateway-1), not a mesh service: no sidecar, Route or policy takes traffic for "
            "it. Its rules: meshctl describe gateway ingress; its proxies: meshctl "
            "proxy-status; what it sends: meshctl stat --from gateway\n"), out.stderr
        assert mesh.meshctl("stat", "--from", "gateway").returncode == 0
    finally:
        gateway.stop()
