"""Observability mounted in a real `meshctl serve`: stat, check, /metrics and the dashboard."""

from __future__ import annotations

import json
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.helpers_mesh import MeshProcess, apply_yaml, http_get, wait_for
from tests.helpers_mesh import meshctl as run_meshctl
from tests.meshbuilder import Mesh
from tests.resources import destination_policy, documents, header_rule, mesh_config, route, split

pytestmark = pytest.mark.timeout(180)


@pytest.fixture(scope="module")
def cp(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[MeshProcess, MeshProcess]]:
    with Mesh(Path(tmp_path_factory.mktemp("cpobs"))) as mesh:
        started = time.monotonic()  # before any push: every push-ack time lies after it
        mesh.control_plane(mesh_config(mtls="DISABLE"), warmup=0.0)
        mesh.cp.info["started"] = started
        mesh.service("reviews", "v1")
        front = mesh.sidecar("productpage")
        mesh.wait_synced(20)
        yield mesh.cp, front


def meshctl(control: MeshProcess, *args: str) -> subprocess.CompletedProcess[str]:
    return run_meshctl(control, *args, timeout=30)


def test_stat_through_meshctl_serve(cp: tuple[MeshProcess, MeshProcess]) -> None:
    """Requests through control-plane-mode sidecars show up in `meshctl stat` from serve."""
    control, front = cp
    outbound = front.info["outbound"]

    def counted() -> bool:
        assert http_get(f"http://{outbound}/", {"Host": "reviews"})[0] == 200
        out = meshctl(control, "stat", "reviews", "-o", "json")
        assert out.returncode == 0, out.stderr
        rows = json.loads(out.stdout)["rows"]
        return bool(rows) and rows[0]["successRate"] == 1.0

    wait_for(counted, 30, "reviews in meshctl stat", interval=0.5)


def test_check_and_metrics_and_dashboard(cp: tuple[MeshProcess, MeshProcess]) -> None:
    """check passes on a synced mesh; serve exposes control-plane /metrics and the page."""
    control, _ = cp
    out = meshctl(control, "check")
    assert out.returncode == 0, out.stdout + out.stderr
    assert "✔ every proxy synced" in out.stdout
    status, body = http_get(control.info["api"] + "/metrics")
    assert status == 200 and b"ami_controlplane_proxies_connected 2.0" in body
    values = {line.split(" ")[0]: float(line.split(" ")[1]) for line in body.decode().splitlines()
              if line.startswith("ami_controlplane_") and " " in line}
    assert values["ami_controlplane_certificates_issued_total"] >= 2  # one per sidecar
    assert values["ami_controlplane_push_ack_seconds_count"] >= 2
    # Seconds, each no longer than the control plane has lived (no bound on time itself).
    lived = time.monotonic() - control.info["started"]
    assert 0 < values["ami_controlplane_push_ack_seconds_sum"] <= (
        values["ami_controlplane_push_ack_seconds_count"] * lived)
    status, body = http_get(control.info["api"] + "/dashboard")
    assert status == 200 and b'id="graph"' in body


ABORT_FOR_JASON = documents(destination_policy("reviews", ("v1",)), route("reviews", rules=[
    {**header_rule("v1", name="jason-abort"), "fault": {"abort": {"httpStatus": 503}},
     **split({"v1": 100})},
    {"name": "default", **split({"v1": 100})}]))


def test_stat_counts_replies_the_callers_sidecar_made(
        cp: tuple[MeshProcess, MeshProcess]) -> None:
    """Aborted requests never reach reviews' sidecar; stat must still count them (the demo's
    fault walkthrough), and edges must not call them plaintext. Runs last: it leaves errors."""
    control, front = cp
    outbound = front.info["outbound"]
    for _ in range(5):  # reviews' own sidecar reports these: its destination view exists
        assert http_get(f"http://{outbound}/", {"Host": "reviews"})[0] == 200
    apply_yaml(control, ABORT_FOR_JASON)

    def aborting() -> bool:
        return http_get(f"http://{outbound}/", {"Host": "reviews", "end-user": "jason"})[0] == 503

    wait_for(aborting, 20, "the abort rule live in the sidecar", interval=0.2)
    for _ in range(9):
        assert aborting()

    def failures_shown() -> bool:
        out = meshctl(control, "stat", "reviews", "-o", "json")
        assert out.returncode == 0, out.stderr
        rows = json.loads(out.stdout)["rows"]
        return bool(rows) and rows[0]["successRate"] is not None and rows[0]["successRate"] < 1
    wait_for(failures_shown, 30, "the aborts in meshctl stat", interval=0.5)

    # No connection was made for them: their security is unknown, neither mTLS nor plaintext.
    metrics = http_get(f"http://{front.info['admin']}/metrics")[1].decode()
    [aborted] = [line for line in metrics.splitlines()
                 if line.startswith("ami_requests_total{") and "fault_injected" in line]
    assert 'connection_security_policy="unknown"' in aborted
    assert aborted.endswith(" 10.0")


ROUTES_IN_TWO_NAMESPACES = documents(
    route("reviews", rules=[{"backends": [{"service": "reviews"}]}], namespace="default"),
    route("api", rules=[{"backends": [{"service": "api"}]}], namespace="shop"))


def test_every_namespaces_routes_beside_the_route_metrics(
        cp: tuple[MeshProcess, MeshProcess], tmp_path: Path) -> None:
    """`GET /api/v1/routes` is both the per-rule metrics (`meshctl routes S`, with `service=`)
    and every namespace's Route list (`meshctl get routes -A`, no query): the metrics route,
    mounted first, used to answer the list with `service: required`."""
    control, _ = cp
    path = tmp_path / "routes.yaml"
    path.write_text(ROUTES_IN_TWO_NAMESPACES)
    applied = meshctl(control, "apply", "-f", str(path))
    assert applied.returncode == 0, applied.stderr
    try:
        listed = meshctl(control, "get", "routes", "-A", "-o", "json")
        assert listed.returncode == 0, listed.stderr
        names = sorted((i["metadata"]["namespace"], i["metadata"]["name"])
                       for i in json.loads(listed.stdout)["items"])
        assert names == [("default", "reviews"), ("shop", "api")]
        metrics = meshctl(control, "routes", "reviews", "-o", "json")
        assert metrics.returncode == 0, metrics.stderr
        status, body = http_get(f"{control.info['api']}/api/v1/routes?window=1m", {})
        assert status == 400 and b"service: required" in body
    finally:
        meshctl(control, "delete", "-f", str(path))
