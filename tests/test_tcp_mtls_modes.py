"""TCP services under each mTLS mode, with a real control plane: PERMISSIVE takes an mTLS caller
and a plaintext one (a static sidecar without mTLS), DISABLE carries the bytes in plaintext
(the `ami-tcp` preamble), STRICT refuses plaintext, new or already open; the preamble never
reaches an HTTP app and HTTP never reaches a TCP app."""

from __future__ import annotations

import socket
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml

from proxy.tcpwire import PREAMBLE, first_frame
from tests.helpers_mesh import (
    PYTHON,
    MeshProcess,
    all_synced,
    free_port,
    http_get,
    http_json,
    spawn,
    wait_for,
)
from tests.meshbuilder import Mesh
from tests.proxyharness import metric_value
from tests.resources import mesh_config
from tests.tcpapp import banner, echo_session, read_to_eof, start_tcp_app

pytestmark = pytest.mark.timeout(240)
TIMEOUT = 10.0


def start_plaintext_caller(tmp: Path, endpoints: dict[str, str]) -> MeshProcess:
    """A static sidecar (no control plane, no certificate: mTLS off) that knows each of
    ``endpoints`` (service -> a sidecar's inbound address) as a TCP service, with one
    `--tcp-upstream` port each (`info["ports"]`)."""
    admin, outbound = free_port(), free_port()
    ports = {name: free_port() for name in endpoints}
    config = tmp / "legacy.yaml"
    config.write_text(yaml.safe_dump({
        "version": "static-1",
        "node": {"service": "legacy", "labels": {"version": "v0"}},
        "listeners": {"outbound": f"127.0.0.1:{outbound}", "admin": f"127.0.0.1:{admin}"},
        "mesh": {"mtls": "DISABLE", "accessLog": True},
        "services": {name: {"protocol": "tcp", "endpoints": [
            {"address": address, "labels": {"version": "v1"}}]}
            for name, address in endpoints.items()},
    }))
    proc = spawn("legacy", [PYTHON, "-m", "proxy", "--config", str(config), *(
        arg for name, port in ports.items()
        for arg in ("--tcp-upstream", f"127.0.0.1:{port}={name}"))], tmp)
    proc.info.update(admin=f"127.0.0.1:{admin}", ports=ports)

    def ready() -> bool:
        if not proc.alive():
            raise AssertionError(f"legacy sidecar exited:\n{proc.output()}")
        return http_get(f"http://127.0.0.1:{admin}/ready")[0] == 200

    wait_for(ready, TIMEOUT, "the plaintext sidecar ready")
    return proc


class ModesMesh(Mesh):
    """A control plane (PERMISSIVE to start with); `db` (a TCP app) and `api` (an HTTP app)
    behind their sidecars; `web`, whose app reaches db on a local port over whatever the mesh
    mode says; and `legacy`, a sidecar without mTLS that reaches db and (declared TCP by
    mistake) api in plaintext."""

    def build(self) -> ModesMesh:
        self.control_plane(mesh_config(mtls="PERMISSIVE"), warmup=0.0)
        self.app = self.started(start_tcp_app(self.tmp, "db-v1"))
        # --drain-timeout: the grace a plaintext connection gets when the mesh turns STRICT
        self.db = self.sidecar("db", app=self.app.info["address"], extra=[
            "--app-protocol", "tcp", "--access-log", "on", "--drain-timeout", "1"])
        self.api_app = self.backend("api")
        self.api = self.sidecar("api", app=self.api_app.info["address"])
        self.local = free_port()
        self.web = self.sidecar("web", extra=[
            "--tcp-upstream", f"127.0.0.1:{self.local}=db:5432", "--access-log", "on"])
        self.legacy = self.started(start_plaintext_caller(
            self.tmp, {"db": self.db.info["inbound"], "api": self.api.info["inbound"]}))
        wait_for(self.db_is_tcp, 20, "db published as a TCP service")
        return self

    def db_is_tcp(self) -> bool:
        status, dump = http_json(f"http://{self.web.info['admin']}/config_dump")
        service = dump["snapshot"]["services"].get("db") if status == 200 else None
        return bool(service and service["protocol"] == "tcp" and service["endpoints"])

    def mode(self, mode: str) -> None:
        """Set the mesh's mTLS mode; returns once every sidecar of the control plane runs it."""
        self.apply_synced(mesh_config(mtls=mode))
        self.wait_synced(20)

    def connect(self, via: str = "web", service: str = "db") -> socket.socket:
        """A connection of web's app (or legacy's) to ``service``, through its sidecar."""
        port = self.local if via == "web" else self.legacy.info["ports"][service]
        return socket.create_connection(("127.0.0.1", port), timeout=TIMEOUT)

    def counted(self, proc: MeshProcess, **labels: str) -> float:
        return metric_value(self.metrics(proc), "ami_tcp_connections_closed_total", **labels)



@pytest.fixture(scope="module")
def mesh(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ModesMesh]:
    with ModesMesh(tmp_path_factory.mktemp("tcpmodes")) as m:
        yield m.build()


def test_permissive_takes_an_mtls_caller_and_a_plaintext_one(mesh: ModesMesh) -> None:
    """Under PERMISSIVE, web (with a certificate) reaches db over mTLS and legacy (without)
    in plaintext; db's metrics tell them apart by `connection_security_policy`, and a
    plaintext caller is `unknown` (its claims are not believed without an identity)."""
    mesh.mode("PERMISSIVE")
    with mesh.connect("web") as sock:
        echo_session(sock)
    with mesh.connect("legacy") as sock:
        echo_session(sock)
    wait_for(lambda: mesh.counted(mesh.db, reporter="destination", source_workload="web",
                                  connection_security_policy="mutual_tls") >= 1
             and mesh.counted(mesh.db, reporter="destination", source_workload="unknown",
                              source_version="unknown", connection_security_policy="none",
                              response_flags="-") >= 1,
             TIMEOUT, "both connections counted on db")
    assert mesh.counted(mesh.legacy, reporter="source", destination_service="db",
                        connection_security_policy="none", response_flags="-") >= 1


