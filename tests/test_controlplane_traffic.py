"""Traffic features declared as resources reach real sidecars via the control plane (mTLS on)."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.helpers_mesh import http_get, proxies, wait_for
from tests.meshbuilder import Mesh
from tests.resources import destination_policy, documents, header_rule, route, split

pytestmark = pytest.mark.timeout(180)

# No MeshConfig: the defaults apply, so mTLS is STRICT between the sidecars.
ROUTE = route("reviews", rules=[
    {**header_rule("v1", name="jason-abort"),
     "fault": {"abort": {"httpStatus": 418, "percent": 100}}, **split({"v1": 100})},
    {"name": "default", **split({"v1": 100, "v2": 0})}])
BASE = documents(destination_policy("reviews"), ROUTE)


class TrafficMesh(Mesh):
    """A control plane, reviews v1/v2 behind sidecars, and a productpage client sidecar."""

    bare_env = True

    def build(self) -> TrafficMesh:
        self.control_plane(BASE, warmup=0.0)
        self.service("reviews", "v1", "v2")
        self.client = self.sidecar("productpage")
        return self

    def call(self, headers: dict[str, str] | None = None) -> tuple[int, bytes]:
        return self.get(self.client, "reviews", headers=headers)


@pytest.fixture(scope="module")
def mesh(tmp_path_factory: pytest.TempPathFactory) -> Iterator[TrafficMesh]:
    with TrafficMesh(tmp_path_factory.mktemp("traffic")) as m:
        m.build().wait_synced()
        wait_for(lambda: m.call()[0] == 200, 20, "reviews reachable over mTLS")
        yield m


def test_sidecars_talk_mutual_tls_with_issued_certificates(mesh: TrafficMesh) -> None:
    """With the default MeshConfig every hop is mTLS, with certificates the control plane issued."""
    wait_for(lambda: {p["name"] for p in proxies(mesh.cp) if p["certExpiry"]} == mesh.names,
             20, "every proxy reporting its certificate")
    reviews_admin = next(p for p in mesh.procs if p.info.get("name", "").startswith("reviews-v1"))
    _, metrics = http_get(f"http://{reviews_admin.info['admin']}/metrics")
    inbound = [line for line in metrics.decode().splitlines()
               if line.startswith("ami_requests_total{") and 'reporter="destination"' in line]
    assert inbound and all('connection_security_policy="mutual_tls"' in line for line in inbound)
    assert any('source_workload="productpage"' in line for line in inbound)


def test_fault_for_a_header_match_is_enforced_by_the_caller(mesh: TrafficMesh) -> None:
    """jason's requests get the declared abort with its reason word; others are served."""
    status, body = mesh.call({"end-user": "jason"})
    assert status == 418 and b"fault_injected" in body
    assert mesh.call({"end-user": "alice"}) == (200, b"reviews-v1")


def test_meshctl_shift_waits_for_every_sidecar_and_moves_traffic(mesh: TrafficMesh) -> None:
    """`meshctl shift reviews 0/100` returns once all sidecars ACKed; traffic then goes to v2."""
    out = mesh.meshctl("shift", "reviews", "0/100")
    assert out.returncode == 0, out.stderr
    assert "v2 100%" in out.stdout and "synced" in out.stdout
    assert {mesh.call()[1] for _ in range(10)} == {b"reviews-v2"}
    refused = mesh.meshctl("shift", "reviews", "60/41")
    assert refused.returncode != 0 and "weights sum to 101, must be 100" in refused.stderr
    assert {mesh.call()[1] for _ in range(10)} == {b"reviews-v2"}, "a refused shift changes nothing"
    assert mesh.meshctl("shift", "reviews", "v1=100,v2=0").returncode == 0
    assert {mesh.call()[1] for _ in range(10)} == {b"reviews-v1"}


def test_rate_limit_and_authorization_are_enforced_by_the_destination(mesh: TrafficMesh) -> None:
    """DestinationPolicy.rateLimit → 429 at reviews' inbound; a DENY policy → 403 by identity."""
    # A token per 1000 s: no run is slow enough to see a refill, so the count is exact.
    revision = mesh.apply(destination_policy(
        "reviews", rateLimit={"requestsPerSecond": 0.001, "burst": 2}), ROUTE)
    mesh.sync(revision)
    statuses = [mesh.call()[0] for _ in range(6)]
    assert statuses == [200, 200, 429, 429, 429, 429], statuses
    revision = mesh.apply(BASE + """\
---
apiVersion: ami.mesh/v1alpha1
kind: AuthorizationPolicy
metadata: {name: no-productpage}
spec:
  selector: {service: reviews}
  action: DENY
  rules: [{from: [{services: [productpage]}]}]
""")
    mesh.sync(revision)
    status, body = mesh.call()
    assert status == 403 and b"not_authorized" in body
