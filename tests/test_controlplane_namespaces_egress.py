"""Names across namespaces at the edges: under `outboundTrafficPolicy: ALLOW_ANY` a bare name
several namespaces have (none the caller's) is refused, not sent out of the mesh as an outside
host, a DestinationPolicy's rate limit applies whatever spelling its host uses, and `meshctl
check` and `apply` warn of one that no sidecar enforces. Real control plane, sidecars and apps
(mTLS on): a service `localhost` in namespaces a and b (a name the machine also resolves, so a
leak would reach the outside server), `api` in b with a rate limit written as its FQDN, and a
caller in c."""

from __future__ import annotations

import socket
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.helpers_mesh import http_get, wait_for
from tests.helpers_mesh import meshctl as run_meshctl
from tests.meshbuilder import Mesh

pytestmark = pytest.mark.timeout(180)

MESH = """\
apiVersion: ami.mesh/v1alpha1
kind: MeshConfig
metadata: {name: default}
spec:
  outboundTrafficPolicy: {mode: ALLOW_ANY}
---
apiVersion: ami.mesh/v1alpha1
kind: DestinationPolicy
metadata: {name: api, namespace: b}
spec:
  host: api.b.svc.cluster.local
  rateLimit: {requestsPerSecond: 0.001, burst: 1}
"""


