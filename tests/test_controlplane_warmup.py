"""Slow start through real processes (`meshctl serve`, sidecars, apps, mTLS): a replica that
registers while its DestinationPolicy has a warmup gets a reduced share of a caller's traffic,
shown as WARMING by `meshctl proxy-config`, and its full share once the warmup is removed."""

from __future__ import annotations

import json
import os
import subprocess
from collections import Counter
from collections.abc import Iterator
from typing import Any

import pytest

from tests import meshbuilder
from tests.helpers_mesh import PYTHON, MeshProcess, http_json, wait_for
from tests.proxyharness import Backends
from tests.resources import destination_policy, documents
from tests.traffic_backends import TrafficBackend, close_backends, start_backend

pytestmark = pytest.mark.timeout(180)

# An hour's window: for the whole test the new replica is at the 10% floor (Envoy's default
# minimumPercent), so its share is 0.1 / 1.1 of round robin's picks, about 9%, not 50%.
WARMUP = documents(destination_policy("reviews", (), loadBalancer="ROUND_ROBIN",
                                      warmup={"duration": "1h"}))
NO_WARMUP = documents(destination_policy("reviews", (), loadBalancer="ROUND_ROBIN"))
CALLS = 300


class Mesh(meshbuilder.Mesh):
    """reviews v1 behind its sidecar, a caller (web), and v2's app ready to join."""

    def build(self) -> Mesh:
        self.hub = Backends()
        self.apps: dict[str, TrafficBackend] = {
            v: start_backend(self.hub, version=v) for v in ("v1", "v2")}
        self.defer(lambda: close_backends(self.hub, self.apps.values()))
        self.home = self.tmp / "home"
        self.home.mkdir()
        self.control_plane(WARMUP, warmup=0.0)
        self.sidecar("reviews", "v1", app=self.apps["v1"].address)
        self.web = self.sidecar("web")
        self.wait_synced()
        wait_for(lambda: self.versions(1) == Counter(v1=1), 20, "reviews v1 reachable")
        return self

    def versions(self, calls: int) -> Counter[str]:
        """Which version answered each of ``calls`` requests of web's app for reviews."""
        seen: Counter[str] = Counter()
        for _ in range(calls):
            status, body = self.get(self.web, "reviews")
            assert status == 200, body
            seen[json.loads(body)["version"]] += 1
        return seen

    def reviews_health(self) -> dict[str, dict[str, Any]]:
        """web's live view of reviews' endpoints (its /config_dump), by version."""
        status, dump = http_json(f"http://{self.web.info['admin']}/config_dump")
        assert status == 200
        entries = (dump.get("endpointHealth") or {}).get("reviews", {}).get("endpoints", [])
        return {e["version"]: e for e in entries}

    def shown(self, *argv: str) -> str:
        env = {**{k: v for k, v in os.environ.items() if not k.startswith("AMI_")},
               "AMI_CONTROL_PLANE": self.cp.info["api"], "AMI_TOKEN": self.cp.info["token"],
               "HOME": str(self.home)}
        done = subprocess.run([PYTHON, "-m", "meshctl", "proxy-config", *argv], env=env,
                              cwd=self.home, capture_output=True, text=True, timeout=60)
        assert done.returncode == 0, done.stderr
        return done.stdout


@pytest.fixture(scope="module")
def mesh(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Mesh]:
    with Mesh(tmp_path_factory.mktemp("warmup-cp")) as built:
        yield built.build()


def test_a_new_replica_warms_up_and_gets_its_share_once_the_warmup_is_removed(
        mesh: Mesh) -> None:
    """v2 registers after web has seen v1: web sends it clearly less than round robin's half
    (but some), its proxy-config shows it warming; with the warmup removed, half."""
    v2: MeshProcess = mesh.sidecar("reviews", "v2", app=mesh.apps["v2"].address)
    wait_for(lambda: set(mesh.reviews_health()) == {"v1", "v2"}, 30, "web sees v2")
    health = mesh.reviews_health()
    assert "warmingSeconds" not in health["v1"]  # there before: warm
    assert health["v2"]["weightPercent"] == 10.0 and health["v2"]["warmingSeconds"] > 3000

    warming = mesh.versions(CALLS)
    assert 0 < warming["v2"] < CALLS // 4, warming  # expected ~27 of 300, not 150

    mesh.wait_certified(30)  # (the control plane reads web's dump over mTLS)
    endpoints = mesh.shown("endpoints", mesh.web.info["name"], "--service", "reviews")
    rows = {line.split()[2]: line for line in endpoints.splitlines()[1:]}  # by VERSION
    assert "WARMING (10% weight, " in rows["v2"] and " left)" in rows["v2"], endpoints
    assert "HEALTHY" in rows["v1"], endpoints
    clusters = mesh.shown("clusters", mesh.web.info["name"])
    assert "ROUND_ROBIN warmup 1h00m" in clusters, clusters

    mesh.apply_synced(NO_WARMUP)
    assert "warmingSeconds" not in mesh.reviews_health()["v2"]
    warm = mesh.versions(CALLS)
    assert abs(warm["v2"] - CALLS // 2) <= CALLS // 10, warm  # round robin: every other one
    assert v2.alive()
