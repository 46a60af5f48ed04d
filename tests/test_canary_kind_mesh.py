"""The Canary kind end to end: a real control plane runs it against real sidecars and apps.

reviews v1 and v3 answer 200, v2 answers 500, under steady traffic: a declared v3 canary is
promoted, a v2 one rolled back, `meshctl get`/`describe`/`check` show them, and a restarted
control plane resumes a run. Scrapes every 0.25 s, so a 1 s interval has metrics; every wait
has a deadline.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest

from meshctl.canary.controller import EVENTS_KEPT
from tests.helpers_mesh import apply_yaml, http_json, start_control_plane, wait_for
from tests.meshbuilder import Mesh
from tests.observe_harness import Traffic
from tests.test_canary_mesh import BASE

pytestmark = pytest.mark.timeout(300)

CANARY = """\
apiVersion: ami.mesh/v1alpha1
kind: Canary
metadata: {{name: {name}}}
spec:
  service: reviews
  stable: v1
  canary: {canary}
  stepWeight: 50
  interval: 1s
  thresholds: {{minRequests: {min_requests}, maxP99Ms: 2000}}
"""
SCRAPE = ("--scrape-interval", "0.25")


class KindMesh(Mesh):
    """The control plane, reviews v1 (200), v2 (500) and v3 (200), and a client sidecar."""

    bare_env = True  # meshctl with only the token and PATH

    def build(self) -> KindMesh:
        self.config_dir = self.tmp / "mesh"
        self.control_plane(BASE, warmup=0.0, args=SCRAPE)
        self.service("reviews", "v1", "v2", "v3", status={"v2": 500})
        self.client = self.sidecar("productpage")
        return self

    def call(self) -> tuple[int, bytes]:
        return self.get(self.client, "reviews")

    def weights(self) -> dict[str, int]:
        status, body = http_json(self.cp.info["api"]
                                 + "/api/v1/namespaces/default/routes/reviews")
        assert status == 200, body
        return {b["subset"]: b.get("weight", 100) for b in body["spec"]["rules"][-1]["backends"]}

    def canary(self, name: str) -> dict[str, Any]:
        status, body = http_json(self.cp.info["api"]
                                 + f"/api/v1/namespaces/default/canaries/{name}")
        assert status == 200, body
        return dict(body)

    def phase(self, name: str, *phases: str) -> dict[str, Any] | None:
        """The Canary once its phase is one of ``phases`` (None before: for wait_for)."""
        doc = self.canary(name)
        return doc if (doc.get("status") or {}).get("phase") in phases else None

    def declare(self, name: str, canary: str, min_requests: int = 5) -> None:
        apply_yaml(self.cp, CANARY.format(name=name, canary=canary, min_requests=min_requests))

    def reset(self) -> None:
        """All traffic back to v1, as a user would with `meshctl shift`."""
        out = self.meshctl("shift", "reviews", "v1=100")
        assert out.returncode == 0, out.stderr

    def restart_control_plane(self) -> None:
        """SIGTERM, then ``meshctl serve`` again on the same ports and directories."""
        api, grpc = self.cp.info["api"], self.cp.info["grpc"]
        assert self.cp.stop() == 0, self.cp.output()
        self.cp = start_control_plane(self.tmp, config_dir=self.config_dir, warmup=0.0,
                                      http_port=int(api.rsplit(":", 1)[1]),
                                      grpc_port=int(grpc.rsplit(":", 1)[1]), args=SCRAPE)


@pytest.fixture(scope="module")
def mesh(tmp_path_factory: pytest.TempPathFactory) -> Iterator[KindMesh]:
    with KindMesh(tmp_path_factory.mktemp("canarykind")) as m:
        m.build().wait_synced()
        wait_for(lambda: m.call()[0] == 200, 20, "reviews reachable over mTLS")
        with Traffic(m.call):
            yield m


def _served_by(mesh: KindMesh, calls: int = 20) -> set[bytes]:
    return {mesh.call()[1] for _ in range(calls)}


def test_declared_healthy_canary_is_promoted(mesh: KindMesh) -> None:
    """v3 answers 200: the control plane steps it to 50%, 100%, then promotes it."""
    mesh.reset()
    mesh.declare("reviews-v3", "v3")
    doc = wait_for(lambda: mesh.phase("reviews-v3", "Succeeded", "RolledBack", "Failed"), 90,
                   "the v3 canary to finish")
    status = doc["status"]
    assert status["phase"] == "Succeeded", status
    assert status["message"] == "v3 promoted: v1 0% / v3 100%"
    messages = [e["message"] for e in status["events"]]
    # (the status keeps the last EVENTS_KEPT: under load, holds may push the start out)
    assert messages[0] == "start: v1 50% / v3 50%" or len(messages) == EVENTS_KEPT, messages
    assert "advance to 100: v1 0% / v3 100%" in messages, messages
    assert status["lastAnalysis"]["successRate"] == 1.0
    assert mesh.weights() == {"v1": 0, "v3": 100}
    wait_for(lambda: _served_by(mesh) == {b"reviews-v3"}, 20, "every request served by v3")
    out = mesh.meshctl("get", "canary")
    assert out.returncode == 0, out.stderr
    header, row = out.stdout.splitlines()
    assert header.split() == ["NAME", "SERVICE", "STABLE", "CANARY", "WEIGHT", "PHASE",
                              "VERSION", "STATUS"]
    assert row.split()[:6] == ["reviews-v3", "reviews", "v1", "v3", "100", "Succeeded"]
    out = mesh.meshctl("describe", "canary", "reviews-v3")
    assert out.returncode == 0, out.stderr
    assert "Phase:             Succeeded (since " in out.stdout
    assert "Weight:            v1 0% / v3 100%" in out.stdout
    assert messages[-1] in out.stdout and messages[0] in out.stdout  # the events table
    # deleting a finished Canary leaves the weights as they are
    assert mesh.meshctl("delete", "canary", "reviews-v3").returncode == 0
    assert mesh.weights() == {"v1": 0, "v3": 100}


def test_declared_failing_canary_is_rolled_back(mesh: KindMesh) -> None:
    """v2 answers 500: two failed analyses in a row put 100% back on v1."""
    mesh.reset()
    mesh.declare("reviews-v2", "v2")
    doc = wait_for(lambda: mesh.phase("reviews-v2", "Succeeded", "RolledBack", "Failed"), 90,
                   "the v2 canary to finish")
    status = doc["status"]
    assert status["phase"] == "RolledBack", status
    assert status["message"] == ("roll back: success rate 0.00% < 99.00%, 2 failures in a "
                                 "row: v1 100% / v2 0%")
    assert status["lastAnalysis"]["failedChecks"] == ["success rate 0.00% < 99.00%"]
    assert not any(e["message"].startswith("advance") for e in status["events"])
    assert mesh.weights() == {"v1": 100, "v2": 0, "v3": 0}
    wait_for(lambda: _served_by(mesh) == {b"reviews-v1"}, 20, "every request served by v1")
    assert mesh.meshctl("delete", "canary", "reviews-v2").returncode == 0


def test_check_warns_about_a_canary_without_its_subset(mesh: KindMesh) -> None:
    mesh.declare("reviews-v9", "v9")
    doc = wait_for(lambda: mesh.phase("reviews-v9", "Initializing"), 30, "a waiting canary")
    assert doc["status"]["message"] == ("waiting: subset 'v9' of reviews is not defined by a "
                                        "DestinationPolicy")
    status, body = http_json(mesh.cp.info["api"] + "/api/v1/check")
    assert status == 200, body
    group = next(g for g in body["groups"] if g["title"] == "Canary")
    check = next(c for c in group["checks"] if c["name"] == "canary default/reviews-v9")
    assert check["state"] == "warn"
    assert check["detail"] == "subset 'v9' of reviews is not defined by a DestinationPolicy"
    assert mesh.meshctl("delete", "canary", "reviews-v9").returncode == 0


def test_a_restarted_control_plane_resumes_the_run(mesh: KindMesh) -> None:
    """Holding at 50% (too few requests to judge) across a restart: the same run goes on,
    with its weight, its events and its count of holds, and no second start."""
    mesh.reset()
    mesh.declare("reviews-hold", "v3", min_requests=1_000_000)
    before = wait_for(lambda: mesh.phase("reviews-hold", "Holding"), 60, "a held canary")
    assert mesh.weights() == {"v1": 50, "v2": 0, "v3": 50}
    mesh.restart_control_plane()

    def held_more() -> dict[str, Any] | None:
        doc = mesh.phase("reviews-hold", "Holding")
        held = doc["status"]["heldChecks"] if doc else 0
        return doc if held > before["status"]["heldChecks"] else None

    after = wait_for(held_more, 60, "a hold after the restart")["status"]
    assert after["canaryWeight"] == 50
    starts = [e for e in after["events"] if e["message"].startswith("start")]
    assert starts == before["status"]["events"][:1]
    assert mesh.weights() == {"v1": 50, "v2": 0, "v3": 50}
    assert mesh.meshctl("delete", "canary", "reviews-hold").returncode == 0
    mesh.reset()


def test_the_dashboard_state_shows_the_canary(mesh: KindMesh) -> None:
    """/api/v1/dashboard/state lists the Canary as its panel draws it: subsets, weight, phase,
    the last analysis beside the thresholds, the last events."""
    mesh.reset()
    mesh.declare("reviews-v3", "v3")
    wait_for(lambda: mesh.phase("reviews-v3", "Succeeded", "RolledBack", "Failed"), 90,
             "the v3 canary to finish")
    status, state = http_json(mesh.cp.info["api"] + "/api/v1/dashboard/state")
    assert status == 200, state
    [panel] = state["canaries"]
    assert {k: panel[k] for k in ("name", "namespace", "service", "stable", "canary", "weight",
                                  "phase", "message", "failedChecks", "failures")} == {
        "name": "reviews-v3", "namespace": "default", "service": "reviews", "stable": "v1",
        "canary": "v3", "weight": 100, "phase": "Succeeded",
        "message": "v3 promoted: v1 0% / v3 100%", "failedChecks": 0, "failures": 2}
    assert panel["thresholds"] == {"minSuccessRate": 0.99, "maxP99Ms": 2000.0,
                                   "minRequests": 5}
    assert panel["lastAnalysis"]["successRate"] == 1.0
    assert panel["lastAnalysis"]["requests"] >= 5
    assert panel["events"][-1]["message"] == "v3 promoted: v1 0% / v3 100%"
    assert len(panel["events"]) <= 5
    assert mesh.meshctl("delete", "canary", "reviews-v3").returncode == 0
    status, state = http_json(mesh.cp.info["api"] + "/api/v1/dashboard/state")
    assert state["canaries"] == []
    mesh.reset()
