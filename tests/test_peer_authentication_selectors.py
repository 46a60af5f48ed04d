"""PeerAuthentication as Istio users write it (selector.matchLabels, portLevelMtls) with a real
control plane and sidecars: the mesh STRICT, reviews v1 and v3 behind their own sidecars, and
`web`, a caller whose app is this test (through web's outbound listener). A "plaintext client"
is this test talking straight to a sidecar's inbound listener, as a client outside the mesh.
"""

from __future__ import annotations

import http.client
import socket
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.helpers_mesh import PYTHON, MeshProcess, free_port, http_get, wait_for
from tests.meshbuilder import Mesh
from tests.peerauth_harness import DeclaresPeerAuthentications
from tests.resources import mesh_config
from tests.tcpapp import banner, read_line, read_to_eof, start_tcp_app

pytestmark = pytest.mark.timeout(240)
TIMEOUT = 10.0
MESH = mesh_config(mtls="STRICT")


def istio(name: str, labels: str | None, mode: str, extra: str = "") -> str:
    """A PeerAuthentication in Istio's form (``labels``: matchLabels' content)."""
    selector = f"selector: {{matchLabels: {{{labels}}}}}, " if labels is not None else ""
    more = f", {extra}" if extra else ""
    return (f"apiVersion: ami.mesh/v1alpha1\nkind: PeerAuthentication\nmetadata: {{name: {name}}}"
            f"\nspec: {{{selector}mtls: {{mode: {mode}}}{more}}}\n---\n")


class SelectorMesh(Mesh, DeclaresPeerAuthentications):
    """The processes, and `declare` to make the PeerAuthentications exactly the ones given."""

    def build(self) -> SelectorMesh:
        self.control_plane(MESH, warmup=0.0)
        self.sidecars: dict[str, MeshProcess] = {}
        self.app_ports: dict[str, int] = {}
        for version in ("v1", "v3"):
            app = self.backend(f"reviews-{version}")
            self.app_ports[version] = int(app.info["address"].rpartition(":")[2])
            self.sidecars[version] = self.sidecar("reviews", version, app=app.info["address"],
                                                  extra=["--drain-timeout", "1"])
        # db: a TCP service, reached by web's app through a --tcp-upstream port
        db_app = self.started(start_tcp_app(self.tmp, "db-v1"))
        self.app_ports["db"] = int(db_app.info["address"].rpartition(":")[2])
        self.sidecars["db"] = self.sidecar("db", app=db_app.info["address"],
                                           extra=["--app-protocol", "tcp"])
        self.db_port = free_port()
        self.web = self.sidecar("web", extra=["--tcp-upstream", f"127.0.0.1:{self.db_port}=db"])
        self.revision = 0
        wait_for(lambda: {self.call() for _ in range(4)} == {(200, b"reviews-v1"),
                                                             (200, b"reviews-v3")},
                 20, "web reaching both versions of reviews")
        return self

    def call(self) -> tuple[int, bytes]:
        """A request of web's app to reviews, through web's sidecar."""
        return http_get(f"http://{self.web.info['outbound']}/", {"Host": "reviews"})

    def plaintext(self, version: str) -> int | None:
        """A plaintext request straight to reviews' ``version`` sidecar: its status, or None
        when the connection was refused (closed without an answer)."""
        try:
            return http_get(f"http://{self.sidecars[version].info['inbound']}/",
                            {"Host": "reviews"})[0]
        except (OSError, http.client.HTTPException):
            return None

    def requests(self, proc: MeshProcess, **labels: str) -> float:
        return self.metric(proc, "ami_requests_total", **labels)

    def db_session(self) -> None:
        """A whole exchange of web's app with db through web's --tcp-upstream port."""
        with socket.create_connection(("127.0.0.1", self.db_port), timeout=TIMEOUT) as sock:
            assert banner(sock) == "db-v1"
            sock.sendall(b"ping\n")
            assert read_line(sock) == b"ping\n"
            sock.shutdown(socket.SHUT_WR)
            assert read_to_eof(sock) == b"bye 5\n"



@pytest.fixture(scope="module")
def mesh(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SelectorMesh]:
    with SelectorMesh(tmp_path_factory.mktemp("peerauth-selectors")) as m:
        yield m.build()


def web_reaches(mesh: SelectorMesh, expected: dict[str, str]) -> None:
    """web calls reviews until its own metrics count a 200 from each version over the
    security policy ``expected`` gives it (`mutual_tls` or `none`)."""
    before = {v: mesh.requests(mesh.web, reporter="source", destination_service="reviews",
                               destination_version=v, response_code="200",
                               connection_security_policy=policy)
              for v, policy in expected.items()}

    def counted() -> bool:
        assert mesh.call()[0] == 200
        return all(mesh.requests(mesh.web, reporter="source", destination_service="reviews",
                                 destination_version=v, response_code="200",
                                 connection_security_policy=policy) > before[v]
                   for v, policy in expected.items())

    wait_for(counted, TIMEOUT, f"web's requests to reviews counted as {expected}")


