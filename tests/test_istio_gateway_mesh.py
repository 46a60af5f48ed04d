"""Istio's ingress YAML applied as written to a real mesh: `meshctl serve`, a gateway proxy,
productpage (answers its name) and httpbin (an echo app) behind their sidecars.

Istio's bookinfo-gateway.yaml routes the pages it lists to productpage and nothing else; the
httpbin ingress task's Gateway and VirtualService route httpbin.example.com's /status and
/delay to httpbin, by host; `delete -f` removes what each file made."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests import meshbuilder
from tests.helpers_mesh import ROOT, MeshProcess, wait_for
from tests.istio_ingress import BOOKINFO_GATEWAY, HTTPBIN_GATEWAY
from tests.proxyharness import Backends, echo_app

pytestmark = pytest.mark.timeout(240)


class IngressMesh(meshbuilder.Mesh):
    gateway_proc: MeshProcess

    def call(self, path: str, host: str = "bookinfo.example.com"
             ) -> tuple[int, dict[str, str], bytes]:
        return self.via_gateway(self.gateway_proc, host, path)

    def applied(self, name: str, text: str, *args: str) -> str:
        """`meshctl apply -f` of ``text`` written as ``name``; its output."""
        path = self.tmp / name
        path.write_text(text)
        done = self.meshctl("apply", "-f", str(path), *args)
        assert done.returncode == 0, done.stdout + done.stderr
        return done.stdout


@pytest.fixture(scope="module")
def mesh(tmp_path_factory: pytest.TempPathFactory) -> Iterator[IngressMesh]:
    tmp = tmp_path_factory.mktemp("istioingress")
    backends = Backends()
    with IngressMesh(tmp) as mesh:
        mesh.defer(backends.close)
        mesh.control_plane(warmup=0.0)
        mesh.service("productpage", "v1")
        mesh.sidecar("httpbin", app=f"127.0.0.1:{backends.aiohttp(echo_app())}")
        mesh.gateway_proc = mesh.gateway("ingress-gw")
        mesh.wait_synced()
        yield mesh


def test_istios_bookinfo_gateway_yaml_routes_the_pages_it_lists(mesh: IngressMesh) -> None:
    """diff shows what apply makes; apply makes it; describe names the Istio document;
    requests reach productpage for the pages listed, 404 no_route otherwise; delete -f
    removes both Gateways."""
    (mesh.tmp / "bookinfo-gateway.yaml").write_text(BOOKINFO_GATEWAY)
    diff = mesh.meshctl("diff", "-f", str(mesh.tmp / "bookinfo-gateway.yaml"))
    assert "+++ Gateway default/bookinfo-gateway.bookinfo (after apply)" in diff.stdout, diff
    out = mesh.applied("bookinfo-gateway.yaml", BOOKINFO_GATEWAY)
    assert "gateway.networking.istio.io/bookinfo-gateway -> gateway.ami.mesh/bookinfo-gateway" \
        in out, out
    wait_for(lambda: mesh.call("/productpage")[0] == 200, 20, "productpage via the gateway")
    status, _, body = mesh.call("/productpage")
    assert (status, body) == (200, b"productpage-v1")
    assert mesh.call("/api/v1/products/1", host="anything.example")[2] == b"productpage-v1"
    status, headers, _ = mesh.call("/reviews")
    assert (status, headers.get("x-ami-reason")) == (404, "no_route")
    listed = mesh.meshctl("get", "gateways")
    assert listed.returncode == 0, listed.stderr
    names = [line.split()[0] for line in listed.stdout.splitlines()[1:]]
    assert names == ["bookinfo-gateway", "bookinfo-gateway.bookinfo"], listed.stdout
    described = mesh.meshctl("describe", "gateway", "bookinfo-gateway.bookinfo")
    assert described.returncode == 0, described.stderr
    assert "virtualservice.networking.istio.io/bookinfo" in described.stdout, described.stdout

    done = mesh.meshctl("delete", "-f", str(mesh.tmp / "bookinfo-gateway.yaml"))
    assert done.returncode == 0, done.stderr
    wait_for(lambda: mesh.call("/productpage")[0] == 404, 20, "the rules gone")
    listed = mesh.meshctl("get", "gateways")
    assert "bookinfo" not in listed.stdout + listed.stderr, listed


def test_the_httpbin_ingress_task_routes_by_host(mesh: IngressMesh) -> None:
    """httpbin.example.com's /status and /delay reach httpbin; other hosts and paths 404."""
    mesh.applied("httpbin-gateway.yaml", HTTPBIN_GATEWAY)
    wait_for(lambda: mesh.call("/status/200", host="httpbin.example.com")[0] == 200, 20,
             "httpbin via the gateway")
    status, _, body = mesh.call("/delay/1", host="httpbin.example.com:8080")
    assert status == 200 and json.loads(body)["path"] == "/delay/1"
    for host, path in (("other.example.com", "/status/200"), ("httpbin.example.com", "/get")):
        status, headers, _ = mesh.call(path, host=host)
        assert (status, headers.get("x-ami-reason")) == (404, "no_route"), (host, path)
    done = mesh.meshctl("delete", "-f", str(mesh.tmp / "httpbin-gateway.yaml"))
    assert done.returncode == 0, done.stderr
    wait_for(lambda: mesh.call("/status/200", host="httpbin.example.com")[0] == 404, 20,
             "the rules gone")