ALLOW_WEB = """\
apiVersion: ami.mesh/v1alpha1
kind: AuthorizationPolicy
metadata: {name: db-access}
spec:
  selector: {service: db}
  action: ALLOW
  rules:
    - from: [{services: [web]}]
"""


def test_a_plaintext_connection_has_no_identity_to_authorize(mesh: ModesMesh) -> None:
    """As for a plaintext HTTP request: an ALLOW `from` web admits web's mTLS connection and
    not legacy's plaintext one, which is closed unanswered and counted `not_authorized`."""
    mesh.mode("PERMISSIVE")
    mesh.apply_synced(ALLOW_WEB)
    wait_for(lambda: all_synced(mesh.cp, mesh.names), 20, "sidecars synced")
    try:
        with mesh.connect("legacy") as sock:
            assert read_to_eof(sock) == b""
        with mesh.connect("web") as sock:
            echo_session(sock)
        wait_for(lambda: mesh.counted(mesh.db, reporter="destination",
                                      connection_security_policy="none",
                                      response_flags="not_authorized") >= 1,
                 TIMEOUT, "the refusal counted on db")
    finally:
        status, body = http_json(
            f"{mesh.cp.info['api']}/api/v1/namespaces/default/authorizationpolicies/db-access",
            "DELETE", token=mesh.cp.info["token"])
        assert status == 200, body
        mesh.sync(int(body["metadata"]["resourceVersion"]))  # the deletion's own revision
        wait_for(lambda: all_synced(mesh.cp, mesh.names), 20, "sidecars synced")


def test_the_preamble_never_reaches_an_http_app(mesh: ModesMesh) -> None:
    """legacy sends `ami-tcp` in plaintext to api's sidecar, whose app speaks HTTP: refused
    (`protocol_mismatch` on both sidecars), so no byte escapes api's per-request policies."""
    mesh.mode("PERMISSIVE")
    with mesh.connect("legacy", "api") as sock:
        sock.sendall(b"GET / HTTP/1.1\r\nHost: api\r\n\r\n")
        assert read_to_eof(sock) == b""
    wait_for(lambda: mesh.counted(mesh.api, reporter="destination",
                                  response_flags="protocol_mismatch") >= 1
             and mesh.counted(mesh.legacy, reporter="source", destination_service="api",
                              response_flags="protocol_mismatch") >= 1,
             TIMEOUT, "the refusal counted on both sidecars")
    assert "GET / " not in mesh.api_app.output()


def test_plain_http_to_a_tcp_apps_sidecar_is_still_refused(mesh: ModesMesh) -> None:
    """A plaintext HTTP request straight to db's inbound listener: `502 protocol_mismatch`;
    the preamble sent to an outbound listener is no HTTP request either: `400`."""
    mesh.mode("PERMISSIVE")
    status, body = http_get(f"http://{mesh.db.info['inbound']}/", {"Host": "db"})
    assert status == 502 and body.startswith(b"protocol_mismatch"), (status, body)
    host, port = mesh.web.info["outbound"].split(":")
    with socket.create_connection((host, int(port)), timeout=TIMEOUT) as sock:
        sock.sendall(PREAMBLE + first_frame(b"v1"))
        assert read_to_eof(sock).startswith(b"HTTP/1.1 400 ")


def test_disable_carries_the_bytes_in_plaintext(mesh: ModesMesh) -> None:
    """Under DISABLE web reaches db in plaintext, half-close included; both sidecars count the
    connection as `none`."""
    mesh.mode("DISABLE")
    with mesh.connect("web") as sock:
        echo_session(sock)
    labels = {"source_workload": "web", "destination_service": "db",
              "connection_security_policy": "none", "response_flags": "-"}
    wait_for(lambda: mesh.counted(mesh.web, reporter="source", **labels) >= 1,
             TIMEOUT, "the plaintext connection counted on web")
    # db believes no caller's name without mTLS
    wait_for(lambda: mesh.counted(mesh.db, reporter="destination", source_workload="unknown",
                                  connection_security_policy="none", response_flags="-") >= 2,
             TIMEOUT, "the plaintext connection counted on db")


def test_strict_refuses_plaintext_new_and_open(mesh: ModesMesh) -> None:
    """A plaintext connection open when the mesh turns STRICT is closed after the grace
    (db's --drain-timeout), and a new one is refused at the handshake; web switches to mTLS
    and still gets through."""
    mesh.mode("PERMISSIVE")
    with mesh.connect("legacy") as open_before:
        assert banner(open_before) == "db-v1"
        failures = metric_value(mesh.metrics(mesh.db), "ami_tls_handshake_failures_total")
        mesh.mode("STRICT")
        assert read_to_eof(open_before) == b""  # cut: its app sees the connection end
    with mesh.connect("legacy") as sock:
        assert read_to_eof(sock) == b""
    wait_for(lambda: metric_value(mesh.metrics(mesh.db), "ami_tls_handshake_failures_total")
             > failures, TIMEOUT, "the plaintext handshake refused by db")
    wait_for(lambda: mesh.counted(mesh.legacy, reporter="source", destination_service="db",
                                  response_flags="upstream_connect_failure") >= 1,
             TIMEOUT, "the refusal counted on legacy")
    with mesh.connect("web") as sock:
        echo_session(sock)
