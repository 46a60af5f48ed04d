"""`meshctl get KIND [NAME] -w` against a real `meshctl serve`: the table, a row per change
(a Canary's status steps included), exit 0 on Ctrl-C, one `error:` line and exit 1 when the
control plane goes away. Every wait has a deadline."""

from __future__ import annotations

import queue
import signal
import subprocess
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.helpers_mesh import ROOT
from tests.meshbuilder import Mesh
from tests.resources import destination_policy, documents, route

pytestmark = pytest.mark.timeout(120)


def reviews(v1: int, v3: int) -> str:
    """reviews' DestinationPolicy (v1, v3) and its Route splitting ``v1``/``v3``."""
    return documents(destination_policy("reviews", ("v1", "v3")),
                     route("reviews", {"v1": v1, "v3": v3}))


CANARY = """\
apiVersion: ami.mesh/v1alpha1
kind: Canary
metadata: {name: reviews-v3}
spec: {service: reviews, stable: v1, canary: v3, stepWeight: 10, interval: 1h}
"""


class Watcher:
    """`meshctl get ... -w` as a child process; its stdout lines in a queue."""

    def __init__(self, mesh: Mesh, *args: str) -> None:
        self.proc = subprocess.Popen(
            mesh.meshctl_argv("get", *args, "-w"), stdout=subprocess.PIPE,
            stderr=subprocess.PIPE, text=True, cwd=ROOT, env=mesh.meshctl_env(bare_env=True))
        self.lines: queue.Queue[str] = queue.Queue()
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self.lines.put(line.rstrip("\n"))

    def next_line(self, timeout: float = 20.0) -> list[str]:
        """The next row, split into cells (fails after ``timeout`` s without one)."""
        try:
            return self.lines.get(timeout=timeout).split()
        except queue.Empty:
            self.proc.kill()
            raise AssertionError(f"no row in {timeout} s; stderr: {self.stderr()}") from None

    def row_with(self, *cells: str, timeout: float = 20.0) -> list[str]:
        """Rows until one holding every cell of ``cells``."""
        while True:
            row = self.next_line(timeout)
            if all(c in row for c in cells):
                return row

    def stderr(self) -> str:
        return self.proc.stderr.read() if self.proc.stderr and self.proc.poll() is not None \
            else ""

    def wait(self, timeout: float = 20.0) -> tuple[int, str]:
        rc = self.proc.wait(timeout)
        return rc, self.stderr()


@pytest.fixture
def mesh(tmp_path: Path) -> Iterator[Mesh]:
    """A control plane alone (a test may stop it)."""
    with Mesh(tmp_path) as m:
        yield m.control_plane(warmup=0.0)


def test_a_change_prints_a_row_and_ctrl_c_exits_0(mesh: Mesh) -> None:
    mesh.apply(reviews(100, 0))
    w = Watcher(mesh, "route", "reviews")
    try:
        assert w.next_line()[:2] == ["NAME", "HOST"]
        assert w.next_line()[:4] == ["reviews", "reviews", "1", "v1=100,v3=0"]
        version = mesh.apply(reviews(80, 20))
        row = w.next_line()
        assert row == ["reviews", "reviews", "1", "v1=80,v3=20", str(version), "Accepted"]
        w.proc.send_signal(signal.SIGINT)
        rc, err = w.wait()
        assert (rc, err) == (0, "")
    finally:
        w.proc.kill()


def test_a_canarys_status_steps_are_rows(mesh: Mesh) -> None:
    """The controller's status writes (no new resourceVersion) show as rows: WEIGHT, PHASE."""
    mesh.apply(reviews(100, 0))
    w = Watcher(mesh, "canary")
    try:
        # no Canary yet: the header alone (the widths of the rows to come)
        assert w.next_line()[:5] == ["NAME", "SERVICE", "STABLE", "CANARY", "WEIGHT"]
        mesh.apply(CANARY)
        row = w.row_with("reviews-v3", "Progressing")
        assert row[:6] == ["reviews-v3", "reviews", "v1", "v3", "10", "Progressing"]
        deleted = mesh.meshctl("delete", "canary", "reviews-v3", timeout=30, bare_env=True)
        assert deleted.returncode == 0, deleted.stderr
        assert w.row_with("reviews-v3", "Deleted")[:6] == row[:6]
    finally:
        w.proc.kill()


def test_a_lost_control_plane_is_one_error_line_and_exit_1(mesh: Mesh) -> None:
    mesh.apply(reviews(100, 0))
    w = Watcher(mesh, "route")
    try:
        assert w.next_line()[:2] == ["NAME", "HOST"]
        assert w.next_line()[0] == "reviews"
        assert mesh.cp.stop() == 0
        rc, err = w.wait()
        assert rc == 1
        assert err.startswith("error: lost the control plane at http://127.0.0.1:")
        assert err.count("\n") == 1, err
    finally:
        w.proc.kill()
