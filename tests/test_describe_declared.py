"""meshctl describe service for names with no sidecar, against a real control plane: a service
that only Routes and a DestinationPolicy declare, ExternalService hosts, and a name that
matches nothing.

Only ratings has a sidecar (and an app). details has a Route and a DestinationPolicy; two
ExternalServices declare api.github.com (resolved by DNS, with a Route and a policy) and
pay.example.org (fixed endpoints), and a wildcard *.cdn.example.net.
"""

from __future__ import annotations

import json
from collections.abc import Iterator

import pytest

from tests.meshbuilder import Mesh
from tests.test_describe_service import _section

pytestmark = pytest.mark.timeout(120)

RESOURCES = """\
apiVersion: ami.mesh/v1alpha1
kind: Route
metadata: {name: details}
spec:
  host: details
  rules:
    - name: api
      matches: [{path: {prefix: /api}}]
      backends: [{subset: v2}]
    - backends: [{subset: v1}]
---
apiVersion: ami.mesh/v1alpha1
kind: DestinationPolicy
metadata: {name: details}
spec:
  host: details
  loadBalancer: LEAST_REQUEST
  subsets: [{name: v1, labels: {version: v1}}, {name: v2, labels: {version: v2}}]
---
apiVersion: ami.mesh/v1alpha1
kind: ExternalService
metadata: {name: github}
spec:
  hosts: [api.github.com]
  ports: [{number: 80, protocol: HTTP}, {number: 443, protocol: TLS}]
---
apiVersion: ami.mesh/v1alpha1
kind: Route
metadata: {name: github}
spec: {host: api.github.com, rules: [{timeout: 2s, backends: [{}]}]}
---
apiVersion: ami.mesh/v1alpha1
kind: DestinationPolicy
metadata: {name: github}
spec: {host: api.github.com, connectionPool: {connectTimeout: 1s}}
---
apiVersion: ami.mesh/v1alpha1
kind: ExternalService
metadata: {name: payments, namespace: billing}
spec:
  hosts: [pay.example.org, "*.cdn.example.net"]
  ports: [{number: 80, protocol: HTTP, targetPort: 8080}]
---
apiVersion: ami.mesh/v1alpha1
kind: ExternalService
metadata: {name: payments-fixed, namespace: billing}
spec:
  hosts: [fixed.example.org]
  ports: [{number: 80, protocol: HTTP}]
  endpoints: [{address: 10.0.0.5}, {address: 10.0.0.6}]
"""


class DeclaredMesh(Mesh):
    """The control plane with RESOURCES read at start; ratings v1 behind its sidecar."""

    bare_env = True  # meshctl with only the token and PATH

    def build(self) -> DeclaredMesh:
        self.control_plane(RESOURCES, warmup=0.0)
        self.service("ratings", "v1")
        return self


@pytest.fixture(scope="module")
def mesh(tmp_path_factory: pytest.TempPathFactory) -> Iterator[DeclaredMesh]:
    with DeclaredMesh(tmp_path_factory.mktemp("describe-declared")) as m:
        m.build().wait_synced()
        yield m


def test_service_with_a_route_but_no_instances(mesh: DeclaredMesh) -> None:
    """A service only a Route and a DestinationPolicy name: the page says no instances are
    registered and still shows the Route's rules, the policy and each subset with 0
    endpoints, flagged."""
    out = mesh.meshctl("describe", "service", "details")
    assert out.returncode == 0, out.stderr
    page = out.stdout
    assert page.startswith("Service:           details\n")
    assert _section(page, "Instances:").startswith(
        "Instances:         <none> (no instances registered")
    routes = _section(page, "Routes:")
    assert "route.ami.mesh/details (namespace default, version " in routes
    assert "[api] path prefix=/api -> v2 100%" in routes and "* -> v1 100%" in routes
    policy = _section(page, "Destination Policy:")
    rows = {line.split()[0]: line for line in policy.splitlines()
            if line.split()[:1] in (["v1"], ["v2"])}
    for subset in ("v1", "v2"):
        assert rows[subset].split()[1:3] == [f"version={subset}", "0"]
        assert rows[subset].endswith("WARNING: selects no live endpoint")
    assert "loadBalancer: LEAST_REQUEST" in policy
    data = json.loads(mesh.meshctl("describe", "svc", "details", "-o", "json").stdout)
    assert (data["kind"], data["instances"]) == ("mesh", [])


def test_external_host_shows_its_declaration_route_and_policy(mesh: DeclaredMesh) -> None:
    """An ExternalService host: the declaring object with its ports and DNS resolution, the
    Route and DestinationPolicy its callers get; none of a sidecar's sections."""
    out = mesh.meshctl("describe", "service", "api.github.com")
    assert out.returncode == 0, out.stderr
    page = out.stdout
    assert page.startswith("Host:              api.github.com\n")
    external = _section(page, "External Service:")
    assert ("externalservice.ami.mesh/github (namespace default, version " in external
            and "host api.github.com, ports 80/HTTP, 443/TLS, resolved by DNS when "
                "connecting" in external)
    assert "route.ami.mesh/github (namespace default" in _section(page, "Routes:")
    assert "* -> (all) 100% timeout=2s" in _section(page, "Routes:")
    assert 'connectionPool: {"connectTimeout": "1s"}' in _section(page, "Destination Policy:")
    assert "Instances:" not in page and "mTLS:" not in page and "Authorization:" not in page


def test_external_hosts_with_endpoints_or_a_wildcard(mesh: DeclaredMesh) -> None:
    """Fixed endpoints are listed; a name only a wildcard covers names the wildcard, says
    Routes do not apply, and is counted under the wildcard; a target port is shown."""
    fixed = mesh.meshctl("describe", "service", "fixed.example.org")
    assert fixed.returncode == 0, fixed.stderr
    assert ("externalservice.ami.mesh/payments-fixed (namespace billing, version "
            in fixed.stdout and "endpoints 10.0.0.5, 10.0.0.6" in fixed.stdout)
    wild = mesh.meshctl("describe", "service", "img.cdn.example.net", "-o", "json")
    assert wild.returncode == 0, wild.stderr
    data = json.loads(wild.stdout)
    assert data["kind"] == "external" and data["metricsName"] == "*.cdn.example.net"
    assert data["externalServices"][0]["ports"] == [
        {"number": 80, "protocol": "HTTP", "targetPort": 8080}]
    page = mesh.meshctl("describe", "service", "img.cdn.example.net").stdout
    assert "ports 80/HTTP->8080" in page and "do not apply to it" in page


def test_a_name_that_matches_nothing(mesh: DeclaredMesh) -> None:
    """A misspelt name: exit 1 and one `error:` line suggesting the close names; with none
    close, the line lists the known services and hosts."""
    out = mesh.meshctl("describe", "service", "detials")
    assert (out.returncode, out.stdout) == (1, "")
    assert out.stderr.count("\n") == 1 and out.stderr.startswith(
        "error: no service 'detials' in namespace default: ")
    assert out.stderr.endswith("; did you mean default/details?\n")
    far = mesh.meshctl("describe", "service", "zzz")
    assert far.returncode == 1 and far.stderr.endswith(
        "; known services: *.cdn.example.net, api.github.com, default/details, "
        "default/ratings, fixed.example.org, pay.example.org\n")
    other = mesh.meshctl("describe", "service", "details", "-n", "shop")
    assert other.returncode == 1 and "did you mean default/details?" in other.stderr
