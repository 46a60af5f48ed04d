"""HTTPRoutes (GAMMA) over the life of their Services and of themselves, through a real control
plane, sidecars and apps: a parent or backend Service that registers after the route, a
consumer route in another namespace, a deleted route leaving no rule behind."""

from __future__ import annotations

import http.client
from collections.abc import Iterator

import pytest

from tests.helpers_mesh import http_json, wait_for
from tests.meshbuilder import Mesh
from tests.resources import mesh_config


def httproute(name: str, rules: str, parent: str, namespace: str = "default",
              parent_namespace: str | None = None) -> str:
    where = f", namespace: {parent_namespace}" if parent_namespace else ""
    return f"""apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata: {{name: {name}, namespace: {namespace}}}
spec:
  parentRefs:
    - {{group: "", kind: Service, name: {parent}, port: 9080{where}}}
  rules:
{rules}"""


class LifeMesh(Mesh):
    def build(self) -> LifeMesh:
        self.control_plane(mesh_config(mtls="DISABLE"), warmup=0.0)
        for name in ("shop", "shop-v2"):
            app = self.backend(name)
            self.sidecar(name, app=app.info["address"])
        self.client = self.sidecar("web")
        self.other = self.sidecar("web", namespace="other")
        return self

    def location(self, host: str, path: str) -> tuple[int, str | None]:
        """Status and Location of a request through the caller's sidecar (not followed)."""
        address, port = self.client.info["outbound"].rsplit(":", 1)
        conn = http.client.HTTPConnection(address, int(port), timeout=15)
        try:
            conn.request("GET", path, headers={"Host": host})
            resp = conn.getresponse()
            resp.read()
            return resp.status, resp.getheader("location")
        finally:
            conn.close()

    def delete(self, name: str, namespace: str = "default", sync: bool = True) -> None:
        status, body = http_json(f"{self.cp.info['api']}/api/v1/namespaces/{namespace}/"
                                 f"httproutes/{name}", "DELETE", token=self.cp.info["token"])
        assert status == 200, body
        if sync:
            self.sync(int(body["metadata"]["resourceVersion"]))
        else:  # (a proxy just stopped may still count in /sync for a while)
            self.wait_synced()


@pytest.fixture(scope="module")
def mesh(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LifeMesh]:
    with LifeMesh(tmp_path_factory.mktemp("gammalife")) as m:
        m.build().wait_synced()
        yield m


def test_deleted_route_leaves_no_rule(mesh: LifeMesh) -> None:
    """After the delete, requests for the parent go to the parent again, from every caller."""
    mesh.apply_synced(httproute("to-v2", "  - backendRefs: [{name: shop-v2, port: 9080}]\n",
                                "shop"))
    assert mesh.get(mesh.client, "shop") == (200, b"shop-v2")
    assert mesh.get(mesh.other, "shop.default") == (200, b"shop-v2")
    mesh.delete("to-v2")
    assert mesh.get(mesh.client, "shop") == (200, b"shop")
    assert mesh.get(mesh.other, "shop.default") == (200, b"shop")


def test_consumer_route_applies_to_its_namespace_only(mesh: LifeMesh) -> None:
    """A route in namespace other for shop.default: other's callers take it, default's not."""
    mesh.apply_synced(httproute("mine", "  - backendRefs: [{name: shop-v2, port: 9080}]\n",
                                "shop", namespace="other", parent_namespace="default"))
    try:
        # other's callers: shop-v2 of namespace other does not exist, so not shop (the parent)
        assert mesh.get(mesh.other, "shop.default")[1] != b"shop"
        assert mesh.get(mesh.client, "shop") == (200, b"shop")
    finally:
        mesh.delete("mine", "other")
    assert mesh.get(mesh.other, "shop.default") == (200, b"shop")


def test_parent_and_backend_registered_after_the_route(mesh: LifeMesh) -> None:
    """A route for a Service no sidecar has registered yet takes effect when its sidecars
    register, without being applied again."""
    mesh.apply_synced(httproute("late", "  - backendRefs: [{name: late-v2, port: 9080}]\n",
                                "late"))
    try:
        for name in ("late", "late-v2"):
            app = mesh.backend(name)
            mesh.sidecar(name, app=app.info["address"])
        mesh.wait_synced()
        wait_for(lambda: mesh.get(mesh.client, "late") == (200, b"late-v2"), 15,
                 "the route for late in effect")
        assert mesh.get(mesh.other, "late.default") == (200, b"late-v2")
    finally:
        mesh.delete("late")
    wait_for(lambda: mesh.get(mesh.client, "late") == (200, b"late"), 15, "late itself")


