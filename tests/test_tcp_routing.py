"""Routes for TCP services, with real sidecars, control plane and TCP servers: a Route's
weighted subsets chosen per connection (and `meshctl shift` moving new connections only),
which rules apply to a connection, and `meshctl check` naming the fields that do not."""

from __future__ import annotations

import os
import socket
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.helpers_mesh import wait_for
from tests.proxyharness import metric_value
from tests.resources import destination_policy, documents, route
from tests.test_tcp_services import ALLOW_OTHER, TIMEOUT, TcpMesh, banner, read_line, read_to_eof

pytestmark = pytest.mark.timeout(240)
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

SUBSETS = destination_policy("db")
# db's Route with its rules written out, for the tests whose rules are the point.
ROUTE = """\
apiVersion: ami.mesh/v1alpha1
kind: Route
metadata: {name: db}
spec:
  host: db
  rules:
%s"""

ALL_V1 = route("db", {"v1": 100, "v2": 0})


def to_subset(subset: str) -> str:
    """The Route for db: every connection to ``subset``."""
    return route("db", rules=[{"backends": [{"subset": subset}]}])


WITH_V3 = documents(destination_policy("db", ("v1", "v2", "v3")), to_subset("v3"))


@pytest.fixture(scope="module")
def mesh(tmp_path_factory: pytest.TempPathFactory) -> Iterator[TcpMesh]:
    with TcpMesh(tmp_path_factory.mktemp("tcproutes")) as m:
        m.build().apply(SUBSETS)
        yield m


def meshctl(mesh: TcpMesh, *argv: str) -> subprocess.CompletedProcess[str]:
    return mesh.meshctl(*argv)


def versions(mesh: TcpMesh, count: int) -> set[str]:
    """Which db versions answer ``count`` new connections."""
    seen = set()
    for _ in range(count):
        with mesh.connect() as sock:
            seen.add(banner(sock))
    return seen


def test_shift_moves_new_connections_and_leaves_open_ones(mesh: TcpMesh) -> None:
    """A Route 100/0 sends every connection to v1; `meshctl shift db 0/100` sends every new
    one to v2, while a connection opened before the shift stays on v1 and keeps working;
    named weights (`v1=100`) shift back."""
    mesh.apply(ALL_V1)
    assert versions(mesh, 10) == {"db-v1"}
    with mesh.connect() as held:
        assert banner(held) == "db-v1"
        done = meshctl(mesh, "shift", "db", "0/100", "--timeout", "20")
        assert done.returncode == 0, done.stderr
        assert "db: v1 0% / v2 100% — applied" in done.stdout, done.stdout
        assert versions(mesh, 10) == {"db-v2"}
        held.sendall(b"still here\n")  # not moved: the same v1 server echoes it
        assert read_line(held) == b"still here\n"
        held.shutdown(socket.SHUT_WR)
        assert read_to_eof(held) == b"bye 11\n"
    done = meshctl(mesh, "shift", "db", "v1=100")
    assert done.returncode == 0, done.stderr
    assert versions(mesh, 10) == {"db-v1"}


def test_only_rules_without_http_fields_apply_to_connections(mesh: TcpMesh) -> None:
    """Rules with an HTTP-only match (headers, path) or action (timeout) are passed over, a
    rule whose sourceLabels exclude this caller too; a block of sourceLabels alone takes the
    connection (here, to v2); `meshctl check` names each HTTP-only field."""
    mesh.apply(ROUTE % """\
    - name: by-header
      matches: [{headers: {x-user: {exact: jason}}}]
      backends: [{subset: v1}]
    - name: timed
      matches: [{sourceLabels: {version: v1}}]
      timeout: 2s
      backends: [{subset: v1}]
    - name: other-callers
      matches: [{sourceLabels: {version: v9}}]
      backends: [{subset: v1}]
    - name: web
      matches: [{path: {prefix: /}}, {sourceLabels: {version: v1}}]
      backends: [{subset: v2}]
""")
    assert versions(mesh, 10) == {"db-v2"}
    done = meshctl(mesh, "check")
    lines = [line for line in done.stdout.splitlines() if "db" in line]
    text = "\n".join(lines)
    for field in ("spec.rules[0].matches[0].headers", "spec.rules[1].timeout",
                  "spec.rules[3].matches[0].path"):
        assert field in text, done.stdout
    assert "TCP" in text, done.stdout


