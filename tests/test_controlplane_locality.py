"""Locality failover with real processes: meshctl serve, a caller sidecar in zone r1/a, the
`api` service's sidecars in zones r1/a and r1/b in front of apps whose answers a test sets."""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.helpers_mesh import (
    MeshProcess,
    all_synced,
    apply_yaml,
    http_get,
    proxies,
    start_control_plane,
    start_sidecar,
    wait_for,
)
from tests.proxyharness import Backends
from tests.traffic_backends import TrafficBackend, close_backends, start_backend

pytestmark = pytest.mark.timeout(180)

POLICY = """\
apiVersion: ami.mesh/v1alpha1
kind: DestinationPolicy
metadata: {name: api}
spec:
  host: api
  loadBalancer: ROUND_ROBIN
  outlierDetection: {consecutive5xxErrors: 1, interval: 1s, baseEjectionTime: 1s,
                     maxEjectionPercent: 100}
"""


class Zones:
    """The processes, and the apps of zone a and zone b."""

    def __init__(self, tmp: Path) -> None:
        self.procs: list[MeshProcess] = []
        self.hub = Backends()
        self.apps: dict[str, TrafficBackend] = {}
        self.cp = start_control_plane(tmp)
        try:
            grpc = self.cp.info["grpc"]
            for zone in ("a", "b"):
                app = self.apps[zone] = start_backend(self.hub, version=zone)
                self.procs.append(start_sidecar(tmp, grpc, "api", "v1", app=app.address,
                                                extra=["--locality", f"r1/{zone}"]))
            self.client = start_sidecar(tmp, grpc, "web", "v1", extra=["--locality", "r1/a"])
            self.procs.append(self.client)
            apply_yaml(self.cp, POLICY)
            names = {p.info["name"] for p in self.procs}
            wait_for(lambda: all_synced(self.cp, names), 30, "all proxies synced")
        except BaseException:
            self.close()
            raise

    def zone(self) -> str | None:
        """Which zone's app answered one call from the caller (None: an error of the mesh)."""
        status, body = http_get(f"http://{self.client.info['outbound']}/", {"Host": "api"})
        try:
            return str(json.loads(body)["version"])
        except ValueError:
            assert status >= 500, (status, body)
            return None

    def zones(self, n: int) -> Counter[str | None]:
        return Counter(self.zone() for _ in range(n))

    def close(self) -> None:
        for proc in [*self.procs, self.cp]:
            proc.stop()
        close_backends(self.hub, self.apps.values())


@pytest.fixture(scope="module")
def mesh(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Zones]:
    zones = Zones(tmp_path_factory.mktemp("locality"))
    try:
        yield zones
    finally:
        zones.close()


def test_proxy_status_shows_each_proxys_locality(mesh: Zones) -> None:
    """`locality` in proxy-status JSON, as each sidecar registered it."""
    assert sorted((p["service"], p["locality"]) for p in proxies(mesh.cp)) == [
        ("api", "r1/a"), ("api", "r1/b"), ("web", "r1/a")]


def test_traffic_stays_in_zone_fails_over_and_returns(mesh: Zones) -> None:
    """All to zone a; a's app answers 5xx: one 5xx ejects it, then all to zone b; a answers
    again: after baseEjectionTime (1 s) all back to zone a."""
    a = mesh.apps["a"]
    assert mesh.zones(20) == {"a": 20}
    a.status = 500
    assert mesh.zone() == "a"  # the 5xx (passed through by a's sidecar) that ejects it
    assert mesh.zones(20) == {"b": 20}
    a.status = 200
    wait_for(lambda: mesh.zone() == "a", 15, "zone a back after its ejection")
    assert mesh.zones(20) == {"a": 20}


MESH = """\
apiVersion: ami.mesh/v1alpha1
kind: MeshConfig
metadata: {name: default}
spec: %s
"""


def test_a_mesh_wide_setting_applies_where_the_policy_sets_none(mesh: Zones) -> None:
    """MeshConfig localityLbSetting sends r1/a's traffic to r1/b: `api`'s policy sets none,
    so all goes to zone b; the policy's own setting then wins entirely (failover: zone a);
    the mesh's removed, the snapshot is the mesh's default again."""
    apply_yaml(mesh.cp, MESH % "{localityLbSetting: {distribute: [{from: r1/a/*, "
                               "to: {r1/b/*: 100}}]}}")
    wait_for(lambda: mesh.zone() == "b", 15, "the mesh's distribute in force")
    assert mesh.zones(20) == {"b": 20}
    apply_yaml(mesh.cp, POLICY + "  localityLbSetting: {enabled: true}\n")
    wait_for(lambda: mesh.zone() == "a", 15, "the policy's own setting in force")
    assert mesh.zones(20) == {"a": 20}
    apply_yaml(mesh.cp, MESH % "{}")
    apply_yaml(mesh.cp, POLICY)
    wait_for(lambda: all_synced(mesh.cp, {p.info["name"] for p in mesh.procs}), 30,
             "all proxies synced")
    assert mesh.zones(20) == {"a": 20}
