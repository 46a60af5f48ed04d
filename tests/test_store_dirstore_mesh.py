"""The watched config dir with real processes: `meshctl serve` on a real directory (and, where
what the sidecars run matters, sidecars), edited as people and git edit it. Every wait has a
deadline.

- a restart with a file that became invalid while the control plane was down keeps that
  file's last good version live (restored from the state dir), says so, and pushes nothing
  that lacks it;
- a resource moved from one file to another in one step (a git checkout) goes live, although
  each file alone is invalid against the other's old version;
- a file that is not UTF-8 is rejected naming the file and the line/column;
- a duplicate in the watched dir is reported with its field path, as `apply` reports it.
"""

from __future__ import annotations

import os
import stat
from pathlib import Path
from typing import Any

import pytest

from tests.helpers_mesh import (
    MeshProcess,
    http_get,
    http_json,
    start_control_plane,
    wait_for,
)
from tests.meshbuilder import Mesh
from tests.resources import destination_policy, documents, mesh_config, route

pytestmark = pytest.mark.timeout(180)


def errors(cp: MeshProcess) -> dict[str, str]:
    """The control plane's rejected files: source -> message."""
    status, body = http_json(cp.info["api"] + "/api/v1/errors", timeout=5)
    assert status == 200, body
    return {e["source"]: e["message"] for e in body["items"]}


def live(cp: MeshProcess, kind: str, name: str) -> dict[str, Any] | None:
    """The object as the control plane serves it (None: not live)."""
    status, body = http_json(cp.info["api"] + f"/api/v1/namespaces/default/{kind}/{name}",
                             timeout=5)
    return body if status == 200 else None


def running_routes(sidecar: MeshProcess) -> dict[str, list[dict[str, Any]]]:
    """What a sidecar runs: its routes' rules by host (from its admin /config_dump)."""
    status, body = http_json(f"http://{sidecar.info['admin']}/config_dump", timeout=5)
    assert status == 200, body
    snapshot = body["snapshot"] or {}
    return {host: r["rules"] for host, r in (snapshot.get("routes") or {}).items()}


def weights(rules: list[dict[str, Any]]) -> dict[str, int]:
    """A route's last rule's split, as ``{"v1": 90, ...}``."""
    return {b["subset"]: b["weight"] for b in rules[-1]["backends"]}


def running_weights(sidecar: MeshProcess) -> dict[str, int] | None:
    """The reviews split a sidecar runs (None: no reviews route)."""
    rules = running_routes(sidecar).get("reviews")
    return weights(rules) if rules else None


def restart(mesh: Mesh) -> None:
    """`meshctl serve` again on the same ports, config dir and state dir."""
    api, grpc_addr = mesh.cp.info["api"], mesh.cp.info["grpc"]
    mesh.cp = start_control_plane(mesh.tmp, config_dir=mesh.cp.info["config_dir"],
                                  http_port=int(api.rpartition(":")[2]),
                                  grpc_port=int(grpc_addr.rpartition(":")[2]))


def reviews(v1: int, v2: int) -> str:
    return documents(destination_policy("reviews"), route("reviews", {"v1": v1, "v2": v2}))