def test_beside_the_demos_gateway_istios_file_applies_without_a_clash(
        mesh: IngressMesh) -> None:
    """The demo's Ami Gateway `bookinfo` and Istio's VirtualService `bookinfo`: the latter's
    Gateway is `bookinfo-gateway.bookinfo`, so both are kept; the demo's rules come first."""
    demo = Path(ROOT / "sample_apps/bookinfo/routes/default/gateway.yaml").read_text()
    mesh.applied("demo-gateway.yaml", demo)
    mesh.applied("bookinfo-gateway.yaml", BOOKINFO_GATEWAY)
    listed = mesh.meshctl("get", "gateways").stdout
    assert [line.split()[0] for line in listed.splitlines()[1:]] == [
        "bookinfo", "bookinfo-gateway", "bookinfo-gateway.bookinfo"], listed
    wait_for(lambda: mesh.call("/productpage")[0] == 200, 20, "productpage via the gateway")
    mesh.meshctl("delete", "-f", str(mesh.tmp / "bookinfo-gateway.yaml"))
    mesh.meshctl("delete", "-f", str(mesh.tmp / "demo-gateway.yaml"))


# Istio's Gateway reference example in small: one VirtualService for the mesh (its short name)
# and for the gateway (the public name, which alone the Gateway serves)
MESH_AND_GATEWAY = """\
apiVersion: networking.istio.io/v1
kind: Gateway
metadata:
  name: public-gateway
spec:
  selector:
    istio: ingressgateway
  servers:
  - port:
      number: 80
      name: http
      protocol: HTTP
    hosts:
    - httpbin.example.com
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata:
  name: httpbin-both
spec:
  hosts:
  - httpbin
  - httpbin.example.com
  gateways:
  - public-gateway
  - mesh
  http:
  - route:
    - destination:
        host: httpbin
"""


def test_a_virtual_service_of_the_mesh_and_a_gateway_applies_with_a_warning(
        mesh: IngressMesh) -> None:
    """A host the Gateway does not serve (the mesh's short name) is accepted, as Istio does
    (its IST0132 is a warning): apply warns on the VirtualService's own `spec.hosts[0]`; the
    gateway serves the public name only."""
    path = mesh.tmp / "both.yaml"
    path.write_text(MESH_AND_GATEWAY)
    done = mesh.meshctl("apply", "-f", str(path))
    try:
        assert done.returncode == 0, done.stdout + done.stderr
        # (the mesh's Route of httpbin.example.com is warned of too: no service declares it)
        unserved = [line for line in done.stderr.splitlines() if "IST0132" in line]
        assert unserved == [
            "warning: virtualservice.networking.istio.io/httpbin-both (Gateway "
            "default/public-gateway.httpbin-both): spec.hosts[0]: host httpbin is not among "
            "the hosts of Gateway public-gateway (httpbin.example.com): that gateway serves "
            "it no request (Istio's IST0132)"], done.stderr
        wait_for(lambda: mesh.call("/get", host="httpbin.example.com")[0] == 200, 20,
                 "httpbin via the gateway")
        status, headers, _ = mesh.call("/get", host="httpbin")
        assert (status, headers.get("x-ami-reason")) == (404, "no_route")
    finally:
        mesh.meshctl("delete", "-f", str(path))


