"""Locality failover with real processes: meshctl serve, a caller sidecar in zone r1/a, the
`api` service's sidecars in zones r1/a and r1/b in front of apps whose answers a test sets."""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Iterator

import pytest

from tests.helpers_mesh import all_synced, apply_yaml, http_get, proxies, wait_for
from tests.meshbuilder import Mesh
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


class Zones(Mesh):
    """The processes, and the apps of zone a and zone b."""

    def build(self) -> Zones:
        self.hub = Backends()
        self.apps: dict[str, TrafficBackend] = {}
        self.defer(lambda: close_backends(self.hub, self.apps.values()))
        self.control_plane()
        for zone in ("a", "b"):
            app = self.apps[zone] = start_backend(self.hub, version=zone)
            self.sidecar("api", app=app.address, extra=["--locality", f"r1/{zone}"])
        self.client = self.sidecar("web", extra=["--locality", "r1/a"])
        self.apply_synced(POLICY)
        self.wait_synced()
        return self

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



@pytest.fixture(scope="module")
def mesh(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Zones]:
    with Zones(tmp_path_factory.mktemp("locality")) as zones:
        yield zones.build()


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
    mesh.apply_synced(POLICY)  # (a wait on all_synced alone could pass before the write)
    wait_for(lambda: all_synced(mesh.cp, mesh.names), 30,
             "all proxies synced")
    assert mesh.zones(20) == {"a": 20}
