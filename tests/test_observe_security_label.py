"""`connection_security_policy` of requests and TCP connections for which the caller's
sidecar made no connection (`upstream_connect_failure`): `unknown`, as Istio labels what has
no connection to take the label from, not the mTLS or plaintext the connection would have had.
Real processes: `meshctl serve`, sidecars over mTLS, and a destination sidecar that died but is
still an endpoint (its control-plane grace)."""

from __future__ import annotations

import asyncio
import signal
import socket
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.helpers_mesh import MeshProcess, wait_for
from tests.proxyharness import free_port, metric_value
from tests.tcp_observe_harness import Mesh as TcpMesh
from tests.tcpapp import start_tcp_app
from tests.test_proxy_http2_hostile import Peer


class Mesh(TcpMesh):
    def build(self) -> Mesh:
        self.control_plane(warmup=0.0, grace=60.0)  # the dead sidecars stay endpoints
        db_app = self.started(start_tcp_app(self.tmp, "db"))
        self.db = self.sidecar("db", app=db_app.info["address"], extra=["--app-protocol", "tcp"])
        self.reviews = self.service("reviews", "v1")["v1"]
        self.db_port = free_port()
        self.web = self.sidecar("web",
                                extra=["--tcp-upstream", f"127.0.0.1:{self.db_port}=db:5432"])
        self.wait_synced(20)
        wait_for(self.db_is_tcp, 20, "db published as a TCP service")
        wait_for(lambda: self.get(self.web, "reviews")[0] == 200, 20, "reviews over mTLS")
        self.connect().close()
        return self


@pytest.fixture(scope="module")
def mesh(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Mesh]:
    with Mesh(Path(tmp_path_factory.mktemp("seclabel"))) as m:
        yield m.build()


def labels_of(mesh: Mesh, proc: MeshProcess, name: str, flags: str) -> set[str]:
    """The connection_security_policy values of ``proc``'s ``name`` series with ``flags``."""
    found = set()
    for line in mesh.metrics(proc).splitlines():
        if line.startswith(name + "{") and f'response_flags="{flags}"' in line:
            found.add(line.split('connection_security_policy="', 1)[1].split('"', 1)[0])
    return found


def test_no_connection_no_security_policy(mesh: Mesh) -> None:
    """HTTP/1.1, HTTP/2 and TCP towards sidecars that died: 503 / a closed connection
    `upstream_connect_failure` on web's sidecar, labelled `unknown`; the requests that did
    go over mTLS before stay `mutual_tls`."""
    assert mesh.get(mesh.web, "reviews")[0] == 200
    mesh.reviews.stop(signal.SIGKILL)
    mesh.db.stop(signal.SIGKILL)
    status, body = mesh.get(mesh.web, "reviews")
    assert status == 503 and b"upstream_connect_failure" in body, (status, body)

    async def h2() -> int | None:
        port = mesh.web.info["outbound"].rsplit(":", 1)[1]
        peer = await Peer.open(int(port))
        try:
            peer.request(1, "/", authority="reviews")
            return (await peer.response(1))[0]
        finally:
            peer.close()

    assert asyncio.run(h2()) == 503
    sock = socket.create_connection(("127.0.0.1", mesh.db_port), timeout=10)
    try:
        assert sock.recv(100) == b""  # closed: db's sidecar is gone
    finally:
        sock.close()
    metrics = mesh.metrics(mesh.web)
    assert metric_value(metrics, "ami_requests_total", response_flags="upstream_connect_failure",
                        reporter="source") == 2
    assert labels_of(mesh, mesh.web, "ami_requests_total", "upstream_connect_failure") == \
        {"unknown"}
    # (a connection's flags are on the closed count: it was opened with none yet)
    wait_for(lambda: labels_of(mesh, mesh.web, "ami_tcp_connections_closed_total",
                               "upstream_connect_failure"), 10, "the failed TCP connection")
    assert labels_of(mesh, mesh.web, "ami_tcp_connections_closed_total",
                     "upstream_connect_failure") == {"unknown"}
    assert labels_of(mesh, mesh.web, "ami_requests_total", "-") == {"mutual_tls"}