SECURE_HTTPBIN = """\
apiVersion: networking.istio.io/v1
kind: Gateway
metadata:
  name: secure-gateway
spec:
  selector:
    istio: ingressgateway
  servers:
  - port:
      number: 443
      name: https
      protocol: HTTPS
    tls:
      mode: SIMPLE
      credentialName: httpbin-credential
    hosts:
    - secure.example.com
  - port:
      number: 80
      name: http
      protocol: HTTP
    hosts:
    - secure.example.com
    tls:
      httpsRedirect: true
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata:
  name: secure-httpbin
spec:
  hosts:
  - secure.example.com
  gateways:
  - secure-gateway
  http:
  - match:
    - uri:
        prefix: /status
    route:
    - destination:
        host: httpbin
"""


def test_https_redirect_answers_plain_http_with_a_301_to_https(mesh: IngressMesh) -> None:
    """Istio's secure-gateway task with `httpsRedirect`: a plain HTTP request for the server's
    host is answered 301 to the same URL in https, forwarded nowhere; another host is not."""
    mesh.applied("secure.yaml", SECURE_HTTPBIN)
    try:
        wait_for(lambda: mesh.call("/status/200", host="secure.example.com")[0] == 301, 20,
                 "the redirect rule")
        status, headers, _ = mesh.call("/status/200?x=1", host="secure.example.com")
        assert (status, headers.get("location")) == (
            301, "https://secure.example.com/status/200?x=1"), headers
        assert mesh.call("/status/200", host="other.example.com")[0] == 404
    finally:
        mesh.meshctl("delete", "-f", str(mesh.tmp / "secure.yaml"))


TWO_GATEWAYS = """\
apiVersion: networking.istio.io/v1
kind: Gateway
metadata: {name: gw-a}
spec:
  servers:
  - port: {number: 80, name: http, protocol: HTTP}
    hosts: [a.example.com]
---
apiVersion: networking.istio.io/v1
kind: Gateway
metadata: {name: gw-b}
spec:
  servers:
  - port: {number: 80, name: http, protocol: HTTP}
    hosts: [b.example.com]
"""
MOVING = """\
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: moving}
spec:
  hosts: ["*"]
  gateways: [gw-a]
  http:
  - route: [{destination: {host: httpbin}}]
"""


def test_a_virtual_service_moved_to_another_gateway_leaves_the_first(mesh: IngressMesh) -> None:
    """Re-applied with `gateways: [gw-b]`: its Gateway bound to gw-a is pruned (a.example.com
    404s), b.example.com is served; the Istio Gateway deleted and re-applied, its rules go
    and come back."""
    mesh.applied("two.yaml", TWO_GATEWAYS)
    try:
        mesh.applied("moving.yaml", MOVING)
        wait_for(lambda: mesh.call("/get", host="a.example.com")[0] == 200, 20, "via gw-a")
        assert mesh.call("/get", host="b.example.com")[0] == 404
        mesh.applied("moving.yaml", MOVING.replace("[gw-a]", "[gw-b]"))
        wait_for(lambda: mesh.call("/get", host="b.example.com")[0] == 200, 20, "via gw-b")
        assert mesh.call("/get", host="a.example.com")[0] == 404
        listed = mesh.meshctl("get", "gateways").stdout
        assert [line.split()[0] for line in listed.splitlines()[1:]] == [
            "gw-a", "gw-b", "gw-b.moving"], listed
        assert mesh.meshctl("delete", "gateway", "gw-b").returncode == 0
        wait_for(lambda: mesh.call("/get", host="b.example.com")[0] == 404, 20, "gw-b gone")
        mesh.applied("two.yaml", TWO_GATEWAYS)
        wait_for(lambda: mesh.call("/get", host="b.example.com")[0] == 200, 20, "gw-b back")
    finally:
        mesh.meshctl("delete", "-f", str(mesh.tmp / "moving.yaml"))
        mesh.meshctl("delete", "-f", str(mesh.tmp / "two.yaml"))


