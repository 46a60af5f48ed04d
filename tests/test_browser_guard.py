"""A web page in the user's browser may not use the loopback trust of the control plane's API
or a sidecar's admin listener (proxy/hostguard.py, docs/security.md "Browsers").

Real processes; the requests are what a browser sends: DNS rebinding gives a loopback peer and
`Host: attacker.example:PORT`; a cross-site `fetch(..., {mode: 'no-cors'})` gives a loopback
peer, a loopback Host and `Origin: http://evil.example`.
"""

from __future__ import annotations

import http.client
import json
import subprocess
import sys
import time
from collections.abc import Iterator
from typing import Any

import pytest

from proxy.hostguard import BrowserGuard, host_name
from tests.helpers_mesh import MeshProcess, apply_yaml, start_control_plane, start_sidecar

pytestmark = pytest.mark.timeout(120)

SECRET_ROUTE = """apiVersion: ami.mesh/v1alpha1
kind: Route
metadata: {name: reviews, namespace: default}
spec:
  host: reviews
  rules:
    - matches:
        - headers: {x-api-key: {exact: s3cret-key}}
      backends: [{}]
"""


def call(address: str, method: str, path: str, headers: dict[str, str],
         body: bytes | None = None) -> tuple[int, Any]:
    host, port = address.removeprefix("http://").rsplit(":", 1)
    conn = http.client.HTTPConnection(host, int(port), timeout=10)
    try:
        conn.request(method, path, body=body, headers=headers)
        resp = conn.getresponse()
        data = resp.read()
        assert resp.getheader("Access-Control-Allow-Origin") is None
    finally:
        conn.close()
    try:
        return resp.status, json.loads(data)
    except ValueError:
        return resp.status, data


def port_of(address: str) -> str:
    return address.rsplit(":", 1)[1]


@pytest.fixture(scope="module")
def mesh(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, MeshProcess]]:
    tmp = tmp_path_factory.mktemp("browser")
    cp = start_control_plane(tmp, args=("--allowed-host", "mesh.internal.example"))
    try:
        apply_yaml(cp, SECRET_ROUTE)
        sidecar = start_sidecar(tmp, cp.info["grpc"], "reviews", "v1")
        try:
            yield {"cp": cp, "sidecar": sidecar}
        finally:
            sidecar.stop()
    finally:
        cp.stop()


@pytest.mark.parametrize("path", ["/api/v1/routes", "/api/v1/namespaces/default/routes/reviews",
                                  "/api/v1/proxies", "/api/v1/dashboard/state", "/metrics",
                                  "/api/v1/stat", "/"])
def test_rebinding_reads_of_the_api_are_refused(mesh: dict[str, MeshProcess],
                                                 path: str) -> None:
    api = mesh["cp"].info["api"]
    status, body = call(api, "GET", path, {"Host": f"attacker.example:{port_of(api)}"})
    assert status == 403, body
    assert "attacker.example" in body["error"] and "--allowed-host" in body["error"]
    assert "s3cret" not in json.dumps(body)


@pytest.mark.parametrize("host", ["127.0.0.1", "localhost", "LOCALHOST.", "[::1]",
                                  "mesh.internal.example"])
def test_known_names_and_tokens_still_read(mesh: dict[str, MeshProcess], host: str) -> None:
    api = mesh["cp"].info["api"]
    status, body = call(api, "GET", "/api/v1/routes", {"Host": f"{host}:{port_of(api)}"})
    assert status == 200, body
    assert "s3cret-key" in json.dumps(body)
    # with the token, any Host: a page cannot add the token
    status, body = call(api, "GET", "/api/v1/routes", {
        "Host": f"attacker.example:{port_of(api)}",
        "Authorization": f"Bearer {mesh['cp'].info['token']}"})
    assert status == 200, body


def test_dashboard_same_origin_fetch_is_answered(mesh: dict[str, MeshProcess]) -> None:
    api = mesh["cp"].info["api"]
    origin = f"localhost:{port_of(api)}"
    status, _ = call(api, "GET", "/api/v1/dashboard/state", {
        "Host": origin, "Origin": f"http://{origin}", "Sec-Fetch-Site": "same-origin"})
    assert status == 200


