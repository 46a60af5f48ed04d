"""PeerAuthentication with a real control plane and sidecars: the mesh STRICT, one service (or
the namespace) PERMISSIVE or DISABLE, callers following each destination's mode (auto mTLS),
for HTTP and TCP services, and the switch back to STRICT cutting plaintext as the mesh-wide one.

`web` is a caller with no app of its own (its app is this test, through web's outbound listener
and a `--tcp-upstream` port to db); `legacy`, `reviews` and `tls-app` are HTTP apps, `db` a
TCP app, each behind its sidecar. A "plaintext client" is this test talking straight to a
sidecar's inbound listener, as a client outside the mesh would.
"""

from __future__ import annotations

import asyncio
import http.client
import socket
import subprocess
from collections.abc import Iterator

import pytest

from tests.h2app import H2Client
from tests.helpers_mesh import PYTHON, MeshProcess, free_port, http_get, wait_for
from tests.meshbuilder import Mesh
from tests.peerauth_harness import DeclaresPeerAuthentications
from tests.proxyharness import metric_value
from tests.resources import mesh_config
from tests.tcpapp import echo_session, start_tcp_app

pytestmark = pytest.mark.timeout(240)
TIMEOUT = 10.0
MESH = mesh_config(mtls="STRICT")


def peer_auth(name: str, mode: str, service: str | None = None) -> str:
    selector = f"selector: {{service: {service}}}, " if service else ""
    return (f"apiVersion: ami.mesh/v1alpha1\nkind: PeerAuthentication\nmetadata: {{name: {name}}}"
            f"\nspec: {{{selector}mtls: {{mode: {mode}}}}}\n---\n")


class PeerAuthMesh(Mesh, DeclaresPeerAuthentications):
    """The processes, and `declare` to make the PeerAuthentications exactly the ones given."""

    def build(self) -> PeerAuthMesh:
        self.control_plane(MESH, warmup=0.0)
        self.sidecars: dict[str, MeshProcess] = {}
        for service in ("legacy", "reviews", "tls-app"):
            app = self.backend(service)
            # --drain-timeout: the grace of a plaintext request or stream when STRICT returns
            self.sidecars[service] = self.sidecar(service, app=app.info["address"],
                                                  extra=["--drain-timeout", "1"])
        db_app = self.started(start_tcp_app(self.tmp, "db-v1"))
        self.sidecars["db"] = self.sidecar("db", app=db_app.info["address"],
                                           extra=["--app-protocol", "tcp", "--drain-timeout", "1"])
        self.db_port = free_port()
        self.web = self.sidecars["web"] = self.sidecar(
            "web", extra=["--tcp-upstream", f"127.0.0.1:{self.db_port}=db:5432"])
        self.revision = 0
        wait_for(lambda: all(self.call(s)[0] == 200 for s in ("legacy", "reviews", "tls-app")),
                 20, "web reaching every HTTP service")
        return self

    # -- traffic ------------------------------------------------------------------------------
    def call(self, service: str) -> tuple[int, bytes]:
        """A request of web's app to ``service``, through web's sidecar."""
        return http_get(f"http://{self.web.info['outbound']}/", {"Host": service})

    def plaintext(self, service: str) -> int | None:
        """A plaintext request straight to ``service``'s inbound listener: its status, or None
        when the connection was refused (closed without an answer)."""
        try:
            return http_get(f"http://{self.sidecars[service].info['inbound']}/",
                            {"Host": service})[0]
        except (OSError, http.client.HTTPException):
            return None

    def requests(self, proc: MeshProcess, **labels: str) -> float:
        return metric_value(self.metrics(proc), "ami_requests_total", **labels)

    def connections(self, proc: MeshProcess, **labels: str) -> float:
        return metric_value(self.metrics(proc), "ami_tcp_connections_closed_total", **labels)



@pytest.fixture(scope="module")
def mesh(tmp_path_factory: pytest.TempPathFactory) -> Iterator[PeerAuthMesh]:
    with PeerAuthMesh(tmp_path_factory.mktemp("peerauth")) as m:
        yield m.build()


def counted_by_web(mesh: PeerAuthMesh, service: str, policy: str, at_least: float) -> None:
    wait_for(lambda: mesh.requests(mesh.web, reporter="source", destination_service=service,
                                   response_code="200", connection_security_policy=policy)
             >= at_least, TIMEOUT, f"web's request to {service} counted as {policy}")