def test_meshctl_apply_warns_of_http_only_fields_on_a_tcp_service(
        mesh: TcpMesh, tmp_path: Path) -> None:
    """`meshctl apply` of a Route for db with HTTP-only fields applies it and warns, naming
    each field; a Route without any applies silently."""
    path = tmp_path / "db.yaml"
    path.write_text(ROUTE % """\
    - matches: [{sourceLabels: {version: v1}}]
      backends: [{subset: v2}]
      retries: {attempts: 2}
    - backends: [{subset: v1}]
""")
    done = meshctl(mesh, "apply", "-f", str(path))
    assert done.returncode == 0 and done.stdout == "route.ami.mesh/db configured\n", done
    assert done.stderr == (
        "warning: Route default/db: db is a TCP service, whose connections never see these "
        "HTTP-only fields: spec.rules[0].retries (the rules with them do not apply to "
        "connections; see docs/traffic.md#tcp-services)\n")
    path.write_text(ALL_V1)
    done = meshctl(mesh, "apply", "-f", str(path))
    assert (done.returncode, done.stderr) == (0, ""), done


def test_a_route_with_no_rule_for_connections_leaves_the_whole_service(
        mesh: TcpMesh) -> None:
    """When no rule applies to a connection, it goes to any endpoint of the service, as
    without a Route (Istio's default TCP route), rather than being refused."""
    mesh.apply(ROUTE % """\
    - matches: [{headers: {x-user: {exact: jason}}}]
      backends: [{subset: v1}]
    - backends: [{subset: v1}]
      retries: {attempts: 2}
""")
    wait_for(lambda: versions(mesh, 4) == {"db-v1", "db-v2"}, TIMEOUT,
             "connections reaching both versions")


def test_a_subset_without_endpoints_is_no_healthy_upstream(mesh: TcpMesh) -> None:
    """A Route to a subset no endpoint is in: the connection is closed unanswered, never
    sent to another subset, and counted as `no_healthy_upstream`."""
    mesh.apply(WITH_V3)  # a subset no endpoint carries
    with mesh.connect() as sock:
        assert read_to_eof(sock) == b""
    wait_for(lambda: metric_value(mesh.metrics(mesh.web), "ami_tcp_connections_closed_total",
                                  destination_service="db",
                                  response_flags="no_healthy_upstream") >= 1,
             TIMEOUT, "the refusal counted on web")


def limited(max_connections: int) -> str:
    return documents(destination_policy("db", connectionPool={"maxConnections": max_connections}),
                     ALL_V1)


def refused(mesh: TcpMesh) -> bool:
    """A new connection closed before any byte of the server's."""
    with mesh.connect() as sock:
        return read_to_eof(sock) == b""


def test_max_connections_refuses_the_connection_over_the_limit(mesh: TcpMesh) -> None:
    """`connectionPool.maxConnections: 2`: with two connections open a third is closed
    without a byte, `overflow` in the metrics and the access log; once one ends a new one
    passes; raising the limit counts the connections already open."""
    mesh.apply(limited(2))
    wait_for(lambda: not metric_value(mesh.metrics(mesh.web), "ami_downstream_connections_active",
                                      listener="tcp_upstream"),
             TIMEOUT, "the earlier tests' connections ended")
    first, second = mesh.connect(), mesh.connect()
    try:
        assert banner(first) == banner(second) == "db-v1"
        assert refused(mesh)
        web = mesh.metrics(mesh.web)
        assert metric_value(web, "ami_circuit_breaker_overflow_total",
                            destination_service="db") >= 1
        wait_for(lambda: metric_value(mesh.metrics(mesh.web),
                                      "ami_tcp_connections_closed_total", reporter="source",
                                      destination_service="db", response_flags="overflow"),
                 TIMEOUT, "the overflow counted on web")
        wait_for(lambda: '"reason":"overflow"' in mesh.web.output(), TIMEOUT,
                 "the overflow in web's access log")
        second.shutdown(socket.SHUT_WR)
        assert read_to_eof(second) == b"bye 0\n"
        second.close()

        def reconnect() -> socket.socket | None:
            sock = mesh.connect()
            if read_line(sock) == b"hello from db-v1\n":
                return sock
            sock.close()  # refused: the ended one is not released yet
            return None

        second = wait_for(reconnect, TIMEOUT, "a connection once one ended")
        mesh.apply(limited(3))  # a new Breaker: the two open connections still count
        with mesh.connect() as third:
            assert banner(third) == "db-v1"
            assert refused(mesh)
    finally:
        first.close()
        second.close()
    mesh.apply(ALL_V1)  # the policy without limits, for the tests that follow