def test_cross_site_reads_of_the_api_are_refused(mesh: dict[str, MeshProcess]) -> None:
    api = mesh["cp"].info["api"]
    host = f"127.0.0.1:{port_of(api)}"
    for headers in ({"Origin": "http://evil.example"}, {"Origin": "null"},
                    {"Sec-Fetch-Site": "cross-site"}):
        status, body = call(api, "GET", "/api/v1/routes", {"Host": host, **headers})
        assert status == 403, (headers, body)


def test_cross_site_write_to_the_api_is_refused(mesh: dict[str, MeshProcess]) -> None:
    api = mesh["cp"].info["api"]
    status, body = call(api, "POST", "/api/v1/apply", {
        "Host": f"127.0.0.1:{port_of(api)}", "Origin": "http://evil.example",
        "Content-Type": "text/plain"}, SECRET_ROUTE.replace("s3cret", "changed").encode())
    assert status in (401, 403), body


def test_rebinding_to_the_sidecar_admin_is_refused(mesh: dict[str, MeshProcess]) -> None:
    admin = mesh["sidecar"].info["admin"]
    evil = {"Host": f"attacker.example:{port_of(admin)}"}
    status, body = call(admin, "GET", "/config_dump", evil)
    assert status == 403, body
    assert "attacker.example" in body["error"]
    status, body = call(admin, "POST", "/logging?level=debug",
                        {**evil, "Origin": f"http://attacker.example:{port_of(admin)}"})
    assert status == 403, body
    status, body = call(admin, "GET", "/logging", {"Host": f"127.0.0.1:{port_of(admin)}"})
    assert body["loggers"]["ami.proxy"] == "info"
    # Unprivileged routes answer any caller that reaches the port (Prometheus by IP:port)
    assert call(admin, "GET", "/metrics", evil)[0] == 200
    status, body = call(admin, "GET", "/config_dump", {"Host": f"localhost:{port_of(admin)}"})
    assert status == 200 and body["version"], body


def test_cross_site_post_cannot_shut_the_sidecar_down(mesh: dict[str, MeshProcess]) -> None:
    sidecar = mesh["sidecar"]
    admin = sidecar.info["admin"]
    status, body = call(admin, "POST", "/shutdown", {
        "Host": f"127.0.0.1:{port_of(admin)}", "Origin": "http://evil.example",
        "Content-Type": "text/plain"}, b"x")
    assert status == 403, body
    status, body = call(admin, "POST", "/logging/access?enabled=true", {
        "Host": f"127.0.0.1:{port_of(admin)}", "Sec-Fetch-Site": "cross-site"})
    assert status == 403, body
    time.sleep(1)
    assert sidecar.alive()


def test_guard_names() -> None:
    guard = BrowserGuard(["Mesh.Example.", "*.ignored"], option="--x")
    assert host_name("[::1]:80") == "::1" and host_name("Example.COM.:8080") == "example.com"
    assert guard.known("10.1.2.3:9000") and guard.known("[fe80::1%25eth0]")
    assert guard.known("mesh.example:15080") and not guard.known("attacker.example")
    assert BrowserGuard(["*"], option="--x").known("attacker.example")
    assert guard.refusal(None, None, None) is None
    assert guard.refusal("localhost:1", "http://localhost:1", "same-origin") is None
    assert guard.refusal("localhost:1", "http://localhost:2", None) is not None


@pytest.mark.parametrize("value", ["https://mesh.example", "mesh.example/api", "me sh", ""])
def test_an_allowed_host_that_could_never_match_stops_the_start(value: str) -> None:
    """A URL or a path given as --allowed-host was taken and never matched any Host header:
    token-less reads from that name were refused with no hint why."""
    done = subprocess.run([sys.executable, "-m", "meshctl", "serve", "--allowed-host", value,
                           "--dry-run"], capture_output=True, text=True, timeout=60)
    assert done.returncode == 2, done
    assert "must be a host name as clients put it in the Host header" in done.stderr
    assert repr(value) in done.stderr


def test_allowed_host_forms_that_match_are_taken() -> None:
    from meshctl.commands.serve import _allowed_host

    for value in ("mesh.example", "Mesh.Example.:8080", "*", "10.0.0.1", "[::1]:80", "a_b.c"):
        assert _allowed_host(value) == value
        assert BrowserGuard([value], option="--x").known(host_name(value) if value != "*"
                                                         else "any.example")
