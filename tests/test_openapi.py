"""/openapi.json against the router that serves it: a real ``meshctl serve`` (with a ratings
sidecar and app) describes every route it mounts, the document is valid OpenAPI 3.1
(openapi-spec-validator), and real answers of the main paths validate against the response
schemas it gives for their status."""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any
from urllib.parse import quote

import jsonschema
import pytest
from aiohttp import web
from openapi_spec_validator import validate

from meshctl.controlplane.httpapi import create_api_app
from meshctl.controlplane.memstore import MemStore
from meshctl.controlplane.openapi import catalog, openapi_document
from tests.helpers_mesh import http_json, wait_for
from tests.meshbuilder import Mesh
from tests.resources import destination_policy, documents, route

pytestmark = pytest.mark.timeout(120)
METHODS = {"get", "put", "post", "delete", "patch"}
RESOURCES = documents(
    route("ratings", rules=[{"name": "all", "backends": [{"subset": "v1"}]}]),
    destination_policy("ratings", ("v1",)), """\
apiVersion: ami.mesh/v1alpha1
kind: ExternalService
metadata: {name: github}
spec: {hosts: [api.github.com], ports: [{number: 80, protocol: HTTP}]}
""")


class OpenApiMesh(Mesh):
    """``meshctl serve`` with RESOURCES, and the ratings app behind its sidecar."""

    def build(self) -> OpenApiMesh:
        self.control_plane(RESOURCES, warmup=0.0, args=("--scrape-interval", "0.25"))
        self.ratings = self.service("ratings", "v1")["v1"]
        self.api, self.token = self.cp.info["api"], self.cp.info["token"]
        return self

    def call(self) -> int:
        return self.get(self.ratings, "ratings")[0]


@pytest.fixture(scope="module")
def mesh(tmp_path_factory: pytest.TempPathFactory) -> Iterator[OpenApiMesh]:
    with OpenApiMesh(tmp_path_factory.mktemp("openapi")) as m:
        m.build().wait_synced()
        yield m


@pytest.fixture(scope="module")
def document(mesh: OpenApiMesh) -> dict[str, Any]:
    status, doc = http_json(mesh.api + "/openapi.json")
    assert status == 200
    return dict(doc)


def _operations(doc: dict[str, Any]) -> dict[tuple[str, str], dict[str, Any]]:
    return {(path, method): op for path, item in doc["paths"].items()
            for method, op in item.items() if method in METHODS}


def test_document_is_valid_openapi(document: dict[str, Any]) -> None:
    """openapi-spec-validator accepts the served document (3.1, every $ref resolving)."""
    validate(document)
    assert document["openapi"] == "3.1.0"


def test_every_route_of_the_live_router_is_described(document: dict[str, Any]) -> None:
    """The served document walks the control plane's own router: no route it mounts lacks a
    description, and it mounts every operation the catalog describes."""
    served = _operations(document)
    undocumented = sorted(k for k, op in served.items() if op.get("x-ami-undocumented"))
    assert undocumented == []
    described = {(path, m) for path, item in catalog().items() for m in item if m in METHODS}
    assert set(served) == described
    for path in ("/api/v1/stat", "/api/v1/edges", "/api/v1/routes", "/api/v1/top",
                 "/api/v1/tap", "/api/v1/sync", "/api/v1/proxies", "/api/v1/version",
                 "/api/v1/check", "/api/v1/dashboard/state", "/metrics",
                 "/api/v1/services/{ns}/{name}/describe", "/api/v1/errors", "/openapi.json"):
        assert (path, "get") in served, path


def test_writes_and_privileged_reads_need_the_token(document: dict[str, Any]) -> None:
    """Every write, and tap, top and config_dump, require the bearer scheme; other reads
    may go without it (loopback)."""
    assert document["components"]["securitySchemes"]["bearer"]["scheme"] == "bearer"
    privileged = {"/api/v1/tap", "/api/v1/top", "/api/v1/proxies/{name}/config_dump"}
    for (path, method), op in _operations(document).items():
        needs_token = method != "get" or path in privileged
        assert (op["security"] == [{"bearer": []}]) == needs_token, (path, method)


def test_a_route_missing_from_the_catalog_is_flagged() -> None:
    """A route mounted without a description shows as x-ami-undocumented (what the test above
    would catch), and a catalog path the app does not mount is left out."""
    async def handler(_: web.Request) -> web.Response:
        return web.json_response({})

    app = create_api_app(MemStore(), token="t",
                         extra_routes=[web.get("/api/v1/things/{id}", handler)])
    doc = openapi_document(app.router)
    assert doc["paths"]["/api/v1/things/{id}"]["get"]["x-ami-undocumented"] is True
    assert "/api/v1/stat" not in doc["paths"] and "/api/v1/apply" in doc["paths"]
    validate(doc)


