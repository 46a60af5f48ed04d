"""meshctl canary end to end: a real control plane, real sidecars and apps, steady traffic.

reviews v1 and v3 answer 200, v2 answers 500: v3 is promoted, v2 rolled back. The control
plane scrapes every 0.25 s so that a 1 s interval has metrics; every wait has a deadline.
"""

from __future__ import annotations

import re
import signal
import subprocess
from collections.abc import Iterator

import pytest

from tests.helpers_mesh import ROOT, http_json, wait_for
from tests.meshbuilder import Mesh
from tests.observe_harness import Traffic
from tests.resources import destination_policy, documents, route

pytestmark = pytest.mark.timeout(240)

BASE = documents(destination_policy("reviews", ("v1", "v2", "v3")),
                 route("reviews", {"v1": 100}))
# Fast analysis: 1 s intervals, half the traffic per step; p99 generous for a shared machine.
FAST = ("--interval", "1s", "--step", "50", "--min-requests", "5", "--max-p99", "2s")


class CanaryMesh(Mesh):
    """The control plane, reviews v1 (200), v2 (500) and v3 (200), and a client sidecar."""

    bare_env = True

    def build(self) -> CanaryMesh:
        self.control_plane(BASE, warmup=0.0, args=("--scrape-interval", "0.25"))
        self.service("reviews", "v1", "v2", "v3", status={"v2": 500})
        self.client = self.sidecar("productpage")
        return self

    def call(self) -> tuple[int, bytes]:
        return self.get(self.client, "reviews")

    def meshctl(self, *args: str, timeout: float = 120,
                bare_env: bool | None = None) -> subprocess.CompletedProcess[str]:
        return super().meshctl(*args, timeout=timeout, bare_env=bare_env)

    def weights(self) -> dict[str, int]:
        status, body = http_json(self.cp.info["api"]
                                 + "/api/v1/namespaces/default/routes/reviews")
        assert status == 200, body
        return {b["subset"]: b.get("weight", 100) for b in body["spec"]["rules"][-1]["backends"]}

    def reset(self) -> None:
        """All traffic back to v1, as a user would with `meshctl shift`."""
        out = self.meshctl("shift", "reviews", "v1=100")
        assert out.returncode == 0, out.stderr


@pytest.fixture(scope="module")
def mesh(tmp_path_factory: pytest.TempPathFactory) -> Iterator[CanaryMesh]:
    with CanaryMesh(tmp_path_factory.mktemp("canary")) as m:
        m.build().wait_synced()
        wait_for(lambda: m.call()[0] == 200, 20, "reviews reachable over mTLS")
        with Traffic(m.call):
            yield m


def _served_by(mesh: CanaryMesh, calls: int = 20) -> set[bytes]:
    return {mesh.call()[1] for _ in range(calls)}


def test_dry_run_prints_the_plan_and_changes_nothing(mesh: CanaryMesh) -> None:
    """--dry-run describes the steps and thresholds and writes nothing."""
    mesh.reset()
    _, before = http_json(mesh.cp.info["api"] + "/api/v1/namespaces/default/routes/reviews")
    out = mesh.meshctl("canary", "reviews", "--from", "v1", "--to", "v3", "--dry-run")
    assert out.returncode == 0, out.stderr
    assert out.stdout.splitlines() == [
        "canary reviews (namespace default): v1 -> v3, measured as version v3; now v1 100%",
        "  weights 10, 20, 30, 40, 50, 60, 70, 80, 90, 100, then promote (v3 100%)",
        "  every 30s: at least 20 requests, success rate >= 99.00%, p99 <= 500ms",
        "  roll back to v1 100% after 2 failed analyses in a row",
        "dry run: nothing changed"]
    _, after = http_json(mesh.cp.info["api"] + "/api/v1/namespaces/default/routes/reviews")
    assert after["metadata"]["resourceVersion"] == before["metadata"]["resourceVersion"]
    # the control plane scrapes at the interval it was given, and says so
    assert http_json(mesh.cp.info["api"] + "/api/v1/stat?window=1s")[1]["scrapeInterval"] == 0.25