def test_a_permissive_service_takes_plaintext_and_callers_still_use_mtls(
        mesh: PeerAuthMesh) -> None:
    """Mesh STRICT, legacy PERMISSIVE: a client outside the mesh reaches legacy's inbound in
    plaintext and not reviews'; web's requests to legacy still go over mTLS."""
    mesh.declare(peer_auth("legacy", "PERMISSIVE", "legacy"))
    assert mesh.plaintext("legacy") == 200
    assert mesh.plaintext("reviews") is None
    before = mesh.requests(mesh.web, reporter="source", destination_service="legacy",
                           connection_security_policy="mutual_tls")
    assert mesh.call("legacy") == (200, b"legacy")
    counted_by_web(mesh, "legacy", "mutual_tls", before + 1)
    wait_for(lambda: mesh.requests(mesh.sidecars["legacy"], reporter="destination",
                                   source_workload="web",
                                   connection_security_policy="mutual_tls") >= 1,
             TIMEOUT, "legacy counting web's request as mTLS")


def test_a_disabled_service_gets_plaintext_from_callers_http_and_tcp(mesh: PeerAuthMesh) -> None:
    """tls-app and db DISABLE (an app doing its own TLS, a database): web calls them in
    plaintext (`none` on both sides), their inbound takes a plaintext client, and the other
    services stay mTLS; back to STRICT, web calls them over mTLS again."""
    mesh.declare(peer_auth("tls-app", "DISABLE", "tls-app"), peer_auth("db", "DISABLE", "db"))
    app_side = {"reporter": "destination", "connection_security_policy": "none"}
    plain_on_app = mesh.requests(mesh.sidecars["tls-app"], **app_side)
    assert mesh.plaintext("tls-app") == 200
    before = mesh.requests(mesh.web, reporter="source", destination_service="tls-app",
                           connection_security_policy="none")
    assert mesh.call("tls-app") == (200, b"tls-app")
    counted_by_web(mesh, "tls-app", "none", before + 1)
    # both in plaintext (web's name is not believed without mTLS: `unknown`)
    wait_for(lambda: mesh.requests(mesh.sidecars["tls-app"], **app_side) >= plain_on_app + 2,
             TIMEOUT, "tls-app counting both requests as plaintext")
    tcp = {"destination_service": "db", "response_flags": "-"}
    plain_before = mesh.connections(mesh.web, reporter="source", connection_security_policy="none",
                                    **tcp)
    with socket.create_connection(("127.0.0.1", mesh.db_port), timeout=TIMEOUT) as sock:
        echo_session(sock)
    wait_for(lambda: mesh.connections(mesh.web, reporter="source",
                                      connection_security_policy="none", **tcp)
             >= plain_before + 1, TIMEOUT, "web's plaintext connection to db counted")
    wait_for(lambda: mesh.connections(mesh.sidecars["db"], reporter="destination",
                                      connection_security_policy="none", **tcp) >= 1,
             TIMEOUT, "db counting a plaintext connection")
    assert mesh.plaintext("reviews") is None  # the rest of the mesh is still STRICT

    mesh.declare()
    assert mesh.plaintext("tls-app") is None
    before = mesh.requests(mesh.web, reporter="source", destination_service="tls-app",
                           connection_security_policy="mutual_tls")
    assert mesh.call("tls-app") == (200, b"tls-app")
    counted_by_web(mesh, "tls-app", "mutual_tls", before + 1)
    mtls_before = mesh.connections(mesh.web, reporter="source",
                                   connection_security_policy="mutual_tls", **tcp)
    with socket.create_connection(("127.0.0.1", mesh.db_port), timeout=TIMEOUT) as sock:
        echo_session(sock)
    wait_for(lambda: mesh.connections(mesh.web, reporter="source",
                                      connection_security_policy="mutual_tls", **tcp)
             >= mtls_before + 1, TIMEOUT, "web's mTLS connection to db counted")


def test_a_service_overrides_its_namespace(mesh: PeerAuthMesh) -> None:
    """Namespace default PERMISSIVE and reviews STRICT: every sidecar but reviews' takes a
    plaintext client; without the per-service one reviews follows the namespace, and without
    either the mesh's STRICT is back."""
    mesh.declare(peer_auth("default", "PERMISSIVE"), peer_auth("reviews", "STRICT", "reviews"))
    assert mesh.plaintext("legacy") == 200 and mesh.plaintext("tls-app") == 200
    assert mesh.plaintext("reviews") is None
    assert mesh.call("reviews") == (200, b"reviews")
    mesh.declare(peer_auth("default", "PERMISSIVE"), peer_auth("reviews", "UNSET", "reviews"))
    assert mesh.plaintext("reviews") == 200
    mesh.declare()
    assert [mesh.plaintext(s) for s in ("legacy", "reviews", "tls-app")] == [None] * 3
    assert mesh.call("reviews") == (200, b"reviews")


