"""Services of one name in two namespaces stay two: real control plane, sidecars and apps
(mTLS on), `api` in namespaces `a` and `b`, a caller in each. A bare name means the caller's
own namespace's service, `api.b` and the `.svc` forms name b's (and `api.c` none), a Route in
`b` for `api` is about b's `api` (and uses b's services as backends) whoever calls it, one of
a third namespace for `api.b` only for that namespace's callers, and a second Route for one
service, however its host is spelled, is refused."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest

from tests.helpers_mesh import http_get, http_json, wait_for
from tests.meshbuilder import Mesh

pytestmark = pytest.mark.timeout(180)

# In b, requests for `api` with `x-teapot: 1` are answered 418 by the caller's sidecar; the
# backends name `api` explicitly: b's, also when a caller in a applies this Route.
ROUTE_B = """\
apiVersion: ami.mesh/v1alpha1
kind: Route
metadata: {name: api, namespace: b}
spec:
  host: api
  rules:
    - matches: [{headers: {x-teapot: {exact: "1"}}}]
      fault: {abort: {httpStatus: 418, percent: 100}}
      backends: [{service: api}]
    - backends: [{service: api}]
"""

# A third namespace's Route for b's `api`: for z's callers only (there are none here), so
# a's and b's callers get b's Route (418), never this one (419).
ROUTE_Z = """\
apiVersion: ami.mesh/v1alpha1
kind: Route
metadata: {name: api-b, namespace: z}
spec:
  host: api.b
  rules:
    - matches: [{headers: {x-teapot: {exact: "1"}}}]
      fault: {abort: {httpStatus: 419, percent: 100}}
      backends: [{service: api}]
    - backends: [{service: api}]
