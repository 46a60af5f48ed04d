"""Gateway API HTTPRoutes attached to Services (GAMMA) through a real control plane, sidecars
and apps: splits, matches, filters, timeouts, precedence, conflicts, status and the CLI."""

from __future__ import annotations

import http.client
import json
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.helpers_mesh import http_json
from tests.meshbuilder import Mesh
from tests.resources import mesh_config


def httproute(name: str, rules: str, parent: str = "reviews") -> str:
    """An HTTPRoute attached to Service ``parent`` (GAMMA) with ``rules`` (YAML list text,
    indented by 2)."""
    return f"""apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata:
  name: {name}
spec:
  parentRefs:
    - {{group: "", kind: Service, name: {parent}, port: 9080}}
  rules:
{rules}"""


class GammaMesh(Mesh):
    """reviews (the parent) and one Service per version, reviews-v1 and reviews-v2 (as
    Istio and Linkerd split: Gateway API has no subsets), an echo service, a caller."""

    def build(self, echo: int) -> GammaMesh:
        self.control_plane(mesh_config(mtls="DISABLE"), warmup=0.0)
        for name in ("reviews", "reviews-v1", "reviews-v2"):
            app = self.backend(name)
            self.sidecar(name, app=app.info["address"])
        self.sidecar("echo", app=f"127.0.0.1:{echo}")
        self.client = self.sidecar("productpage")
        return self

    def call(self, path: str = "/", headers: dict[str, str] | None = None,
             host: str = "reviews") -> tuple[int, bytes]:
        return self.get(self.client, host, path, headers)

    def raw(self, host: str, path: str,
            headers: dict[str, str] | None = None) -> tuple[int, dict[str, str], bytes]:
        """A request through the caller's sidecar, its redirects not followed."""
        address, port = self.client.info["outbound"].rsplit(":", 1)
        conn = http.client.HTTPConnection(address, int(port), timeout=15)
        try:
            conn.request("GET", path, headers={"Host": host, **(headers or {})})
            resp = conn.getresponse()
            return resp.status, {k.lower(): v for k, v in resp.getheaders()}, resp.read()
        finally:
            conn.close()

    def delete(self, name: str) -> None:
        status, body = http_json(f"{self.cp.info['api']}/api/v1/namespaces/default/httproutes/"
                                 f"{name}", "DELETE", token=self.cp.info["token"])
        assert status == 200, body
        self.sync(int(body["metadata"]["resourceVersion"]))


@pytest.fixture(scope="module")
def mesh(tmp_path_factory: pytest.TempPathFactory, echo: int) -> Iterator[GammaMesh]:
    with GammaMesh(tmp_path_factory.mktemp("gamma")) as m:
        m.build(echo).wait_synced()
        yield m


@pytest.fixture
def clean(mesh: GammaMesh) -> Iterator[GammaMesh]:
    """The mesh, its HTTPRoutes deleted after the test."""
    yield mesh
    status, body = http_json(mesh.cp.info["api"] + "/api/v1/httproutes")
    for item in body["items"] if status == 200 else ():
        mesh.delete(item["metadata"]["name"])


def test_weighted_split_between_two_services(clean: GammaMesh) -> None:
    """backendRefs weights 3:1 to two Services: about 3/4 of the requests reach reviews-v1."""
    clean.apply_synced(httproute("split", """  - backendRefs:
      - {name: reviews-v1, port: 9080, weight: 3}
      - {name: reviews-v2, port: 9080, weight: 1}
"""))
    counts = Counter(clean.call()[1] for _ in range(400))
    assert set(counts) == {b"reviews-v1", b"reviews-v2"}, counts
    # binomial(400, 0.75): sd ~8.7; 45 is over five of them
    assert abs(counts[b"reviews-v1"] - 300) <= 45, counts


def test_header_match_picks_its_rule(clean: GammaMesh) -> None:
    """A header match sends jason to reviews-v2; everyone else takes the default rule."""
    clean.apply_synced(httproute("jason", """  - matches:
      - headers: [{name: end-user, value: jason}]
    backendRefs: [{name: reviews-v2, port: 9080}]
  - backendRefs: [{name: reviews-v1, port: 9080}]
"""))
    assert clean.call(headers={"end-user": "jason"}) == (200, b"reviews-v2")
    assert clean.call(headers={"end-user": "ann"}) == (200, b"reviews-v1")
    assert clean.call() == (200, b"reviews-v1")


