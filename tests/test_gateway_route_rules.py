"""Gateway rules that carry a Route rule, applied as written at the gateway, with real
processes: `meshctl serve`, a gateway proxy and apps behind their sidecars.

- `web` v1 and v2 (subsets of a DestinationPolicy); web's mesh Route sends everything to v1
  with a response header `x-mesh-route: web`.
- `echo` (an echo app), `flaky` v1 (answers 503) and v2 (answers 200).
- Gateway edge: `split.example.com` -> web v1/v2 50/50 (named `split`), `echo.example.com`
  /api/ rewritten to /v2/, /old redirected (302) to /new, `flaky.example.com` retried on 5xx,
  `web.example.com` -> `destination: web` (web's mesh Route applies there).
"""

from __future__ import annotations

import json
from collections.abc import Iterator

import pytest

from meshctl.api.errors import ValidationError
from meshctl.api.resources import load_documents
from tests import meshbuilder
from tests.helpers_mesh import MeshProcess, wait_for
from tests.proxyharness import Backends, echo_app

pytestmark = pytest.mark.timeout(240)

RESOURCES = """\
apiVersion: ami.mesh/v1alpha1
kind: Gateway
metadata: {name: edge}
spec:
  listen: 127.0.0.1:8080
  rules:
    - name: split
      hosts: [split.example.com]
      backends: [{service: web, subset: v1, weight: 50}, {service: web, subset: v2, weight: 50}]
    - name: api
      hosts: [echo.example.com]
      match: [{path: {prefix: /api/}}]
      rewrite: {uri: /v2/}
      backends: [{service: echo}]
    - name: old
      match: [{path: {prefix: /old}}]
      redirect: {uri: /new, redirectCode: 302}
    - name: retried
      hosts: [flaky.example.com]
      backends: [{service: flaky}]
      retries: {attempts: 2, retryOn: [5xx]}
    - hosts: [web.example.com]
      destination: web
---
apiVersion: ami.mesh/v1alpha1
kind: DestinationPolicy
metadata: {name: web}
spec:
  host: web
  subsets: [{name: v1, labels: {version: v1}}, {name: v2, labels: {version: v2}}]
---
apiVersion: ami.mesh/v1alpha1
kind: Route
metadata: {name: web}
spec:
  host: web
  rules:
    - backends: [{subset: v1}]
      headers: {response: {set: {x-mesh-route: web}}}
"""


class GatewayRuleMesh(meshbuilder.Mesh):
    gateway_proc: MeshProcess

    def call(self, host: str, path: str = "/") -> tuple[int, dict[str, str], bytes]:
        return self.via_gateway(self.gateway_proc, host, path)


@pytest.fixture(scope="module")
def mesh(tmp_path_factory: pytest.TempPathFactory) -> Iterator[GatewayRuleMesh]:
    tmp = tmp_path_factory.mktemp("gwrules")
    backends = Backends()
    with GatewayRuleMesh(tmp) as mesh:
        mesh.defer(backends.close)
        mesh.control_plane(RESOURCES, warmup=0.0)
        mesh.service("web", "v1", "v2")
        mesh.service("flaky", "v1", "v2", status={"v1": 503})
        mesh.sidecar("echo", app=f"127.0.0.1:{backends.aiohttp(echo_app())}")
        mesh.gateway_proc = mesh.gateway("edge-gw")
        mesh.wait_synced()
        wait_for(lambda: mesh.call("web.example.com")[0] == 200, 20, "web through the gateway")
        wait_for(lambda: mesh.call("echo.example.com", "/api/x")[0] == 200, 20, "echo")
        yield mesh


def test_an_inline_rule_splits_by_weight_across_subsets(mesh: GatewayRuleMesh) -> None:
    """Both subsets answer, and web's mesh Route (v1 only, its response header) does not
    apply to a rule written at the gateway: Istio's gateway-bound VirtualService."""
    seen = set()
    for _ in range(60):
        status, headers, body = mesh.call("split.example.com")
        assert status == 200 and "x-mesh-route" not in headers, (status, headers)
        seen.add(body)
    assert seen == {b"web-v1", b"web-v2"}


def test_destination_keeps_the_services_mesh_route(mesh: GatewayRuleMesh) -> None:
    """A `destination:` rule still goes by web's mesh Route (v1 only, its header)."""
    for _ in range(10):
        status, headers, body = mesh.call("web.example.com")
        assert (status, body, headers.get("x-mesh-route")) == (200, b"web-v1", "web")