def test_unknown_canary_subset_is_refused(mesh: CanaryMesh) -> None:
    """A --to the policy does not define changes nothing and says why."""
    out = mesh.meshctl("canary", "reviews", "--from", "v1", "--to", "v9", *FAST)
    assert out.returncode == 1
    assert out.stderr == ("error: unknown subset 'v9' for reviews (known: v1, v2, v3); "
                          "nothing changed\n")


def test_healthy_canary_is_promoted(mesh: CanaryMesh) -> None:
    """v3 answers 200: 50%, then 100%, then promoted; all traffic then reaches v3."""
    mesh.reset()
    out = mesh.meshctl("canary", "reviews", "--from", "v1", "--to", "v3", *FAST)
    assert out.returncode == 0, out.stdout + out.stderr
    decisions = [line.split(None, 5)[5] for line in out.stdout.splitlines()
                 if line[:2].isdigit()]
    assert decisions[0].startswith("start: v1 50% / v3 50%")
    advances = [d for d in decisions if d.startswith("advance")]
    assert [d.split(":")[0] for d in advances] == ["advance to 100"], out.stdout
    # (the weights are those of the advance to 100: an unchanged write, "N proxies in sync")
    assert decisions[-1].startswith("promote: v1 0% / v3 100% (") and "in sync" in decisions[-1]
    assert out.stdout.endswith("v3 promoted\n")
    assert mesh.weights() == {"v1": 0, "v3": 100}
    assert _served_by(mesh) == {b"reviews-v3"}


def test_failing_canary_is_rolled_back(mesh: CanaryMesh) -> None:
    """v2 answers 500: two failed analyses in a row put 100% back on v1; exit 1 with why."""
    mesh.reset()
    out = mesh.meshctl("canary", "reviews", "--from", "v1", "--to", "v2", *FAST)
    assert out.returncode == 1, out.stdout + out.stderr
    failures = [line for line in out.stdout.splitlines() if "success rate 0.00% < 99.00%" in line]
    assert len(failures) == 2 and "failure 1 of 2" in failures[0], out.stdout
    assert "roll back: success rate 0.00% < 99.00%, 2 failures in a row; v1 100% / v2 0%" \
        in failures[1]
    assert "advance" not in out.stdout
    assert out.stderr == "v2 rolled back: success rate 0.00% < 99.00%\n"
    assert mesh.weights() == {"v1": 100, "v2": 0, "v3": 0}
    assert _served_by(mesh) == {b"reviews-v1"}


def test_ctrl_c_leaves_the_weights_and_says_so(mesh: CanaryMesh) -> None:
    """SIGINT while holding (too few requests to judge): exit 130, the step's weights stay."""
    mesh.reset()
    log = mesh.tmp / "canary-interrupted.out"
    with log.open("w") as out, open(mesh.tmp / "canary-interrupted.err", "w+") as err:
        proc = subprocess.Popen(mesh.meshctl_argv("canary", "reviews", "--from", "v1", "--to", "v3",
                                          "--interval", "1s", "--min-requests", "1000000"),
                                stdout=out, stderr=err, cwd=ROOT, env=mesh.meshctl_env())
        try:
            wait_for(lambda: "hold: only" in log.read_text(), 60, "a held step")
            proc.send_signal(signal.SIGINT)
            assert proc.wait(30) == 130
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait(5)
        err.seek(0)
        message = err.read()
    said = re.fullmatch(r"interrupted: the weights are left as they are \((.*)\); run the "
                        r"same command to resume from there\n", message)
    assert said is not None, message
    assert set(said[1].split(" / ")) == {"v1 90%", "v2 0%", "v3 10%"}  # in the route's order
    assert mesh.weights() == {"v1": 90, "v2": 0, "v3": 10}
