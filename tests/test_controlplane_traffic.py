"""Traffic features declared as resources reach real sidecars via the control plane (mTLS on)."""

from __future__ import annotations

import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.helpers_mesh import (
    PYTHON,
    ROOT,
    MeshProcess,
    all_synced,
    apply_yaml,
    http_get,
    http_json,
    proxies,
    start_backend,
    start_control_plane,
    start_sidecar,
    wait_for,
)

pytestmark = pytest.mark.timeout(180)

# No MeshConfig: the defaults apply, so mTLS is STRICT between the sidecars.
BASE = """\
apiVersion: ami.mesh/v1alpha1
kind: DestinationPolicy
metadata: {name: reviews}
spec:
  host: reviews
  subsets:
    - {name: v1, labels: {version: v1}}
    - {name: v2, labels: {version: v2}}
---
apiVersion: ami.mesh/v1alpha1
kind: Route
metadata: {name: reviews}
spec:
  host: reviews
  rules:
    - name: jason-abort
      matches: [{headers: {end-user: {exact: jason}}}]
      fault: {abort: {httpStatus: 418, percent: 100}}
      backends: [{subset: v1, weight: 100}]
    - name: default
      backends: [{subset: v1, weight: 100}, {subset: v2, weight: 0}]
"""


class TrafficMesh:
    """A control plane, reviews v1/v2 behind sidecars, and a productpage client sidecar."""

    def __init__(self, tmp: Path) -> None:
        self.procs: list[MeshProcess] = []
        config_dir = tmp / "mesh"
        config_dir.mkdir()
        (config_dir / "base.yaml").write_text(BASE)
        self.cp = start_control_plane(tmp, config_dir=config_dir, warmup=0.0)
        for version in ("v1", "v2"):
            backend = start_backend(tmp, f"reviews-{version}")
            self.procs += [backend, start_sidecar(tmp, self.cp.info["grpc"], "reviews", version,
                                                  app=backend.info["address"])]
        self.client = start_sidecar(tmp, self.cp.info["grpc"], "productpage", "v1")
        self.procs.append(self.client)
        self.names = {p.info["name"] for p in self.procs if "name" in p.info}

    def call(self, headers: dict[str, str] | None = None) -> tuple[int, bytes]:
        return http_get(f"http://{self.client.info['outbound']}/",
                        {"Host": "reviews", **(headers or {})})

    def meshctl(self, *args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([PYTHON, "-m", "meshctl", "--control-plane", self.cp.info["api"],
                               *args], capture_output=True, text=True, cwd=ROOT, timeout=60,
                              env={"AMI_TOKEN": self.cp.info["token"], "PATH": "/usr/bin"})

    def apply(self, text: str) -> int:
        return apply_yaml(self.cp, text)

    def sync(self, revision: int) -> None:
        status, body = http_json(self.cp.info["api"]
                                 + f"/api/v1/sync?storeVersion={revision}&timeout=15")
        assert status == 200 and body["synced"], body


@pytest.fixture(scope="module")
def mesh(tmp_path_factory: pytest.TempPathFactory) -> Iterator[TrafficMesh]:
    m = TrafficMesh(tmp_path_factory.mktemp("traffic"))
    try:
        wait_for(lambda: all_synced(m.cp, m.names), 30, "all proxies synced")
        wait_for(lambda: m.call()[0] == 200, 20, "reviews reachable over mTLS")
        yield m
    finally:
        for proc in [*m.procs, m.cp]:
            proc.stop()


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
    revision = mesh.apply(BASE.replace(
        "  host: reviews\n  subsets:",
        "  host: reviews\n  rateLimit: {requestsPerSecond: 0.5, burst: 2}\n  subsets:", 1))
    mesh.sync(revision)
    statuses = [mesh.call()[0] for _ in range(6)]
    assert statuses.count(429) >= 3 and statuses[:2] == [200, 200], statuses
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