def test_a_v3_only_permissive_takes_plaintext_while_v1_refuses_it(mesh: SelectorMesh) -> None:
    """`matchLabels: {app: reviews, version: v3}` PERMISSIVE: v3's sidecar takes a plaintext
    client, v1's (the mesh's STRICT) refuses it; web still calls both over mTLS. Deleted:
    v3 refuses plaintext again."""
    mesh.declare(istio("reviews-v3", "app: reviews, version: v3", "PERMISSIVE"))
    assert mesh.plaintext("v3") == 200
    assert mesh.plaintext("v1") is None
    web_reaches(mesh, {"v1": "mutual_tls", "v3": "mutual_tls"})
    mesh.declare()
    assert mesh.plaintext("v3") is None


def test_a_disable_port_takes_plaintext_from_callers_while_the_other_stays_strict(
        mesh: SelectorMesh) -> None:
    """`{app: reviews}` STRICT with `portLevelMtls` DISABLE on v1's app port: v1's sidecar
    (serving that port) takes plaintext and web sends it plaintext (`none` on both sides);
    v3's app port stays STRICT: plaintext refused, web's requests over mTLS."""
    port = mesh.app_ports["v1"]
    mesh.declare(istio("reviews", "app: reviews", "STRICT",
                       f"portLevelMtls: {{{port}: {{mode: DISABLE}}}}"))
    assert mesh.plaintext("v1") == 200
    assert mesh.plaintext("v3") is None
    on_v1 = mesh.requests(mesh.sidecars["v1"], reporter="destination",
                          connection_security_policy="none")
    web_reaches(mesh, {"v1": "none", "v3": "mutual_tls"})
    wait_for(lambda: mesh.requests(mesh.sidecars["v1"], reporter="destination",
                                   connection_security_policy="none") >= on_v1 + 1,
             TIMEOUT, "v1's sidecar counting web's plaintext request")
    mesh.declare()
    assert mesh.plaintext("v1") is None
    web_reaches(mesh, {"v1": "mutual_tls", "v3": "mutual_tls"})


def test_a_tcp_services_disable_port_gets_plaintext_connections(mesh: SelectorMesh) -> None:
    """`{app: db}` (a TCP service) with its app's port DISABLE: web's connections to db go in
    plaintext (`none` on both sides, the `ami-tcp` preamble); deleted, over mTLS again."""
    labels = {"destination_service": "db", "response_flags": "-"}

    def closed(proc: MeshProcess, reporter: str, policy: str) -> float:
        return mesh.metric(proc, "ami_tcp_connections_closed_total", reporter=reporter,
                           connection_security_policy=policy, **labels)

    mesh.declare(istio("db", "app: db", "STRICT",
                       f"portLevelMtls: {{{mesh.app_ports['db']}: {{mode: DISABLE}}}}"))
    before = closed(mesh.web, "source", "none")
    on_db = closed(mesh.sidecars["db"], "destination", "none")
    mesh.db_session()
    wait_for(lambda: closed(mesh.web, "source", "none") >= before + 1, TIMEOUT,
             "web's plaintext connection to db counted")
    wait_for(lambda: closed(mesh.sidecars["db"], "destination", "none") >= on_db + 1, TIMEOUT,
             "db counting a plaintext connection")
    mesh.declare()
    before = closed(mesh.web, "source", "mutual_tls")
    mesh.db_session()
    wait_for(lambda: closed(mesh.web, "source", "mutual_tls") >= before + 1, TIMEOUT,
             "web's mTLS connection to db counted")


@pytest.mark.parametrize("docs, expected", [
    (istio("ns", None, "STRICT", "portLevelMtls: {9080: {mode: DISABLE}}"),
     "spec.portLevelMtls: needs a selector (selector.matchLabels or selector.service)"),
    (istio("all", "app: reviews", "STRICT") + istio("v3", "app: reviews, version: v3", "DISABLE"),
     "spec.selector.matchLabels: selector app=reviews,version=v3 can select the same sidecars "
     "as service reviews"),
    (istio("r", "app: reviews", "STRICT", "portLevelMtls: {70000: {mode: DISABLE}}"),
     "spec.portLevelMtls.70000: expected a port number 1-65535, got 70000"),
])
def test_the_control_plane_refuses_istio_mistakes_with_the_field(
        mesh: SelectorMesh, docs: str, expected: str) -> None:
    """portLevelMtls without a selector (as Istio's validation), selectors that could match
    one sidecar, a port out of range: refused whole with the field path; nothing applied."""
    mesh.declare()
    status, body = mesh.api("/api/v1/apply", "POST", docs)
    assert status == 422 and expected in str(body), (status, body)
    status, listed = mesh.api("/api/v1/peerauthentications")
    assert status == 200 and isinstance(listed, dict) and listed["items"] == []
    assert mesh.plaintext("v1") is None