POLICIED = """\
apiVersion: networking.istio.io/v1
kind: Gateway
metadata: {name: edge-gw}
spec:
  servers:
  - port: {number: 80, name: http, protocol: HTTP}
    hosts: [api.example.com]
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: api}
spec:
  hosts: [api.example.com]
  gateways: [edge-gw]
  http:
  - name: slow
    match: [{uri: {prefix: /slow}}]
    timeout: 0.3s
    route: [{destination: {host: httpbin}}]
  - name: teapot
    match: [{uri: {prefix: /teapot}}]
    fault: {abort: {percentage: {value: 100}, httpStatus: 418}}
    route: [{destination: {host: httpbin}}]
  - name: rest
    headers: {request: {set: {x-edge: "yes"}}}
    route: [{destination: {host: httpbin}}]
---
apiVersion: ami.mesh/v1alpha1
kind: AuthorizationPolicy
metadata: {name: edge-deny-admin}
spec:
  selector: {service: gateway}
  action: DENY
  rules:
  - to: [{paths: [/admin/*]}]
"""


def test_a_bound_virtual_services_routes_at_the_gateway(mesh: IngressMesh) -> None:
    """Its timeout answers 504, its fault 418 without forwarding, its header edit reaches the
    app; an AuthorizationPolicy selecting the gateway denies before any of them (403); each
    named route is counted with route = default/edge-gw.api."""
    mesh.applied("policied.yaml", POLICIED)
    try:
        wait_for(lambda: mesh.call("/get", host="api.example.com")[0] == 200, 20, "api")
        wait_for(lambda: mesh.call("/admin/x", host="api.example.com")[0] == 403, 20,
                 "the gateway's policy")
        status, _, body = mesh.call("/get", host="api.example.com")
        assert status == 200 and ["x-edge", "yes"] in json.loads(body)["headers"], body
        assert mesh.call("/slow?s=3", host="api.example.com")[0] == 504
        assert mesh.call("/teapot", host="api.example.com")[0] == 418
        for rule in ("slow", "teapot", "rest"):
            assert mesh.metric(mesh.gateway_proc, "ami_route_requests_total",
                               route="default/edge-gw.api", rule=rule) >= 1, rule
    finally:
        mesh.meshctl("delete", "-f", str(mesh.tmp / "policied.yaml"))


def test_a_virtual_service_bound_to_a_missing_gateway_is_warned_of(mesh: IngressMesh) -> None:
    """A typo in `gateways` applies (the Gateway may come later, as in Istio) with a warning
    on `spec.gateways[0]`, as istioctl's IST0101; none once the Gateway is stored."""
    typo = HTTPBIN_GATEWAY.split("---\n", 1)[1].replace("- httpbin-gateway", "- httpbin-gatway")
    path = mesh.tmp / "typo.yaml"
    path.write_text(typo)
    try:
        done = mesh.meshctl("apply", "-f", str(path))
        assert done.returncode == 0, done.stdout + done.stderr
        assert [line for line in done.stderr.splitlines() if line.startswith("warning:")] == [
            "warning: virtualservice.networking.istio.io/httpbin (Gateway "
            "default/httpbin-gatway.httpbin): spec.gateways[0]: Gateway default/httpbin-gatway "
            "does not exist: its rules apply once it is applied (Istio's IST0101)"], done.stderr
        mesh.applied("httpbin-gateway.yaml", HTTPBIN_GATEWAY)
        again = mesh.meshctl("apply", "-f", str(mesh.tmp / "httpbin-gateway.yaml"))
        assert "warning:" not in again.stderr, again.stderr
    finally:
        mesh.meshctl("delete", "-f", str(path))
        mesh.meshctl("delete", "-f", str(mesh.tmp / "httpbin-gateway.yaml"))