def test_prefix_rewrite_and_header_modifiers(clean: GammaMesh) -> None:
    """URLRewrite ReplacePrefixMatch turns /api/x into /v2/x (a Gateway prefix matches whole
    segments: /apix is not under /api); request and response headers are edited."""
    clean.apply_synced(httproute("echo", """  - matches: [{path: {type: PathPrefix, value: /api}}]
    filters:
      - type: URLRewrite
        urlRewrite: {path: {type: ReplacePrefixMatch, replacePrefixMatch: /v2}}
      - type: RequestHeaderModifier
        requestHeaderModifier:
          set: [{name: x-env, value: demo}]
          remove: [x-debug]
      - type: ResponseHeaderModifier
        responseHeaderModifier:
          add: [{name: x-served-by, value: ami}]
    backendRefs: [{name: echo, port: 9080}]
  - backendRefs: [{name: echo, port: 9080}]
""", parent="echo"))
    status, headers, body = clean.raw("echo", "/api/x", {"x-debug": "1", "x-env": "prod"})
    seen = json.loads(body)
    sent = {k.lower(): v for k, v in seen["headers"]}
    assert status == 200 and seen["path"] == "/v2/x"
    assert sent["x-env"] == "demo" and "x-debug" not in sent
    assert headers["x-served-by"] == "ami"
    assert json.loads(clean.raw("echo", "/api")[2])["path"] == "/v2"
    status, headers, body = clean.raw("echo", "/apix", {"x-debug": "1"})
    assert json.loads(body)["path"] == "/apix" and "x-served-by" not in headers
    assert ["x-debug", "1"] in [[k.lower(), v] for k, v in json.loads(body)["headers"]]


def test_redirect(clean: GammaMesh) -> None:
    """RequestRedirect answers with its status code and Location, the app never asked."""
    clean.apply_synced(httproute("moved", """  - matches: [{path: {type: Exact, value: /old}}]
    filters:
      - type: RequestRedirect
        requestRedirect: {path: {type: ReplaceFullPath, replaceFullPath: /new}, statusCode: 301}
  - backendRefs: [{name: echo, port: 9080}]
""", parent="echo"))
    status, headers, _ = clean.raw("echo", "/old")
    assert status == 301 and headers["location"] == "http://echo/new"
    status, _, body = clean.raw("echo", "/old/more")  # Exact: only /old
    assert status == 200 and json.loads(body)["path"] == "/old/more"


def test_request_timeout_gives_504(clean: GammaMesh) -> None:
    """timeouts.request: a slower answer becomes a 504 from the caller's sidecar."""
    clean.apply_synced(httproute("slow", """  - matches: [{path: {type: PathPrefix, value: /slow}}]
    timeouts: {request: 200ms}
    backendRefs: [{name: echo, port: 9080}]
  - backendRefs: [{name: echo, port: 9080}]
""", parent="echo"))
    status, headers, _ = clean.raw("echo", "/slow?s=3")
    assert status == 504 and headers.get("x-ami-reason") == "timeout", headers
    assert clean.raw("echo", "/status/200")[0] == 200


def test_retry_on_codes(clean: GammaMesh) -> None:
    """retry: a 503 is tried again `attempts` times by the caller's sidecar; a 500, not in
    codes, is not."""
    clean.apply_synced(httproute("retry", """  - retry: {attempts: 2, codes: [503], backoff: 10ms}
    backendRefs: [{name: echo, port: 9080}]
""", parent="echo"))
    before = clean.metric(clean.client, "ami_retries_total")
    assert clean.raw("echo", "/status/503")[0] == 503
    assert clean.metric(clean.client, "ami_retries_total") == before + 2
    assert clean.raw("echo", "/status/500")[0] == 500
    assert clean.metric(clean.client, "ami_retries_total") == before + 2


def test_precedence_across_httproutes(clean: GammaMesh) -> None:
    """Across the HTTPRoutes of one Service the more specific match wins, whatever route it
    is in; equal matches go to the route first by namespace/name."""
    clean.apply_synced(
        httproute("a-catch-all", """  - backendRefs: [{name: reviews-v1, port: 9080}]
  - matches: [{headers: [{name: end-user, value: jason}]}]
    backendRefs: [{name: reviews-v1, port: 9080}]
"""),
        httproute("b-specific", """  - matches: [{path: {type: PathPrefix, value: /special}}]
    backendRefs: [{name: reviews-v2, port: 9080}]
  - matches: [{headers: [{name: end-user, value: jason}]}]
    backendRefs: [{name: reviews-v2, port: 9080}]
"""))
    assert clean.call("/special/1") == (200, b"reviews-v2")  # longer prefix, later route
    assert clean.call("/specialist") == (200, b"reviews-v1")  # not under /special
    assert clean.call("/", {"end-user": "jason"}) == (200, b"reviews-v1")  # tie: a- first
    assert clean.call("/other") == (200, b"reviews-v1")