def test_restart_with_an_invalid_file_keeps_its_last_good_version(tmp_path: Path) -> None:
    """kill -9, an edit that makes reviews.yaml invalid (weights 60/60), a restart on the same
    state dir: reviews.yaml's last good objects stay live (restored from the state dir, which
    holds them with mode 0600), the log, `get` and `check` say so, and every sidecar keeps the
    route. A file that is invalid at start with no good version on record has nothing live.
    Fixing reviews.yaml then makes the fix live."""
    config = tmp_path / "mesh"
    config.mkdir()
    (config / "mesh.yaml").write_text(mesh_config(mtls="DISABLE"))
    (config / "reviews.yaml").write_text(reviews(90, 10))
    with Mesh(tmp_path) as mesh:
        mesh.control_plane()
        mesh.sidecar("reviews", "v1")
        client = mesh.sidecar("productpage")
        mesh.wait_synced(30)
        wait_for(lambda: running_weights(client) == {"v1": 90, "v2": 10}, 20,
                 "the route running in the client")
        state = mesh.cp.info["state_dir"] / "state.json"
        wait_for(lambda: state.exists(), 10, "the state file")
        mesh.cp.kill()
        (config / "reviews.yaml").write_text(reviews(60, 60))
        (config / "ratings.yaml").write_text(route("ratings", {"v1": 50, "v2": 51}))
        logged = len(mesh.cp.output())
        restart(mesh)
        mesh.wait_synced(30)

        found = wait_for(lambda: (e := errors(mesh.cp)) and len(e) == 2 and e, 10,
                         "both files rejected")
        assert "weights sum to 120, must be 100" in found["reviews.yaml"], found
        assert "restored from" in found["reviews.yaml"], found
        assert "weights sum to 101" in found["ratings.yaml"], found
        route_live = live(mesh.cp, "routes", "reviews")
        assert route_live is not None, "the last good Route is gone"
        assert weights(route_live["spec"]["rules"]) == {"v1": 90, "v2": 10}
        assert route_live["status"]["conditions"][0]["status"] == "False"
        assert live(mesh.cp, "routes", "ratings") is None  # no good version on record
        for sidecar in mesh.sidecar_procs:
            assert running_weights(sidecar) == {"v1": 90, "v2": 10}, sidecar.info["name"]
        table = mesh.meshctl("get", "rt")
        assert table.returncode == 0, table.stderr
        row = next(line for line in table.stdout.splitlines() if line.startswith("reviews "))
        assert "v1=90,v2=10" in row and "Rejected: " in row, table.stdout
        check = mesh.meshctl("check")
        assert "reviews.yaml" in check.stdout and "restored from" in check.stdout, check.stdout
        log = mesh.cp.output()[logged:]
        assert "rejected reviews.yaml; its last good version (restored at start) stays live" \
            in log, log
        assert "rejected ratings.yaml; nothing of it is live" in log, log
        assert stat.S_IMODE(os.stat(state).st_mode) == 0o600

        (config / "reviews.yaml").write_text(reviews(60, 40))
        wait_for(lambda: "reviews.yaml" not in errors(mesh.cp), 10, "the fix accepted")
        mesh.wait_synced(30)
        wait_for(lambda: running_weights(client) == {"v1": 60, "v2": 40}, 20,
                 "the fixed route running in the client")


def test_a_resource_moved_to_another_file_in_one_step_goes_live(tmp_path: Path) -> None:
    """As a git checkout does it: reviews.yaml rewritten to hold only the Route, its
    DestinationPolicy moved to a new dp-reviews.yaml. Each file alone is invalid against the
    other's old version; the directory as a whole is valid, so it goes live, with no
    rejection left. Then the reverse move, with the route's weights changed too."""
    config = tmp_path / "mesh"
    config.mkdir()
    (config / "mesh.yaml").write_text(mesh_config(mtls="DISABLE"))
    (config / "reviews.yaml").write_text(reviews(90, 10))
    with Mesh(tmp_path) as mesh:
        mesh.control_plane()
        client = mesh.sidecar("productpage")
        mesh.wait_synced(30)
        before = live(mesh.cp, "destinationpolicies", "reviews")
        assert before is not None
        (config / "reviews.yaml").write_text(route("reviews", {"v1": 80, "v2": 20}))
        (config / "dp-reviews.yaml").write_text(destination_policy("reviews"))

        def moved() -> dict[str, Any] | None:
            r = live(mesh.cp, "routes", "reviews")
            return r if r and weights(r["spec"]["rules"]) == {"v1": 80, "v2": 20} else None

        wait_for(moved, 10, "the new route live")
        wait_for(lambda: errors(mesh.cp) == {}, 10, "no rejection left")
        after = live(mesh.cp, "destinationpolicies", "reviews")
        assert after is not None
        # the policy's content did not change: same version, no push for it
        assert after["metadata"]["resourceVersion"] == before["metadata"]["resourceVersion"]
        mesh.wait_synced(30)
        assert running_weights(client) == {"v1": 80, "v2": 20}
        validate = mesh.meshctl("validate", "-f", str(config))
        assert validate.returncode == 0, validate.stdout + validate.stderr

        # and back, the other way round, within one watcher batch or two
        (config / "dp-reviews.yaml").unlink()
        (config / "reviews.yaml").write_text(reviews(70, 30))
        wait_for(lambda: (r := live(mesh.cp, "routes", "reviews"))
                 and weights(r["spec"]["rules"]) == {"v1": 70, "v2": 30}, 10,
                 "the route live again from reviews.yaml")
        wait_for(lambda: errors(mesh.cp) == {}, 10, "no rejection left")
        assert live(mesh.cp, "destinationpolicies", "reviews") is not None