def _check(doc: dict[str, Any], template: str, method: str, status: int, body: Any) -> None:
    """``body`` validates against the schema the document gives for that status."""
    op = doc["paths"][template][method]
    response = op["responses"].get(str(status))
    assert response is not None, f"{method.upper()} {template}: {status} is not documented"
    schema = response["content"]["application/json"]["schema"]
    jsonschema.validate(body, {**schema, "components": doc["components"]},
                        cls=jsonschema.Draft202012Validator)


def test_real_answers_match_the_response_schemas(mesh: OpenApiMesh,
                                                 document: dict[str, Any]) -> None:
    """The main reads, writes and errors of a live control plane validate against the
    document's response schemas (200s, the 504 of sync, 404s, 401)."""
    wait_for(lambda: mesh.call() == 200, 20, "ratings reachable")

    def stat_rows() -> bool:
        assert mesh.call() == 200
        return bool(http_json(mesh.api + "/api/v1/stat?window=30s")[1]["rows"])

    wait_for(stat_rows, 30, "stat rows for ratings", interval=0.2)
    name = quote(mesh.ratings.info["name"])
    apply_text = RESOURCES.split("---")[0]
    cases: list[tuple[str, str, str, str | None, str | None]] = [
        # (template, method, url, token, body)
        ("/api/v1/proxies", "get", "/api/v1/proxies", None, None),
        ("/api/v1/version", "get", "/api/v1/version", None, None),
        ("/api/v1/sync", "get", "/api/v1/sync?timeout=10", None, None),
        ("/api/v1/sync", "get", "/api/v1/sync?storeVersion=999999&timeout=0", None, None),
        ("/api/v1/sync", "get", "/api/v1/sync?timeout=x", None, None),
        ("/api/v1/check", "get", "/api/v1/check", None, None),
        ("/api/v1/stat", "get", "/api/v1/stat?window=30s", None, None),
        ("/api/v1/edges", "get", "/api/v1/edges", None, None),
        ("/api/v1/dashboard/state", "get", "/api/v1/dashboard/state", None, None),
        ("/api/v1/routes", "get", "/api/v1/routes", None, None),
        ("/api/v1/routes", "get", "/api/v1/routes?service=ratings", None, None),
        ("/api/v1/top", "get", "/api/v1/top?seconds=0.1", mesh.token, None),
        ("/api/v1/top", "get", "/api/v1/top", None, None),
        ("/api/v1/errors", "get", "/api/v1/errors", None, None),
        ("/api/v1/namespaces/{ns}/routes/{name}", "get",
         "/api/v1/namespaces/default/routes/ratings", None, None),
        ("/api/v1/namespaces/{ns}/routes/{name}", "get",
         "/api/v1/namespaces/default/routes/nope", None, None),
        ("/api/v1/namespaces/{ns}/destinationpolicies", "get",
         "/api/v1/namespaces/default/destinationpolicies", None, None),
        ("/api/v1/services/{ns}/{name}/describe", "get",
         "/api/v1/services/default/ratings/describe", None, None),
        ("/api/v1/services/{ns}/{name}/describe", "get",
         "/api/v1/services/default/api.github.com/describe", None, None),
        ("/api/v1/services/{ns}/{name}/describe", "get",
         "/api/v1/services/default/ratngs/describe", None, None),
        ("/api/v1/proxies/{name}/logging", "get", f"/api/v1/proxies/{name}/logging", None,
         None),
        ("/api/v1/proxies/{name}/logging", "get", "/api/v1/proxies/nope/logging", None, None),
        ("/api/v1/proxies/{name}/config_dump", "get", f"/api/v1/proxies/{name}/config_dump",
         mesh.token, None),
        ("/api/v1/apply", "post", "/api/v1/apply", None, apply_text),
        ("/api/v1/apply", "post", "/api/v1/apply", mesh.token, apply_text),
        ("/api/v1/apply", "post", "/api/v1/apply?dryRun=All", mesh.token, apply_text),
        ("/api/v1/apply", "post", "/api/v1/apply?dryRun=All", mesh.token,
         RESOURCES.split("---")[2].replace("github", "gitlab")),
    ]
    seen = set()
    for template, method, url, token, body in cases:
        status, answer = http_json(mesh.api + url, method.upper(), body, token=token,
                                   content_type="application/yaml")
        _check(document, template, method, status, answer)
        seen.add(status)
    assert seen == {200, 400, 401, 404, 504}
    status, answer = http_json(mesh.api + "/openapi.json")
    _check(document, "/openapi.json", "get", status, answer)
    assert json.dumps(answer, sort_keys=True) == json.dumps(document, sort_keys=True)