@pytest.fixture(scope="module")
def mesh(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    with Mesh(tmp_path_factory.mktemp("namespaces-egress")) as mesh:
        mesh.control_plane(MESH, warmup=0.0)
        outside = mesh.backend("outside")  # an outside server, on this host
        app = mesh.backend("b-api")
        mesh.sidecar("api", namespace="b", app=app.info["address"])
        for ns in ("a", "b"):
            mesh.sidecar("localhost", namespace=ns)
        caller = mesh.sidecar("web", namespace="c")
        mesh.wait_synced()
        yield {"outbound": caller.info["outbound"], "cp": mesh.cp,
               "outside_port": int(outside.info["address"].rpartition(":")[2])}


def call(mesh: dict[str, Any], host: str) -> tuple[int, bytes]:
    return http_get(f"http://{mesh['outbound']}/", {"Host": host})


def connect(mesh: dict[str, Any], target: str) -> bytes:
    """The status line the caller's sidecar answers `CONNECT target` with."""
    host, _, port = mesh["outbound"].rpartition(":")
    with socket.create_connection((host, int(port)), timeout=10) as sock:
        sock.sendall(f"CONNECT {target} HTTP/1.1\r\nHost: {target}\r\n\r\n".encode())
        head = b""
        while b"\r\n" not in head:
            chunk = sock.recv(1)
            if not chunk:
                break
            head += chunk
    return head.split(b"\r\n")[0]


def test_an_ambiguous_bare_name_is_refused_not_sent_outside(mesh: dict[str, Any]) -> None:
    """c has no `localhost` service and a and b both have one: `localhost` means none of
    them (Kubernetes DNS fails for it), so it gets 404 `no_route`, for a request and for a
    CONNECT, rather than leaving the mesh for the outside server that name resolves to; as
    `.svc` names of no service. An outside name still passes (ALLOW_ANY)."""
    port = mesh["outside_port"]
    assert call(mesh, f"127.0.0.1:{port}") == (200, b"outside")
    status, body = call(mesh, f"localhost:{port}")
    assert (status, b"no_route" in body) == (404, True), body
    assert connect(mesh, f"localhost:{port}").startswith(b"HTTP/1.1 404"), "a CONNECT leaked"
    assert connect(mesh, f"127.0.0.1:{port}").startswith(b"HTTP/1.1 200")
    status, body = call(mesh, f"api.c.svc.cluster.local:{port}")
    assert (status, b"no_route" in body) == (404, True), body


def test_the_rate_limit_applies_to_a_policy_naming_the_service_by_its_fqdn(
        mesh: dict[str, Any]) -> None:
    """b's policy names its `api` `api.b.svc.cluster.local`: b's `api` sidecar enforces its
    rate limit (one request, then 429 `rate_limited`) for a caller in c calling `api.b`."""
    wait_for(lambda: call(mesh, "api.b")[0] == 200, 20, "b's api reachable")  # the token
    status, body = call(mesh, "api.b")
    assert (status, b"rate_limited" in body) == (429, True), body


# Rate limits no sidecar enforces: only the service's own namespace's policy counts.
IGNORED_LIMITS = "".join(f"""---
apiVersion: ami.mesh/v1alpha1
kind: DestinationPolicy
metadata: {{name: {name}, namespace: {ns}}}
spec:
  host: {host}
  rateLimit: {{requestsPerSecond: 5}}
""" for name, ns, host in [("api-b", "c", "api.b"), ("api", "a", "api"),
                           ("localhost", "c", "localhost"), ("github", "c", "api.github.com")])


def meshctl(mesh: dict[str, Any], *argv: str) -> subprocess.CompletedProcess[str]:
    return run_meshctl(mesh["cp"], *argv)


def test_check_and_apply_warn_of_a_rate_limit_no_sidecar_enforces(
        mesh: dict[str, Any], tmp_path: Path) -> None:
    """A rateLimit in c's policy for `api.b`, in a's for `api` (a has none: b's), in c's for
    `localhost` (a's and b's: neither) and for an outside host is ignored: `meshctl apply`
    applies them and warns of each, `meshctl check` warns of each (exit 0) and says b's own
    policy (its host the FQDN) is enforced."""
    path = tmp_path / "limits.yaml"
    path.write_text(IGNORED_LIMITS)
    try:
        done = meshctl(mesh, "apply", "-f", str(path))
        assert done.returncode == 0, done.stderr
        warnings = {line.split(":")[1].strip(): line for line in done.stderr.splitlines()}
        assert set(warnings) == {"DestinationPolicy c/api-b", "DestinationPolicy a/api",
                                 "DestinationPolicy c/localhost", "DestinationPolicy c/github"}
        assert all(line.startswith("warning: ") and "spec.rateLimit is not enforced" in line
                   for line in warnings.values()), done.stderr
        assert ("api.b is service api of namespace b, whose sidecars enforce only namespace "
                "b's own DestinationPolicy's rateLimit; set rateLimit in a DestinationPolicy "
                "of namespace b (host: api)") in warnings["DestinationPolicy c/api-b"]
        assert ("api is service api of namespace b (namespace a has none)"
                in warnings["DestinationPolicy a/api"])
        assert ("localhost names no service from namespace c"
                in warnings["DestinationPolicy c/localhost"])
        assert ("api.github.com is a host outside the mesh, which has no sidecar to enforce a "
                "rate limit" in warnings["DestinationPolicy c/github"])

        # (the apply is still being pushed: asked again until every proxy synced)
        done = wait_for(lambda: (o := meshctl(mesh, "check")).returncode == 0 and o, 20,
                        "meshctl check to pass once the apply is pushed")
        lines = done.stdout.splitlines()
        start = lines.index("Rate limits") + 1
        group = lines[start:next(i for i in range(start, len(lines))
                                 if not lines[i].startswith(" "))]
        marks = {line.split(" rateLimit")[0]: line for line in group
                 if not line.startswith("    hint: ")}
        assert set(marks) == {"  ✔ DestinationPolicy b/api", "  ‼ DestinationPolicy a/api",
                              "  ‼ DestinationPolicy c/api-b", "  ‼ DestinationPolicy c/github",
                              "  ‼ DestinationPolicy c/localhost"}, done.stdout
        assert "hint: set rateLimit in a DestinationPolicy of namespace b (host: api)" in (
            done.stdout)
        assert "Passed with warnings." in done.stdout
    finally:
        assert meshctl(mesh, "delete", "-f", str(path)).returncode == 0