def test_regex_header_match_reads_as_re2(mesh: LifeMesh) -> None:
    """A RegularExpression match means what it means in RE2 (Istio, the Gateway API): `\\w`
    is an ASCII word character, so `caf\\xe9` is not `\\w+` and the request takes the
    catch-all rule."""
    mesh.apply_synced(httproute("word", r"""  - matches:
      - headers: [{name: x-user, type: RegularExpression, value: '\w+'}]
    backendRefs: [{name: shop-v2, port: 9080}]
  - backendRefs: [{name: shop, port: 9080}]
""", "shop"))
    try:
        assert mesh.get(mesh.client, "shop", headers={"x-user": "cafe"}) == (200, b"shop-v2")
        assert mesh.get(mesh.client, "shop", headers={"x-user": "caf\xe9"}) == (200, b"shop")
    finally:
        mesh.delete("word")


def test_redirect_port_follows_the_scheme(mesh: LifeMesh) -> None:
    """RequestRedirect with a scheme and no port goes to the scheme's well-known port, not
    the port the request came to (the Gateway API's MUST), and a Location on the scheme's own
    port (http and 80, https and 443) does not write it."""
    mesh.apply_synced(httproute("moved", """  - matches: [{path: {type: Exact, value: /scheme}}]
    filters:
      - type: RequestRedirect
        requestRedirect:
          scheme: http
          path: {type: ReplaceFullPath, replaceFullPath: /new}
  - matches: [{path: {type: Exact, value: /port}}]
    filters:
      - {type: RequestRedirect, requestRedirect: {port: 80}}
  - matches: [{path: {type: Exact, value: /tls}}]
    filters:
      - {type: RequestRedirect, requestRedirect: {scheme: https, port: 8443}}
  - backendRefs: [{name: shop, port: 9080}]
""", "shop"))
    try:
        assert mesh.location("shop:9080", "/scheme") == (302, "http://shop/new")
        assert mesh.location("shop:9080", "/port") == (302, "http://shop/port")
        assert mesh.location("shop:9080", "/tls") == (302, "https://shop:8443/tls")
    finally:
        mesh.delete("moved")


def test_gamma_example_with_group_core_routes(mesh: LifeMesh) -> None:
    """The Gateway API's own GAMMA example writes the Service parentRef `group: core`: it
    applies and routes."""
    mesh.apply_synced("""apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata: {name: core-group}
spec:
  parentRefs:
    - {name: shop, kind: Service, group: core, port: 80}
  rules:
    - backendRefs: [{name: shop-v2, port: 80}]
""")
    try:
        assert mesh.get(mesh.client, "shop") == (200, b"shop-v2")
    finally:
        mesh.delete("core-group")


def test_route_of_a_missing_parent_is_not_in_effect(mesh: LifeMesh) -> None:
    """While no sidecar of the parent Service is registered, its status says Accepted False
    (NoMatchingParent) and so it is: the route does not route its name to the backends; it
    takes effect when the parent's first sidecar registers, without being applied again."""
    mesh.apply_synced(httproute("early", "  - backendRefs: [{name: shop-v2, port: 9080}]\n",
                                "ghost"))
    try:
        code, doc = http_json(mesh.cp.info["api"]
                              + "/api/v1/namespaces/default/httproutes/early")
        assert code == 200, doc
        accepted = doc["status"]["parents"][0]["conditions"][0]
        assert (accepted["status"], accepted["reason"]) == ("False", "NoMatchingParent")
        assert mesh.get(mesh.client, "ghost")[1] != b"shop-v2"
        app = mesh.backend("ghost")
        ghost = mesh.sidecar("ghost", app=app.info["address"])
        mesh.wait_synced()
        wait_for(lambda: mesh.get(mesh.client, "ghost") == (200, b"shop-v2"), 15,
                 "the route for ghost in effect")
        ghost.stop()  # the Service is gone again: so is its route
        mesh.sidecar_procs.remove(ghost)
        wait_for(lambda: mesh.get(mesh.client, "ghost")[1] != b"shop-v2", 30,
                 "the route for ghost out of effect")
    finally:
        mesh.delete("early", sync=False)