def test_status_get_and_describe(clean: GammaMesh, tmp_path: Path) -> None:
    """`meshctl apply` and `diff` take an HTTPRoute file; status.parents says Accepted and
    ResolvedRefs; a backend without sidecars is BackendNotFound; `get` and `describe` show
    it, and `describe service` shows the Route rules it makes."""
    clean.apply_synced(httproute("ghost", """  - backendRefs: [{name: nobody, port: 9080}]
""", parent="echo"))
    file = tmp_path / "split.yaml"
    file.write_text(httproute("split", """  - backendRefs:
      - {name: reviews-v1, port: 9080}
"""))
    applied = clean.meshctl("apply", "-f", str(file))
    assert applied.returncode == 0 and "httproute" in applied.stdout.lower(), applied
    diff = clean.meshctl("diff", "-f", str(file))
    assert diff.returncode == 0 and diff.stdout == "", diff
    service = clean.meshctl("describe", "service", "reviews")
    assert service.returncode == 0, service.stderr
    assert "httproute:split" in service.stdout and "reviews-v1" in service.stdout
    status, doc = http_json(clean.cp.info["api"]
                            + "/api/v1/namespaces/default/httproutes/split")
    assert status == 200 and doc["apiVersion"] == "gateway.networking.k8s.io/v1"
    (parent,) = doc["status"]["parents"]
    assert parent["parentRef"] == {"group": "", "kind": "Service", "name": "reviews",
                                   "namespace": "default", "port": 9080}
    assert {c["type"]: (c["status"], c["reason"]) for c in parent["conditions"]} == {
        "Accepted": ("True", "Accepted"), "ResolvedRefs": ("True", "ResolvedRefs")}
    table = clean.meshctl("get", "httproutes")
    assert table.returncode == 0, table.stderr
    lines = {line.split()[0]: line.split() for line in table.stdout.splitlines()}
    assert lines["NAME"][:5] == ["NAME", "PARENTS", "RULES", "BACKENDS", "IN-EFFECT"]
    assert lines["split"][1:5] == ["reviews", "1", "reviews-v1", "yes"]
    assert lines["ghost"][4] == "BackendNotFound"
    described = clean.meshctl("describe", "httproute", "ghost")
    assert described.returncode == 0, described.stderr
    assert "Service default/echo:" in described.stdout
    assert "ResolvedRefs=False (BackendNotFound): no sidecar registered for backend " \
           "service(s) nobody" in described.stdout
    got = clean.meshctl("get", "httproute", "ghost", "-o", "yaml")
    assert "reason: BackendNotFound" in got.stdout and "kind: HTTPRoute" in got.stdout
    assert clean.call(host="echo")[0] == 503  # no sidecar of `nobody`: no healthy upstream
    everything = clean.meshctl("get", "all")
    assert everything.returncode == 0 and "ghost" in everything.stdout, everything
    check = clean.meshctl("check")
    assert check.returncode in (0, 1) and "Traceback" not in check.stderr, check


def test_route_and_httproute_for_one_service_are_refused(clean: GammaMesh,
                                                         tmp_path: Path) -> None:
    """An Ami Route beside an HTTPRoute of the same Service and namespace is refused, naming
    the field, and the traffic keeps the HTTPRoute's routing."""
    clean.apply_synced(httproute("split", """  - backendRefs: [{name: reviews-v2, port: 9080}]
"""))
    route = tmp_path / "route.yaml"
    route.write_text("""apiVersion: ami.mesh/v1alpha1
kind: Route
metadata: {name: reviews}
spec:
  host: reviews
  rules: [{backends: [{service: reviews-v1}]}]
""")
    result = clean.meshctl("apply", "-f", str(route))
    assert result.returncode != 0
    assert "spec.parentRefs[0]" in result.stderr
    assert "service reviews.default already has a Route in namespace default" in result.stderr
    assert clean.call() == (200, b"reviews-v2")


def test_validation_names_file_document_and_field(mesh: GammaMesh, tmp_path: Path) -> None:
    """Unsupported fields are refused by name, each with file, document and field path."""
    bad = tmp_path / "bad.yaml"
    bad.write_text("""apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata: {name: ok}
spec:
  parentRefs: [{kind: Service, name: reviews}]
---
apiVersion: gateway.networking.k8s.io/v1beta1
kind: HTTPRoute
metadata: {name: bad}
spec:
  parentRefs: [{name: my-gateway}]
  rules:
    - filters:
        - type: ExtensionRef
          extensionRef: {group: x.io, kind: Thing, name: t}
      sessionPersistence: {sessionName: s}
      backendRefs: [{name: reviews-v1, namespace: other, port: 9080}]
""")
    result = mesh.meshctl("validate", "-f", str(bad))
    assert result.returncode != 0
    err = result.stderr
    assert f"{bad} doc 2: spec.parentRefs[0]: not supported by Ami: parentRefs to a " \
           "Gateway" in err, err
    assert "spec.rules[0].filters[0].type: not supported by Ami: filter ExtensionRef" in err
    assert "spec.rules[0].sessionPersistence: not supported by Ami" in err
    assert "doc 1" not in err


def test_cross_namespace_backend_is_refused(mesh: GammaMesh, tmp_path: Path) -> None:
    """A backendRef to another namespace needs a ReferenceGrant: refused by name."""
    bad = tmp_path / "cross.yaml"
    bad.write_text(httproute("cross", """  - backendRefs: [{name: reviews-v1, namespace: other}]
"""))
    result = mesh.meshctl("validate", "-f", str(bad))
    assert result.returncode != 0
    assert "spec.rules[0].backendRefs[0].namespace: not supported by Ami: a backend in " \
           "another namespace" in result.stderr, result.stderr

