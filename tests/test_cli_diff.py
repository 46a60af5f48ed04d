"""meshctl diff and apply --dry-run=server against a real ``meshctl serve`` and a real sidecar."""

from __future__ import annotations

import os
import pty
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from meshctl.api.kindnames import KIND_PLURALS
from tests.helpers_mesh import PYTHON, ROOT, MeshProcess, http_json, proxies
from tests.meshbuilder import Mesh
from tests.ports import free_port
from tests.resources import destination_policy, documents, route
from tests.test_cli_support import JASON, POLICY, reviews_route, write

pytestmark = pytest.mark.timeout(120)


class DiffMesh(Mesh):
    """``meshctl serve`` over a config dir, and one reviews-v1 sidecar it configures."""

    def build(self) -> DiffMesh:
        self.control_plane()
        self.reviews = self.sidecar("reviews", "v1")
        self.api: str = self.cp.info["api"]
        self.token: str = self.cp.info["token"]
        return self

    def run(self, *argv: str, control_plane: str | None = None) -> tuple[int, str, str]:
        """``meshctl --control-plane API argv...`` as a process: (exit code, stdout, stderr)."""
        done = subprocess.run([PYTHON, "-m", "meshctl", "--control-plane",
                               control_plane or self.api, *argv],
                              capture_output=True, text=True, cwd=ROOT, timeout=60,
                              env=self.meshctl_env())
        return done.returncode, done.stdout, done.stderr

    def cli_apply(self, text: str, namespace: str = "default") -> int:
        """A real apply through the CLI; the store's revision after it."""
        path = write(self.tmp / f"applied-{namespace}.yaml", text)
        code, _, err = self.run("apply", "-f", str(path), "-n", namespace)
        assert code == 0, err
        return self.revision()

    def revision(self) -> int:
        """The store's revision: its highest resourceVersion (these tests delete nothing)."""
        return max(int(doc["metadata"]["resourceVersion"]) for plural in KIND_PLURALS.values()
                   for doc in self.items(plural, None))

    def items(self, plural: str, namespace: str | None) -> list[dict[str, Any]]:
        where = f"/namespaces/{namespace}" if namespace else ""
        status, body = http_json(f"{self.api}/api/v1{where}/{plural}")
        assert status == 200, body
        return list(body["items"])


@pytest.fixture(scope="module")
def mesh(tmp_path_factory: pytest.TempPathFactory) -> Iterator[DiffMesh]:
    with DiffMesh(tmp_path_factory.mktemp("diff")) as m:
        m.build().wait_synced()
        yield m


def _sidecar_version(cp: MeshProcess, name: str) -> str:
    return next(str(p["configVersion"]) for p in proxies(cp) if p["name"] == name)


def test_server_dry_run_plans_and_writes_nothing(mesh: DiffMesh, tmp_path: Path) -> None:
    """apply --dry-run=server prints what apply would (created/configured/unchanged), and
    neither the store's revision, its files nor the sidecar's config move."""
    mesh.sync(mesh.cli_apply(documents(POLICY, reviews_route(90, 10))))
    before = _sidecar_version(mesh.cp, mesh.reviews.info["name"])
    files = {p: p.read_bytes() for p in (mesh.tmp / "mesh").rglob("*.yaml")}
    revision = mesh.revision()
    new_policy = destination_policy("ratings", ("v1", "v2", "v3"))
    planned = write(tmp_path / "planned.yaml",
                    documents(POLICY, reviews_route(50, 50), new_policy))

    code, out, err = mesh.run("apply", "-f", str(planned), "--dry-run=server")
    # (warned of as an apply would be: no ratings sidecar runs in this mesh)
    assert (code, err) == (0, "warning: DestinationPolicy default/ratings: spec.host 'ratings' "
                              "names no known service (no sidecar of it is registered and no "
                              "Route, DestinationPolicy, Gateway or ExternalService declares "
                              "it)\n")
    assert out == ("destinationpolicy.ami.mesh/reviews unchanged (server dry run)\n"
                   "route.ami.mesh/reviews configured (server dry run)\n"
                   "destinationpolicy.ami.mesh/ratings created (server dry run)\n")

    assert {p: p.read_bytes() for p in (mesh.tmp / "mesh").rglob("*.yaml")} == files
    # Versions only grow and every write takes one: the next real write is the very next
    # revision only if the dry run took none. It also orders the check after any push.
    marker = mesh.cli_apply(new_policy, namespace="marker")
    assert marker == revision + 1
    mesh.sync(marker)
    route = mesh.items("routes", "default")[0]
    assert route["spec"]["rules"][1]["backends"][0] == {"subset": "v1", "weight": 90}
    assert _sidecar_version(mesh.cp, mesh.reviews.info["name"]) == before
    # ...and a real apply of the same file does move it (the check above can fail)
    mesh.sync(mesh.cli_apply(planned.read_text()))
    assert _sidecar_version(mesh.cp, mesh.reviews.info["name"]) != before


