"""An Istio ServiceEntry (with a VirtualService of its host) applied as written to a real
control plane and a real sidecar (REGISTRY_ONLY): the app reaches the outside host it declares,
the VirtualService's rules apply to it, and `delete -f` takes the host away again; an Istio
Sidecar scopes the host out and back in, an Istio Telemetry logs only the failures; applied
again unchanged, edited (diff -f first), and an Ami ExternalService of its host refused naming
the ServiceEntry it was translated from."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.helpers_mesh import http_json, wait_for
from tests.meshbuilder import Mesh

pytestmark = pytest.mark.timeout(180)

# the egress-control task's ServiceEntry, its endpoint a local server standing in for the host
SERVICE_ENTRY = """\
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata:
  name: partner
spec:
  hosts:
  - api.partner.test
  ports:
  - number: {port}
    name: http
    protocol: HTTP
  resolution: STATIC
  location: MESH_EXTERNAL
  endpoints:
  - address: 127.0.0.1
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata:
  name: partner
spec:
  hosts:
  - api.partner.test
  http:
  - match:
    - headers:
        x-teapot:
          exact: "1"
    fault:
      abort:
        httpStatus: 418
        percentage:
          value: 100
    route:
    - destination:
        host: api.partner.test
  - route:
    - destination:
        host: api.partner.test
"""


# the Sidecar reference's shape, and the access-log task's Telemetry with its filter
SCOPE_AND_LOG = """\
apiVersion: networking.istio.io/v1
kind: Sidecar
metadata:
  name: default
spec:
  egress:
  - hosts:
    - "{host}"
---
apiVersion: telemetry.istio.io/v1
kind: Telemetry
metadata:
  name: namespace-logging
spec:
  accessLogging:
  - providers:
    - name: envoy
    filter:
      expression: response.code >= 400