def test_an_inline_rule_rewrites_the_matched_prefix(mesh: GatewayRuleMesh) -> None:
    """/api/items reaches echo as /v2/items; other paths of the host match no rule."""
    status, _, body = mesh.call("echo.example.com", "/api/items?x=1")
    assert status == 200 and json.loads(body)["path"] == "/v2/items"
    status, headers, _ = mesh.call("echo.example.com", "/other")
    assert (status, headers.get("x-ami-reason")) == (404, "no_route")


def test_an_inline_rule_redirects(mesh: GatewayRuleMesh) -> None:
    """/old/... on any host is answered 302 to /new, forwarded nowhere."""
    status, headers, _ = mesh.call("any.example.com", "/old/page")
    assert status == 302 and headers["location"] == "http://any.example.com/new"


def test_an_inline_rule_retries(mesh: GatewayRuleMesh) -> None:
    """flaky v1 answers 503: retried once on the other endpoint, every request succeeds."""
    before = mesh.metric(mesh.gateway_proc, "ami_retries_total")
    for _ in range(20):
        status, _, body = mesh.call("flaky.example.com")
        assert (status, body) == (200, b"flaky-v2")
    assert mesh.metric(mesh.gateway_proc, "ami_retries_total") > before


def test_named_inline_rules_are_counted_and_shown(mesh: GatewayRuleMesh) -> None:
    """Per-rule metrics name the Gateway as the rule's route; proxy-config lists each rule
    with what it does."""
    mesh.call("split.example.com")
    assert mesh.metric(mesh.gateway_proc, "ami_route_requests_total", route="default/edge",
                       rule="split") >= 1
    out = mesh.meshctl("proxy-config", "edge-gw")
    assert out.returncode == 0, out.stderr
    table = out.stdout.split("GATEWAY RULES", 1)[1]
    rows = [line.split() for line in table.splitlines()[2:7]]
    assert [r[1] for r in rows] == ["split", "api", "old", "retried", "#4"], table
    assert "web/v1 50%, web/v2 50%" in table and "redirect 302 uri=/new" in table
    assert "web (its Route)" in table


@pytest.mark.parametrize(("rule", "path", "message"), [
    ("{destination: web, timeout: 1s}", "spec.rules[0].timeout",
     "a rule with a destination is routed by that service's Route"),
    ("{timeout: 1s}", "spec.rules[0].destination", "or the fields of a Route rule"),
    ("{backends: [{subset: v1}]}", "spec.rules[0].backends[0].service",
     "field is required in a gateway rule"),
    ("{matches: [], backends: [{service: web}]}", "spec.rules[0].matches",
     "a gateway rule's match blocks are its `match`"),
    ("{backends: [{service: web}], retries: {attempts: -1}}", "spec.rules[0].retries.attempts",
     ""),
])
def test_bad_gateway_rules_are_refused_naming_the_field(rule: str, path: str,
                                                        message: str) -> None:
    """A rule mixing destination and Route fields, or a Route rule a gateway cannot place."""
    text = ("apiVersion: ami.mesh/v1alpha1\nkind: Gateway\nmetadata: {name: edge}\n"
            f"spec:\n  listen: 0.0.0.0:8080\n  rules:\n    - {rule}\n")
    with pytest.raises(ValidationError) as caught:
        load_documents(text, "gw.yaml")
    assert f"{path}:" in str(caught.value) and message in str(caught.value), caught.value


def test_describe_lists_an_inline_rule_as_the_services_exposure(mesh: GatewayRuleMesh) -> None:
    """`describe service flaky` counts the Gateway rule whose backend it is."""
    out = mesh.meshctl("describe", "service", "flaky")
    assert out.returncode == 0, out.stderr
    assert "gateway.ami.mesh/edge (namespace default) rule 3: flaky.example.com, *" \
        in out.stdout, out.stdout


def test_routes_lists_a_gateways_named_rule_of_the_service(mesh: GatewayRuleMesh) -> None:
    """`meshctl routes web`: the Gateway's `split` rule is a row of its own, with its
    backends, as a Route's named rule (route = the Gateway's namespace/name)."""
    out = mesh.meshctl("routes", "web", "-o", "json")
    assert out.returncode == 0, out.stderr
    rows = {(r["route"], r["rule"]): r["backends"] for r in json.loads(out.stdout)["rows"]}
    assert rows[("default/edge", "split")] == "web/v1=50,web/v2=50", rows