def test_server_dry_run_rejects_what_apply_rejects(mesh: DiffMesh, tmp_path: Path) -> None:
    """A route naming a subset no DestinationPolicy defines (a check across objects, made by
    the server only): the dry run and diff fail with the real apply's error; nothing stored."""
    mesh.cli_apply(POLICY, namespace="reject")
    bad = write(tmp_path / "bad.yaml", route("reviews", {"v1": 90, "v9": 10}, rules=[JASON]))
    error = (f"error: {bad} doc 1: spec.rules[1].backends[1].subset: unknown subset 'v9' for "
             "host reviews (known: v1, v2, v3)\n")
    assert mesh.run("apply", "-f", str(bad), "-n", "reject", "--dry-run=server") == (
        1, "", error)
    assert mesh.run("diff", "-f", str(bad), "-n", "reject") == (2, "", error)
    assert mesh.run("apply", "-f", str(bad), "-n", "reject") == (1, "", error)
    assert mesh.items("routes", "reject") == []


def test_diff_of_applied_files_is_empty(mesh: DiffMesh, tmp_path: Path) -> None:
    """What was applied, in another key order and with the server's fields as `get -o yaml`
    prints them (resourceVersion), differs in nothing: exit 0, no output."""
    mesh.cli_apply(documents(POLICY, reviews_route(80, 20)), namespace="same")
    files = write(tmp_path / "same.yaml", documents(POLICY, reviews_route(80, 20)))
    assert mesh.run("diff", "-f", str(files), "-n", "same") == (0, "", "")
    code, saved, _ = mesh.run("get", "routes", "reviews", "-n", "same", "-o", "yaml")
    assert code == 0 and "resourceVersion" in saved
    reordered = "kind: Route\n" + saved.replace("kind: Route\n", "")
    path = write(tmp_path / "saved.yaml", reordered)
    assert mesh.run("diff", "-f", str(path)) == (0, "", "")


def test_diff_shows_a_weight_change_as_that_line(mesh: DiffMesh, tmp_path: Path) -> None:
    """The weights changed: exit 1 and a diff of exactly those lines (keys sorted), the
    object in the headers and no server-managed field (resourceVersion) as a difference."""
    mesh.cli_apply(documents(POLICY, reviews_route(90, 10)), namespace="weights")
    edited = write(tmp_path / "edited.yaml", documents(POLICY, reviews_route(70, 30)))
    code, out, err = mesh.run("diff", "-f", str(edited), "-n", "weights")
    assert (code, err) == (1, "")
    assert out == """\
--- Route weights/reviews (live)
+++ Route weights/reviews (after apply)
@@ -15,6 +15,6 @@
     name: jason
   - backends:
     - subset: v1
-      weight: 90
+      weight: 70
     - subset: v2
-      weight: 10
+      weight: 30
"""
    assert mesh.items("routes", "weights")[0]["spec"]["rules"][1]["backends"][0]["weight"] == 90


def test_diff_shows_a_new_object_whole(mesh: DiffMesh, tmp_path: Path) -> None:
    """An object that does not exist yet: the whole of it, added; the others print nothing."""
    mesh.cli_apply(POLICY, namespace="new")
    route = write(tmp_path / "route.yaml", documents(POLICY, reviews_route(100, 0)))
    code, out, err = mesh.run("diff", "-f", str(route), "-n", "new")
    assert (code, err) == (1, "")
    body = out.splitlines()[3:]
    assert out.startswith("--- Route new/reviews (not live)\n"
                          "+++ Route new/reviews (after apply)\n@@ -0,0 +1,")
    assert all(line.startswith("+") for line in body)
    assert "+  namespace: new" in body and "+    - subset: v1" in body
    assert mesh.items("routes", "new") == []