def connect_tunnel(mesh: TcpMesh) -> tuple[socket.socket, bytes]:
    """A `CONNECT db:5432` (a line sent right behind it) on web's outbound listener: the socket
    and the answer's head."""
    host, port = mesh.web.info["outbound"].split(":")
    sock = socket.create_connection((host, int(port)), timeout=TIMEOUT)
    sock.sendall(b"CONNECT db:5432 HTTP/1.1\r\nHost: db:5432\r\n\r\nearly\n")
    head = b""
    while not head.endswith(b"\r\n\r\n"):
        chunk = sock.recv(1)
        assert chunk, head
        head += chunk
    return sock, head


def connect_refused(mesh: TcpMesh, reason: str, status: int = 503) -> None:
    """CONNECT is answered ``status`` with ``reason`` in x-ami-reason and the body, then
    closed."""
    sock, head = connect_tunnel(mesh)
    with sock:
        assert head.startswith(b"HTTP/1.1 %d " % status), head
        assert f"\r\nx-ami-reason: {reason}\r\n".encode() in head, head
        assert read_to_eof(sock).startswith(reason.encode() + b": ")


def own_v2_pool(**pool: object) -> str:
    """SUBSETS with v2 setting its own ``connectionPool``, and a Route sending db to v2."""
    return documents(destination_policy("db", ("v1", {"name": "v2", "connectionPool": pool})),
                     to_subset("v2"))


def test_a_subset_with_its_own_connection_pool_limits_its_connections(mesh: TcpMesh) -> None:
    """Subset v2 sets its own connectionPool: `maxConnections: 1` refuses a second connection
    routed to v2 (`overflow`), `tcpIdleTimeout: 500ms` closes an idle one; the service itself
    (no connectionPool) still takes two connections at once to v1."""
    mesh.apply(own_v2_pool(maxConnections=1))
    with mesh.connect() as held:
        assert banner(held) == "db-v2"
        assert refused(mesh)
        held.shutdown(socket.SHUT_WR)
        assert read_to_eof(held) == b"bye 0\n"
    mesh.apply(own_v2_pool(tcpIdleTimeout="500ms"))
    with mesh.connect() as idle:
        assert banner(idle) == "db-v2"
        assert read_to_eof(idle) == b""  # an EOF within the socket's timeout (1 h otherwise)
    mesh.apply(documents(SUBSETS, ALL_V1))
    with mesh.connect() as first, mesh.connect() as second:
        assert banner(first) == banner(second) == "db-v1"


def test_connect_is_answered_once_an_endpoint_accepted_else_503_with_the_reason(
        mesh: TcpMesh) -> None:
    """CONNECT to db: `200` only once an endpoint accepted (its banner right after); a 503
    with the reason word instead when none can: a subset without endpoints
    (`no_healthy_upstream`), the connection limit reached (`overflow`), the only endpoint of
    the subset refusing (`upstream_connect_failure`: no failover to another subset); a 403
    when the destination's authorization refuses the caller (`not_authorized`)."""
    mesh.apply(ALL_V1)
    sock, head = connect_tunnel(mesh)
    with sock:
        assert head == b"HTTP/1.1 200 Connection Established\r\n\r\n"
        assert banner(sock) == "db-v1"
        assert read_line(sock) == b"early\n"  # sent before the answer: kept
        sock.shutdown(socket.SHUT_WR)
        assert read_to_eof(sock) == b"bye 6\n"  # ended: it no longer counts for the limit
    mesh.apply(WITH_V3)  # a subset no endpoint carries
    connect_refused(mesh, "no_healthy_upstream")
    mesh.apply(limited(1))
    with mesh.connect() as held:
        assert banner(held) == "db-v1"
        connect_refused(mesh, "overflow")
    mesh.apply(ALL_V1)
    mesh.apply(ALLOW_OTHER % ("reviews", 1))
    connect_refused(mesh, "not_authorized", 403)
    mesh.delete_policy("db-access")
    mesh.apps["v1"].stop()  # (the last test of the module: its apps are not restarted)
    connect_refused(mesh, "upstream_connect_failure")
    assert refused(mesh)  # and the --tcp-upstream port closes its connection unanswered