def test_removing_it_cuts_a_plaintext_connection_open_meanwhile(mesh: PeerAuthMesh) -> None:
    """A plaintext keep-alive connection admitted while legacy was PERMISSIVE carries nothing
    once its PeerAuthentication is deleted (STRICT again, from the mesh), and a new one is
    refused; web still reaches legacy, over mTLS."""
    mesh.declare(peer_auth("legacy", "PERMISSIVE", "legacy"))
    host, port = mesh.sidecars["legacy"].info["inbound"].split(":")
    conn = http.client.HTTPConnection(host, int(port), timeout=TIMEOUT)
    try:
        conn.request("GET", "/", headers={"Host": "legacy"})
        first = conn.getresponse()
        assert (first.status, first.read()) == (200, b"legacy")
        mesh.declare()
        with pytest.raises((OSError, http.client.HTTPException)):
            conn.request("GET", "/again", headers={"Host": "legacy"})
            conn.getresponse().read()
    finally:
        conn.close()
    assert mesh.plaintext("legacy") is None
    assert mesh.call("legacy") == (200, b"legacy")


async def test_removing_it_cuts_a_plaintext_http2_connection_open_meanwhile(
        mesh: PeerAuthMesh) -> None:
    """The same for HTTP/2 in plaintext (h2c, prior knowledge, as a gRPC client outside the
    mesh): the connection is closed once the sync shows legacy STRICT again."""
    mesh.declare(peer_auth("legacy", "PERMISSIVE", "legacy"))
    port = int(mesh.sidecars["legacy"].info["inbound"].rsplit(":", 1)[1])
    async with H2Client(port) as client:
        # Served: answered by legacy's sidecar (its app, http.server, answers HTTP/2's preface
        # without a status line, so the sidecar's answer is 503 upstream_connect_failure).
        assert (await client.request("legacy", "/", timeout=TIMEOUT)).status in (200, 503)
        mesh.declare()  # (blocks this loop: what the sidecar sent meanwhile waits unread)
        assert client.task is not None
        await asyncio.wait_for(client.task, TIMEOUT)  # its reader met the sidecar's close


@pytest.mark.parametrize("docs, expected", [
    (peer_auth("one", "PERMISSIVE") + peer_auth("two", "DISABLE"),
     "spec.selector: namespace default already has a namespace-wide PeerAuthentication"),
    (peer_auth("legacy", "PERMISIVE", "legacy"),
     "spec.mtls.mode: unknown value 'PERMISIVE', expected one of STRICT, PERMISSIVE, DISABLE, "
     "UNSET"),
])
def test_the_control_plane_refuses_a_bad_set(mesh: PeerAuthMesh, docs: str,
                                             expected: str) -> None:
    """Two namespace-wide PeerAuthentications, or an unknown mode, are refused whole with the
    field path; nothing is applied and the sidecars keep their mode."""
    mesh.declare()
    status, body = mesh.api("/api/v1/apply", "POST", docs)
    assert status == 422 and expected in str(body), (status, body)
    status, listed = mesh.api("/api/v1/peerauthentications")
    assert status == 200 and isinstance(listed, dict) and listed["items"] == []
    assert mesh.plaintext("legacy") is None


def test_check_warns_of_each_relaxing_peer_authentication(mesh: PeerAuthMesh) -> None:
    """`meshctl check` lists each PeerAuthentication: a PERMISSIVE or DISABLE one warns,
    naming the registered services whose mode it decides (not those a per-service one
    overrides); a STRICT one is fine; warnings do not fail the command."""
    mesh.declare(peer_auth("default", "DISABLE"), peer_auth("legacy", "PERMISSIVE", "legacy"),
                 peer_auth("reviews", "STRICT", "reviews"))
    try:
        status, body = mesh.api("/api/v1/check")
        assert status == 200 and isinstance(body, dict), body
        [group] = [g for g in body["groups"] if g["title"] == "mTLS (PeerAuthentication)"]
        assert [(c["name"], c["state"], c["detail"]) for c in group["checks"]] == [
            ("PeerAuthentication default/default", "warn",
             "DISABLE, mTLS not enforced for: db, tls-app, web"),
            ("PeerAuthentication default/legacy", "warn",
             "PERMISSIVE, mTLS not enforced for: legacy"),
            ("PeerAuthentication default/reviews", "ok", "STRICT")]
        assert all(c["hint"] for c in group["checks"] if c["state"] == "warn")
        cli = subprocess.run([PYTHON, "-m", "meshctl", "--control-plane", mesh.cp.info["api"],
                              "check"], capture_output=True, text=True, timeout=60)
        assert cli.returncode == 0, cli.stderr
        assert "PeerAuthentication default/legacy" in cli.stdout
        assert "PERMISSIVE, mTLS not enforced for: legacy" in cli.stdout
    finally:
        mesh.declare()