def test_diff_errors_exit_2(mesh: DiffMesh, tmp_path: Path) -> None:
    """Invalid YAML, no documents, an unreachable control plane: one `error:` line, exit 2
    (1 would mean differences)."""
    broken = write(tmp_path / "broken.yaml", "kind: Route\nmetadata: {name: [\n")
    code, out, err = mesh.run("diff", "-f", str(broken))
    assert (code, out) == (2, "")
    assert err.startswith(f"error: {broken}") and err.count("\n") == 1
    (tmp_path / "empty").mkdir()
    assert mesh.run("diff", "-f", str(tmp_path / "empty")) == (
        2, "", "error: no objects passed to diff\n")
    good = write(tmp_path / "good.yaml", POLICY)
    nobody = f"http://127.0.0.1:{free_port()}"
    code, out, err = mesh.run("diff", "-f", str(good), control_plane=nobody)
    assert (code, out) == (2, "")
    assert err.startswith(f"error: cannot reach the control plane at {nobody}: ")
    assert err.count("\n") == 1


def test_diff_is_coloured_on_a_terminal_only(mesh: DiffMesh, tmp_path: Path) -> None:
    """On a TTY, removed lines are red and added green; piped (above), plain text."""
    mesh.cli_apply(documents(POLICY, reviews_route(90, 10)), namespace="tty")
    edited = write(tmp_path / "edited.yaml", documents(POLICY, reviews_route(60, 40)))
    leader, follower = pty.openpty()
    env = dict(os.environ, AMI_TOKEN=mesh.token)
    env.pop("NO_COLOR", None)
    proc = subprocess.Popen([PYTHON, "-m", "meshctl", "--control-plane", mesh.api, "diff",
                             "-f", str(edited), "-n", "tty"], stdout=follower,
                            stderr=subprocess.PIPE, cwd=ROOT, env=env)
    os.close(follower)
    chunks = []
    while True:
        try:
            chunk = os.read(leader, 4096)
        except OSError:  # EIO: the process closed the terminal
            break
        if not chunk:
            break
        chunks.append(chunk)
    os.close(leader)
    assert proc.wait(60) == 1, proc.stderr.read() if proc.stderr else ""
    out = b"".join(chunks).decode()
    assert "\033[31m-      weight: 90\033[0m" in out
    assert "\033[32m+      weight: 60\033[0m" in out


def test_dry_run_query_and_openapi(mesh: DiffMesh) -> None:
    """/openapi.json lists ?dryRun=All; another value is refused rather than written."""
    status, doc = http_json(f"{mesh.api}/openapi.json")
    assert status == 200
    params = {p["name"]: p for p in doc["paths"]["/api/v1/apply"]["post"]["parameters"]}
    assert params["dryRun"]["schema"] == {"const": "All"}
    body = destination_policy("reviews", ("v1", "v2", "v3"), name="bogus", namespace="bogus")
    status, answer = http_json(f"{mesh.api}/api/v1/apply?dryRun=true", "POST", body,
                               token=mesh.token, content_type="application/yaml")
    assert (status, answer["reason"]) == (400, "BadRequest")
    status, answer = http_json(f"{mesh.api}/api/v1/apply?dryRun=All", "POST", body,
                               token=mesh.token, content_type="application/yaml")
    assert status == 200 and answer["dryRun"] is True
    [result] = answer["results"]
    assert (result["result"], result["live"]) == ("created", None)
    assert result["object"]["metadata"] == {"name": "bogus", "namespace": "bogus"}
    assert mesh.items("destinationpolicies", "bogus") == []


def test_plain_dry_run_stays_offline(tmp_path: Path) -> None:
    """--dry-run and --dry-run=client validate offline (no control plane at all)."""
    files = write(tmp_path / "mesh.yaml", documents(POLICY, reviews_route(90, 10)))
    nobody = f"http://127.0.0.1:{free_port()}"
    for flag in ("--dry-run", "--dry-run=client"):
        done = subprocess.run([PYTHON, "-m", "meshctl", "--control-plane", nobody, "apply",
                               "-f", str(files), flag], capture_output=True, text=True,
                              cwd=ROOT, timeout=60)
        assert (done.returncode, done.stderr) == (0, "")
        assert done.stdout == ("destinationpolicy.ami.mesh/reviews valid (dry run, offline)\n"
                               "route.ami.mesh/reviews valid (dry run, offline)\n")