def test_check_names_the_workloads_and_warns_of_a_port_no_sidecar_serves(
        mesh: SelectorMesh) -> None:
    """`meshctl check`: a relaxing selector names the sidecars (service and version) whose
    mode it decides; a portLevelMtls port that no selected sidecar serves warns, as
    `istioctl analyze` does, and only of that (its DISABLE leaves no service without mTLS)."""
    mesh.declare(istio("reviews-v3", "app: reviews, version: v3", "PERMISSIVE"),
                 istio("web", "app: web", "STRICT", "portLevelMtls: {1: {mode: DISABLE}}"))
    try:
        status, body = mesh.api("/api/v1/check")
        assert status == 200 and isinstance(body, dict), body
        [group] = [g for g in body["groups"] if g["title"] == "mTLS (PeerAuthentication)"]
        assert [(c["name"], c["state"], c["detail"]) for c in group["checks"]] == [
            ("PeerAuthentication default/reviews-v3", "warn",
             "PERMISSIVE, mTLS not enforced for: reviews v3"),
            ("PeerAuthentication default/web", "warn",
             "STRICT; portLevelMtls port 1: no selected sidecar serves it (their app ports: "
             "none)")]
        # a DISABLE port nobody serves relaxes nothing: the hint is about the port alone
        assert group["checks"][1]["hint"].startswith("portLevelMtls names the port of the "
                                                     "workload's app"), group["checks"][1]
        cli = subprocess.run([PYTHON, "-m", "meshctl", "--control-plane", mesh.cp.info["api"],
                              "check"], capture_output=True, text=True, timeout=60)
        assert cli.returncode == 0, cli.stderr
        assert "PERMISSIVE, mTLS not enforced for: reviews v3" in cli.stdout
    finally:
        mesh.declare()


def test_the_cli_shows_each_sidecars_mode_per_port(mesh: SelectorMesh, tmp_path: Path) -> None:
    """`{app: reviews}` STRICT with v1's app port DISABLE: `get` shows the selector and the
    port's mode, `describe` each selected sidecar's app port and effective mode (and what
    decides it), web's `proxy-config` the v1 sidecar it sends plaintext; `apply` of a port no
    selected sidecar serves warns, naming the ports they do serve."""
    port, v3_port = mesh.app_ports["v1"], mesh.app_ports["v3"]
    mesh.declare(istio("reviews", "app: reviews", "STRICT",
                       f"portLevelMtls: {{{port}: {{mode: DISABLE}}}}"))
    try:
        got = mesh.meshctl("get", "pa")
        assert got.returncode == 0, got.stderr
        assert got.stdout.splitlines()[1].split()[:4] == ["reviews", "reviews", "STRICT",
                                                           f"{port}=DISABLE"]
        described = mesh.meshctl("describe", "pa", "reviews")
        assert described.returncode == 0, described.stderr
        rows = {line.split()[0]: line.split()[1:] for line in described.stdout.splitlines()
                if line.startswith("  reviews-")}
        assert rows == {
            mesh.sidecars["v1"].info["name"]: ["reviews", "v1", str(port), "DISABLE", "this,",
                                               "port", str(port)],
            mesh.sidecars["v3"].info["name"]: ["reviews", "v3", str(v3_port), "STRICT", "this"]}
        shown = mesh.meshctl("proxy-config", mesh.web.info["name"])
        assert shown.returncode == 0, shown.stderr
        assert (f"Services' mTLS:  reviews v1 ({mesh.sidecars['v1'].info['inbound']}) DISABLE"
                in shown.stdout)
        mesh.declare()
        path = tmp_path / "pa.yaml"
        path.write_text(istio("reviews-v3", "app: reviews, version: v3", "STRICT",
                              "portLevelMtls: {1: {mode: DISABLE}}"))
        applied = mesh.meshctl("apply", "-f", str(path))
        assert applied.returncode == 0, applied.stderr
        assert (f"warning: PeerAuthentication default/reviews-v3: portLevelMtls port 1: no "
                f"selected sidecar serves it (their app ports: {v3_port})") in applied.stderr
    finally:
        mesh.declare()
