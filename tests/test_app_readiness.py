"""An endpoint takes traffic only while its app serves: the sidecar probes the app and the
control plane publishes the endpoint only then (real control plane, sidecars and apps)."""

from __future__ import annotations

import subprocess
from collections.abc import Iterator
from typing import Any

import pytest

from proxy.appprobe import FAILURE_THRESHOLD, NOT_SERVING, SERVING, AppProbe, ProbeSpec
from proxy.config import Address
from tests.helpers_mesh import (
    PYTHON,
    ROOT,
    free_port,
    http_get,
    http_json,
    proxies,
    spawn,
    start_backend,
    wait_for,
)
from tests.meshbuilder import Mesh

pytestmark = pytest.mark.timeout(120)

# GET /healthz answers with the status written in the file argv[2]; anything else 200 "app".
_HEALTH_APP = """
import sys
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
status_file = sys.argv[2]
class H(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    def do_GET(self):
        status = int(open(status_file).read()) if self.path == "/healthz" else 200
        self.send_response(status)
        self.send_header("Content-Length", "3")
        self.end_headers()
        self.wfile.write(b"app")
    def log_message(self, *args):
        pass
ThreadingHTTPServer.daemon_threads = True
ThreadingHTTPServer(("127.0.0.1", int(sys.argv[1])), H).serve_forever()
"""
_NO_ENDPOINT = b"no_healthy_upstream: no healthy endpoint for the destination\n"


class ReadinessMesh(Mesh):
    """A control plane and a client sidecar; the tests add the sidecars under test."""

    def build(self) -> ReadinessMesh:
        self.control_plane(warmup=0.0)
        self.client = self.sidecar("productpage")
        return self

    def call(self, host: str) -> tuple[int, bytes]:
        return http_get(f"http://{self.client.info['outbound']}/", {"Host": host})

    def app_state(self, name: str) -> Any:
        entry = next((p for p in proxies(self.cp) if p["name"] == name), None)
        assert entry is not None, f"{name} is not registered"
        return entry["app"]

    def meshctl_check(self) -> str:
        done = subprocess.run([PYTHON, "-m", "meshctl", "--control-plane", self.cp.info["api"],
                               "check"], capture_output=True, text=True, cwd=ROOT, timeout=60)
        return done.stdout


@pytest.fixture(scope="module")
def mesh(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ReadinessMesh]:
    with ReadinessMesh(tmp_path_factory.mktemp("appready")) as m:
        yield m.build()


def _published(mesh: ReadinessMesh, host: str) -> bool:
    return mesh.call(host) == (200, b"app" if host == "health" else host.encode())


def test_endpoint_is_published_once_its_app_listens_and_withdrawn_when_it_stops(
        mesh: ReadinessMesh) -> None:
    app_port = free_port()
    sidecar = mesh.sidecar("ratings", app=f"127.0.0.1:{app_port}")
    name = sidecar.info["name"]

    # The sidecar itself is ready (/ready 200, as the demo and compose wait for before they
    # start the app), but nothing listens on --app yet: no endpoint, so no request is sent
    # to it. The service is known though (its sidecar is registered), so the client is told
    # no endpoint is healthy (503, as for a Kubernetes Service without ready pods), neither
    # no_route nor a connect failure.
    wait_for(lambda: mesh.app_state(name) == NOT_SERVING, 10, "ratings reported not serving")
    status, ready = http_json(f"http://{sidecar.info['admin']}/ready")
    assert status == 200 and ready["app"] == NOT_SERVING and ready["app_error"], ready
    assert mesh.call("ratings") == (503, _NO_ENDPOINT)
    assert f"every app serving: {name}" in mesh.meshctl_check()

    app = mesh.started(start_backend(mesh.tmp, "ratings", port=app_port))
    wait_for(lambda: mesh.app_state(name) == SERVING, 10, "ratings reported serving")
    wait_for(lambda: _published(mesh, "ratings"), 10, "ratings reachable through the mesh")
    check = mesh.meshctl_check()
    assert "✔ every app serving" in check, check

    app.kill()
    wait_for(lambda: mesh.app_state(name) == NOT_SERVING, 15, "ratings withdrawn")
    wait_for(lambda: mesh.call("ratings") == (503, _NO_ENDPOINT), 10,
             "the client told no endpoint is healthy")