def test_a_move_into_a_rejected_file_is_judged_against_its_last_good(tmp_path: Path) -> None:
    """A duplicate is a duplicate against what stays live: with reviews.yaml rejected for an
    error of its own (its last good version, DestinationPolicy included, stays live), the
    policy moved to dp-reviews.yaml is a duplicate of that last good one, named so. Fixing
    reviews.yaml (without the policy) makes both files live."""
    config = tmp_path / "mesh"
    config.mkdir()
    (config / "reviews.yaml").write_text(reviews(90, 10))
    cp = start_control_plane(tmp_path, config_dir=config)
    try:
        (config / "reviews.yaml").write_text(route("reviews", {"v1": 80, "v2": 30}))
        (config / "dp-reviews.yaml").write_text(destination_policy("reviews"))
        found = wait_for(lambda: (e := errors(cp)) and len(e) == 2 and e, 10,
                         "both rejected")
        assert "weights sum to 110" in found["reviews.yaml"], found
        assert found["dp-reviews.yaml"] == (
            "dp-reviews.yaml doc 1: metadata.name: duplicate DestinationPolicy default/reviews, "
            "already defined in reviews.yaml doc 1 (its last good version, live while "
            "reviews.yaml is rejected)"), found
        (config / "reviews.yaml").write_text(route("reviews", {"v1": 80, "v2": 20}))
        wait_for(lambda: errors(cp) == {}, 10, "both accepted")
        policy = live(cp, "destinationpolicies", "reviews")
        assert policy is not None
    finally:
        cp.stop()


def test_a_file_that_is_not_utf8_is_rejected_naming_the_file(tmp_path: Path) -> None:
    """A byte that is not UTF-8 (a Latin-1 'é' in a comment): the error names the file and the
    line and column of the byte; the file's last good version stays live."""
    config = tmp_path / "mesh"
    config.mkdir()
    (config / "reviews.yaml").write_text(reviews(90, 10))
    cp = start_control_plane(tmp_path, config_dir=config)
    try:
        text = reviews(60, 40).encode()
        (config / "reviews.yaml").write_bytes(b"# owned by team caf\xe9\n" + text)
        found = wait_for(lambda: errors(cp), 10, "the file rejected")
        assert found == {"reviews.yaml": "reviews.yaml: line 1, column 20: byte 0xe9 is not "
                                         "UTF-8 (invalid continuation byte); save the file "
                                         "as UTF-8"}, found
        r = live(cp, "routes", "reviews")
        assert r is not None and weights(r["spec"]["rules"]) == {"v1": 90, "v2": 10}
        assert "reviews.yaml" in http_get(cp.info["api"] + "/api/v1/check")[1].decode()
    finally:
        cp.stop()


def test_duplicates_in_the_watched_dir_carry_the_field_path(tmp_path: Path) -> None:
    """A duplicate within a file and one across files: `metadata.name: duplicate ...`, as
    `apply` says it."""
    config = tmp_path / "mesh"
    config.mkdir()
    (config / "reviews.yaml").write_text(reviews(90, 10))
    cp = start_control_plane(tmp_path, config_dir=config)
    try:
        (config / "twice.yaml").write_text(documents(
            destination_policy("ratings"), route("ratings", {"v1": 100}),
            route("ratings", {"v2": 100})))
        (config / "other.yaml").write_text(route("reviews", {"v1": 100}))
        found = wait_for(lambda: (e := errors(cp)) and len(e) == 2 and e, 10,
                         "both rejected")
        assert found == {
            "twice.yaml": "twice.yaml doc 3: metadata.name: duplicate Route default/ratings, "
                          "already defined earlier in this file (doc 2)",
            "other.yaml": "other.yaml doc 1: metadata.name: duplicate Route default/reviews, "
                          "already defined in reviews.yaml doc 2"}, found
    finally:
        cp.stop()