"""


class EgressMesh(Mesh):
    """A control plane, an outside HTTP server and a client sidecar (REGISTRY_ONLY)."""

    bare_env = True

    def build(self) -> EgressMesh:
        self.control_plane(warmup=0.0)
        self.api = self.backend("partner-api")
        self.port = int(self.api.info["address"].rpartition(":")[2])
        self.client = self.sidecar("productpage")
        return self

    def call(self, headers: dict[str, str] | None = None) -> tuple[int, bytes]:
        return self.get(self.client, f"api.partner.test:{self.port}", headers=headers)

    def stored(self, plural: str, name: str) -> dict[str, Any]:
        status, body = http_json(f"{self.cp.info['api']}/api/v1/namespaces/default/"
                                 f"{plural}/{name}", token=self.cp.info["token"])
        assert status == 200 and isinstance(body, dict), body
        return body


@pytest.fixture(scope="module")
def mesh(tmp_path_factory: pytest.TempPathFactory) -> Iterator[EgressMesh]:
    with EgressMesh(tmp_path_factory.mktemp("istio-egress")) as m:
        m.build().wait_synced()
        yield m


def test_a_refused_service_entry_names_the_istio_field(mesh: EgressMesh, tmp_path: Path) -> None:
    file = tmp_path / "internal.yaml"
    file.write_text(SERVICE_ENTRY.format(port=mesh.port).replace(
        "location: MESH_EXTERNAL", "location: MESH_INTERNAL"))
    refused = mesh.meshctl("apply", "-f", str(file))
    assert refused.returncode == 1, refused.stdout
    assert f"error: {file} doc 1: spec.location: not supported by Ami: MESH_INTERNAL" \
        in refused.stderr, refused.stderr
    status, body = http_json(mesh.cp.info["api"] + "/api/v1/namespaces/default/"
                             "externalservices/partner", token=mesh.cp.info["token"])
    assert status == 404, body  # nothing of the file was applied


def test_a_service_entry_lets_the_app_reach_its_host(mesh: EgressMesh, tmp_path: Path) -> None:
    status, body = mesh.call()
    assert (status, b"no_route" in body) == (404, True), "REGISTRY_ONLY: refused before"
    file = tmp_path / "egress.yaml"
    file.write_text(SERVICE_ENTRY.format(port=mesh.port))
    applied = mesh.meshctl("apply", "-f", str(file))
    assert applied.returncode == 0, applied.stderr
    assert applied.stdout.splitlines() == [
        "serviceentry.networking.istio.io/partner -> externalservice.ami.mesh/partner created",
        "virtualservice.networking.istio.io/partner -> route.ami.mesh/partner created"]
    stored = mesh.stored("externalservices", "partner")
    assert stored["spec"] == {"hosts": ["api.partner.test"],
                              "ports": [{"number": mesh.port, "protocol": "HTTP"}],
                              "endpoints": [{"address": "127.0.0.1"}]}
    assert stored["metadata"]["annotations"] == {
        "ami.mesh/translated-from": "serviceentry.networking.istio.io/partner"}
    mesh.sync(int(mesh.stored("routes", "partner")["metadata"]["resourceVersion"]))

    assert mesh.call() == (200, b"partner-api")
    # the VirtualService's rules are the host's, applied by the caller's sidecar
    status, _ = mesh.call({"x-teapot": "1"})
    assert status == 418
    same = mesh.meshctl("diff", "-f", str(file))
    assert same.returncode == 0 and same.stdout == "", same.stdout + same.stderr
    # describe names the ServiceEntry the user wrote, beside the ExternalService it became
    page = mesh.meshctl("describe", "svc", "api.partner.test")
    assert page.returncode == 0, page.stderr
    assert ("  externalservice.ami.mesh/partner (namespace default, version "
            in page.stdout and ", translated from serviceentry.networking.istio.io/partner): "
            f"host api.partner.test, ports {mesh.port}/HTTP, endpoints 127.0.0.1"
            in page.stdout), page.stdout
    assert ", translated from virtualservice.networking.istio.io/partner)" in page.stdout
    listed = mesh.meshctl("get", "serviceentries")
    assert listed.returncode == 2 and (
        "an Istio ServiceEntry is stored as the ExternalService it is translated into; use "
        "externalservices") in listed.stderr, listed.stderr

    deleted = mesh.meshctl("delete", "-f", str(file))
    assert deleted.returncode == 0, deleted.stderr
    assert sorted(deleted.stdout.splitlines()) == [
        "serviceentry.networking.istio.io/partner -> externalservice.ami.mesh/partner deleted",
        "virtualservice.networking.istio.io/partner -> route.ami.mesh/partner deleted"]
    wait_for(lambda: mesh.call()[0] == 404, 20, "the sidecar refusing the host again")


def test_an_istio_sidecar_scopes_the_host_and_a_telemetry_logs_failures(
        mesh: EgressMesh, tmp_path: Path) -> None:
    entry = tmp_path / "entry.yaml"
    entry.write_text(SERVICE_ENTRY.format(port=mesh.port).split("---")[0])
    scope = tmp_path / "scope.yaml"
    scope.write_text(SCOPE_AND_LOG.format(host="~/*"))  # no host at all
    applied = mesh.meshctl("apply", "-f", str(entry), "-f", str(scope))
    assert applied.returncode == 0, applied.stderr
    assert applied.stdout.splitlines() == [
        "serviceentry.networking.istio.io/partner -> externalservice.ami.mesh/partner created",
        "sidecar.networking.istio.io/default -> sidecar.ami.mesh/default created",
        "telemetry.telemetry.istio.io/namespace-logging -> telemetry.ami.mesh/namespace-logging "
        "created"]
    mesh.sync(int(mesh.stored("telemetries", "namespace-logging")["metadata"]
                  ["resourceVersion"]))
    status, body = mesh.call()
    assert (status, b"no_route" in body) == (404, True), "out of the Sidecar's scope"
    scope.write_text(SCOPE_AND_LOG.format(host="./api.partner.test"))
    again = mesh.meshctl("apply", "-f", str(scope))
    assert again.returncode == 0, again.stderr
    mesh.sync(int(mesh.stored("sidecars", "default")["metadata"]["resourceVersion"]))
    assert mesh.call() == (200, b"partner-api")

    # the filter: the refused host's 404 is logged, the 200s are not
    status, _ = mesh.get(mesh.client, "other.partner.test", "/refused")
    assert status == 404

    def lines() -> list[tuple[str, int]]:
        return [(line["path"], line["status"]) for line in map(json.loads, (
            text for text in mesh.client.output().splitlines() if text.startswith("{")))
            if "listener" in line]
    wait_for(lambda: ("/refused", 404) in lines(), 20, "the 404's access log line")
    assert not [entry for entry in lines() if entry[1] == 200], lines()

    deleted = mesh.meshctl("delete", "-f", str(entry), "-f", str(scope))
    assert deleted.returncode == 0, deleted.stderr


def test_apply_again_edit_diff_and_an_ami_external_service_of_the_same_host(
        mesh: EgressMesh, tmp_path: Path) -> None:
    """The lifecycle of an Istio ServiceEntry: applied twice unchanged, edited (diff -f shows
    the edit before apply), and an Ami ExternalService of its host refused beside it."""
    entry = SERVICE_ENTRY.split("---")[0]
    file = tmp_path / "entry.yaml"
    file.write_text(entry.format(port=mesh.port))
    first = mesh.meshctl("apply", "-f", str(file))
    assert first.returncode == 0, first.stderr
    again = mesh.meshctl("apply", "-f", str(file))
    assert again.returncode == 0, again.stderr
    assert again.stdout.splitlines() == [
        "serviceentry.networking.istio.io/partner -> externalservice.ami.mesh/partner unchanged"]
    # edited: a second host; diff -f shows it before apply, then apply configures it
    file.write_text(entry.format(port=mesh.port).replace(
        "  - api.partner.test\n", "  - api.partner.test\n  - eu.partner.test\n"))
    diff = mesh.meshctl("diff", "-f", str(file))
    assert diff.returncode == 1 and "+  - eu.partner.test" in diff.stdout, diff.stdout
    edited = mesh.meshctl("apply", "-f", str(file))
    assert edited.returncode == 0, edited.stderr
    assert edited.stdout.splitlines() == [
        "serviceentry.networking.istio.io/partner -> externalservice.ami.mesh/partner "
        "configured"]
    assert mesh.stored("externalservices", "partner")["spec"]["hosts"] == [
        "api.partner.test", "eu.partner.test"]
    # an Ami ExternalService of the same host, in the same namespace: refused, naming both
    ami = tmp_path / "ami.yaml"
    ami.write_text("apiVersion: ami.mesh/v1alpha1\nkind: ExternalService\n"
                   "metadata: {name: partner-ami}\n"
                   f"spec: {{hosts: [eu.partner.test], ports: [{{number: {mesh.port}, "
                   "protocol: HTTP}]}\n")
    refused = mesh.meshctl("apply", "-f", str(ami))
    assert refused.returncode != 0, refused.stdout
    assert ("spec.hosts[0]: host eu.partner.test already has an ExternalService (see "
            "ExternalService default/partner, translated from "
            "serviceentry.networking.istio.io/partner") in refused.stderr, refused.stderr
    deleted = mesh.meshctl("delete", "-f", str(file))
    assert deleted.returncode == 0, deleted.stderr
    wait_for(lambda: mesh.call()[0] == 404, 20, "the sidecar refusing the host again")