def test_http_probe_follows_the_apps_health_endpoint(mesh: ReadinessMesh) -> None:
    app_port = free_port()
    status_file = mesh.tmp / "health-status"
    status_file.write_text("503")
    mesh.started(spawn("health-app", [PYTHON, "-c", _HEALTH_APP, str(app_port),
                                      str(status_file)], mesh.tmp))
    wait_for(lambda: http_get(f"http://127.0.0.1:{app_port}/")[0] == 200, 10, "health app")
    sidecar = mesh.sidecar("health", app=f"127.0.0.1:{app_port}",
                           extra=["--app-probe", "/healthz", "--app-probe-interval", "0.2"])
    name = sidecar.info["name"]

    # Listening is not enough: /healthz says 503, so the endpoint stays out.
    wait_for(lambda: mesh.app_state(name) == NOT_SERVING, 10, "health reported not serving")
    _, ready = http_json(f"http://{sidecar.info['admin']}/ready")
    assert ready["app_error"] == "answered 503", ready
    assert mesh.call("health") == (503, _NO_ENDPOINT)

    status_file.write_text("204")
    wait_for(lambda: mesh.app_state(name) == SERVING, 10, "health reported serving")
    wait_for(lambda: _published(mesh, "health"), 10, "health reachable through the mesh")

    status_file.write_text("500")
    wait_for(lambda: mesh.app_state(name) == NOT_SERVING, 10, "health withdrawn again")


def test_a_sidecar_probing_nothing_reports_no_app_state(mesh: ReadinessMesh) -> None:
    app = mesh.backend("details")
    sidecar = mesh.sidecar("details", app=app.info["address"], extra=["--app-probe", "none"])
    wait_for(lambda: _published(mesh, "details"), 10, "details reachable through the mesh")
    assert mesh.app_state(sidecar.info["name"]) is None
    assert mesh.app_state(mesh.client.info["name"]) is None  # no --app: nothing to probe
    _, ready = http_json(f"http://{sidecar.info['admin']}/ready")
    assert "app" not in ready


# --- the probe's rules, without processes ------------------------------------------------------

def test_one_success_serves_and_only_repeated_failures_withdraw() -> None:
    changes: list[str] = []
    probe = AppProbe(Address("127.0.0.1", 1), ProbeSpec("tcp"), changes.append)
    assert probe.state == NOT_SERVING
    probe.record("Connection refused")
    assert probe.state == NOT_SERVING and changes == []
    probe.record(None)
    assert probe.state == SERVING and changes == [SERVING]
    for _ in range(FAILURE_THRESHOLD - 1):
        probe.record("no answer within 1 s")
    assert probe.state == SERVING  # a lost SYN or a slow accept does not unpublish
    probe.record(None)
    for _ in range(FAILURE_THRESHOLD - 1):
        probe.record("Connection refused")
    assert probe.state == SERVING  # the success in between reset the count
    probe.record("Connection refused")
    assert probe.state == NOT_SERVING and changes == [SERVING, NOT_SERVING]
    assert probe.last_error == "Connection refused"


@pytest.mark.parametrize("text, kind, path", [
    ("tcp", "tcp", ""), ("none", "none", ""), ("/healthz", "http", "/healthz"),
    ("/ready?full=1", "http", "/ready?full=1")])
def test_probe_spec_accepts(text: str, kind: str, path: str) -> None:
    spec = ProbeSpec.parse(text, 1.0)
    assert (spec.kind, spec.path) == (kind, path)


@pytest.mark.parametrize("text, interval, message", [
    ("http", 1.0, "expected tcp, none or an absolute path"),
    ("healthz", 1.0, "expected tcp, none or an absolute path"),
    ("/a b", 1.0, "expected tcp, none or an absolute path"),
    ("tcp", 0.0, "--app-probe-interval must be greater than 0"),
    ("tcp", float("nan"), "--app-probe-interval must be greater than 0")])
def test_probe_spec_refuses(text: str, interval: float, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        ProbeSpec.parse(text, interval)


def test_a_bad_probe_flag_stops_the_start_with_a_clear_error() -> None:
    done = subprocess.run([PYTHON, "-m", "proxy", "--control-plane", "127.0.0.1:1",
                           "--service", "x", "--inbound", "127.0.0.1:0", "--app",
                           "127.0.0.1:9", "--app-probe", "healthz", "--dry-run"],
                          capture_output=True, text=True, cwd=ROOT, timeout=30)
    assert done.returncode == 2
    assert "--app-probe: expected tcp, none or an absolute path" in done.stderr


@pytest.mark.parametrize("protocol", ["http2", "tcp"])
def test_an_http_probe_of_an_app_without_http1_is_refused_at_start(protocol: str) -> None:
    done = subprocess.run([PYTHON, "-m", "proxy", "--control-plane", "127.0.0.1:1",
                           "--service", "x", "--inbound", "127.0.0.1:0", "--app",
                           "127.0.0.1:9", "--app-probe", "/healthz", "--app-protocol", protocol,
                           "--dry-run"], capture_output=True, text=True, cwd=ROOT, timeout=30)
    assert done.returncode == 2 and "probe it with tcp" in done.stderr, done.stderr