"""


@pytest.fixture(scope="module")
def mesh(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    with Mesh(tmp_path_factory.mktemp("namespaces-cp")) as mesh:
        mesh.control_plane(ROUTE_B, ROUTE_Z, warmup=0.0)
        callers, admins = {}, {}
        for ns in ("a", "b"):
            app = mesh.backend(f"{ns}-api")  # answers with its namespace
            api = mesh.sidecar("api", namespace=ns, app=app.info["address"])
            callers[ns] = mesh.sidecar("web", namespace=ns)
            admins[f"api-{ns}"], admins[f"web-{ns}"] = (api.info["admin"],
                                                        callers[ns].info["admin"])
        mesh.wait_synced()
        yield {**{ns: f"http://{c.info['outbound']}/" for ns, c in callers.items()},
               "admins": admins, "cp": mesh.cp}


def call(outbound: str, host: str, **headers: str) -> tuple[int, bytes]:
    return http_get(outbound, {"Host": host, **headers})


@pytest.mark.parametrize("caller", ["a", "b"])
def test_each_name_reaches_its_own_namespace(mesh: dict[str, str], caller: str) -> None:
    """`api` is the caller's namespace's; `api.X`, `api.X.svc` and the FQDN are X's, from
    either namespace (the answers come through mTLS checked against each one's identity)."""
    outbound = mesh[caller]
    # The sidecars of both `api`s have registered: the first answer may still be 503 while
    # the caller's snapshot catches up, never the other namespace's app.
    wait_for(lambda: call(outbound, "api")[0] == 200, 20, "api reachable")
    assert call(outbound, "api") == (200, f"{caller}-api".encode())
    for ns in ("a", "b"):
        for host in (f"api.{ns}", f"api.{ns}.svc", f"api.{ns}.svc.cluster.local",
                     f"api.{ns}.svc.cluster.local:80"):
            assert call(outbound, host) == (200, f"{ns}-api".encode()), (caller, host)


def test_a_route_applies_to_its_own_namespaces_service(mesh: dict[str, str]) -> None:
    """b's Route for `api` is b's `api`'s: b's callers get it for `api`, a's for `api.b`;
    a's `api` has no Route (a's callers reach it with the header)."""
    assert call(mesh["b"], "api", **{"x-teapot": "1"})[0] == 418
    assert call(mesh["a"], "api.b", **{"x-teapot": "1"})[0] == 418
    assert call(mesh["a"], "api.b.svc.cluster.local", **{"x-teapot": "1"})[0] == 418
    assert call(mesh["a"], "api", **{"x-teapot": "1"}) == (200, b"a-api")
    assert call(mesh["b"], "api.a", **{"x-teapot": "1"}) == (200, b"a-api")
    # Its backends name `api`: b's, for a's callers too (not a's `api`).
    assert call(mesh["a"], "api.b") == (200, b"b-api")


def test_both_sidecars_label_a_call_alike(mesh: dict[str, Any]) -> None:
    """`destination_service` is the same on the caller's and the callee's sidecar: `api.a`
    and `api.b` (a name two namespaces have), whoever calls and however it was written, so
    `meshctl stat` neither counts a call twice nor merges the two services."""
    assert call(mesh["a"], "api.b") == (200, b"b-api")
    assert call(mesh["a"], "api") == (200, b"a-api")
    assert call(mesh["b"], "api.a.svc.cluster.local") == (200, b"a-api")
    admins = mesh["admins"]

    def services(admin: str, reporter: str) -> set[str]:
        text = http_get(f"http://{admin}/metrics")[1].decode()
        return {line.split('destination_service="')[1].split('"')[0]
                for line in text.splitlines()
                if line.startswith("ami_requests_total{") and f'reporter="{reporter}"' in line
                and 'response_code="200"' in line}

    assert services(admins["web-a"], "source") >= {"api.a", "api.b"}
    assert "api" not in services(admins["web-a"], "source")
    assert services(admins["api-a"], "destination") == {"api.a"}
    assert services(admins["api-b"], "destination") == {"api.b"}


@pytest.mark.parametrize("caller", ["a", "b"])
def test_a_name_of_a_namespace_without_that_service_reaches_nothing(
        mesh: dict[str, str], caller: str) -> None:
    """`api.c` and `api.c.svc.cluster.local` are `api` of namespace c, which has none: 404
    `no_route` (as Kubernetes DNS fails), not the caller's own `api` by its first label; a
    longer name of no mesh form still reaches the caller's `api` by its first label."""
    outbound = mesh[caller]
    wait_for(lambda: call(outbound, "api")[0] == 200, 20, "api reachable")
    for host in ("api.c", "api.c:80", "api.c.svc", "api.c.svc.cluster.local"):
        assert call(outbound, host)[0] == 404, (caller, host)
    for host in ("api.example.com", "api.b.example.com"):  # the first label, as a bare name
        assert call(outbound, host) == (200, f"{caller}-api".encode()), (caller, host)


def test_a_third_namespaces_route_is_for_its_own_callers(mesh: dict[str, str]) -> None:
    """z's Route for `api.b` does not apply to a's callers (nor b's): they get b's own
    Route, the service's namespace's, not whichever of the two sorts last."""
    assert call(mesh["a"], "api.b", **{"x-teapot": "1"})[0] == 418
    assert call(mesh["b"], "api", **{"x-teapot": "1"})[0] == 418


@pytest.mark.parametrize(("namespace", "hosts"), [
    ("b", ["api.b.svc.cluster.local"]),  # b already has a Route for `api`, spelled bare
    ("a", ["api.b", "api.b.svc"]),  # two in one apply, both b's `api`
])
@pytest.mark.parametrize("kind", ["Route", "DestinationPolicy"])
def test_a_second_route_for_one_service_however_spelled_is_refused(
        mesh: dict[str, Any], namespace: str, hosts: list[str], kind: str) -> None:
    """The control plane refuses (422) a Route or DestinationPolicy about a service that
    already has one in that namespace, whatever spelling of its name either host uses."""
    spec = "rules: [{backends: [{service: api}]}]" if kind == "Route" else "loadBalancer: RANDOM"
    existing = ("---\napiVersion: ami.mesh/v1alpha1\nkind: DestinationPolicy\n"
                "metadata: {name: api, namespace: b}\nspec: {host: api}\n"
                if kind == "DestinationPolicy" and namespace == "b" else "")
    text = existing + "".join(
        f"---\napiVersion: ami.mesh/v1alpha1\nkind: {kind}\n"
        f"metadata: {{name: x{i}, namespace: {namespace}}}\nspec:\n  host: {host}\n  {spec}\n"
        for i, host in enumerate(hosts))
    cp = mesh["cp"]
    status, body = http_json(cp.info["api"] + "/api/v1/apply", "POST", text,
                             token=cp.info["token"], content_type="application/yaml")
    assert status == 422, body
    assert f"is service api of namespace b, which already has a {kind}" in str(body)
