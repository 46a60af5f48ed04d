"""Process helpers for integration tests: control plane, sidecars and backends on free ports."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

from tests.ports import free_port

T = TypeVar("T")
ROOT = Path(__file__).resolve().parent.parent
PYTHON = sys.executable

_BACKEND = """
import sys
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
name = sys.argv[2].encode()
status = int(sys.argv[3]) if len(sys.argv) > 3 else 200
class H(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    def do_GET(self):
        self.send_response(status)
        self.send_header("Content-Length", str(len(name)))
        self.end_headers()
        self.wfile.write(name)
    def log_message(self, *args):
        pass
ThreadingHTTPServer.daemon_threads = True
ThreadingHTTPServer(("127.0.0.1", int(sys.argv[1])), H).serve_forever()
"""


def wait_for(check: Callable[[], T | None], timeout: float, what: str,
             interval: float = 0.05) -> T:
    """Call ``check`` until it returns a truthy value; fail with ``what`` after ``timeout``."""
    deadline = time.monotonic() + timeout
    last_error: Exception | None = None
    while time.monotonic() < deadline:
        try:
            result = check()
            if result:
                return result
        except (OSError, ValueError) as exc:
            last_error = exc
        time.sleep(interval)  # between condition checks, bounded by the deadline
    raise AssertionError(f"timed out after {timeout}s waiting for {what} (last error: "
                         f"{last_error})")


def http_get(url: str, headers: dict[str, str] | None = None,
             timeout: float = 5.0) -> tuple[int, bytes]:
    """GET a URL; (status, body) also for error statuses."""
    req = urllib.request.Request(url, headers=headers or {})
    try:
        with urllib.request.urlopen(req, timeout=timeout) as resp:
            return resp.status, resp.read()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read()


def http_json(url: str, method: str = "GET", body: Any = None, token: str | None = None,
              content_type: str = "application/json", timeout: float = 10.0) -> tuple[int, Any]:
    """A JSON request; (status, decoded body)."""
    data = None
    if body is not None:
        data = body.encode() if isinstance(body, str) else json.dumps(body).encode()
    headers = {"Content-Type": content_type}
    if token:
        headers["Authorization"] = f"Bearer {token}"
    req = urllib.request.Request(url, data=data, method=method, headers=headers)
    try:
        with urllib.request.urlopen(req, timeout=timeout) as resp:
            return resp.status, json.loads(resp.read())
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read() or b"null")


@dataclass
class MeshProcess:
    """A child process whose output goes to a log file (shown when a test fails)."""

    name: str
    proc: subprocess.Popen[bytes]
    log: Path
    info: dict[str, Any] = field(default_factory=dict)

    def alive(self) -> bool:
        return self.proc.poll() is None

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 10.0) -> int:
        """Signal the process and wait for it; SIGKILL if it does not exit in ``timeout``."""
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
        return int(self.proc.returncode)

    def kill(self) -> None:
        self.stop(signal.SIGKILL)

    def output(self) -> str:
        return self.log.read_text(errors="replace") if self.log.exists() else ""

    def whole_lines(self) -> list[str]:
        """The output's complete lines (the process may be writing the last one as the
        test reads)."""
        text = self.output()
        return text[:text.rfind("\n") + 1].splitlines()


def spawn(name: str, argv: list[str], log_dir: Path, cwd: Path = ROOT) -> MeshProcess:
    """Start ``argv`` with stdout+stderr to ``log_dir/<name>.log`` (``python -m`` runs the
    packages found in ``cwd`` first)."""
    log = log_dir / f"{name}.log"
    out = log.open("ab")
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    proc = subprocess.Popen(argv, stdout=out, stderr=subprocess.STDOUT, cwd=cwd, env=env)
    out.close()
    return MeshProcess(name, proc, log)


def start_backend(log_dir: Path, name: str, port: int | None = None,
                  timeout: float = 10.0, status: int = 200) -> MeshProcess:
    """A tiny HTTP server answering every GET with ``name`` and ``status``."""
    port = port or free_port()
    proc = spawn(f"backend-{name}", [PYTHON, "-c", _BACKEND, str(port), name, str(status)],
                 log_dir)
    proc.info["address"] = f"127.0.0.1:{port}"
    wait_for(lambda: http_get(f"http://127.0.0.1:{port}/")[0] == status, timeout,
             f"backend {name}")
    return proc


def start_control_plane(tmp: Path, *, config_dir: Path | None = None,
                        http_port: int | None = None, grpc_port: int | None = None,
                        warmup: float | None = None, grace: float = 2.0,
                        timeout: float = 30.0, args: tuple[str, ...] = ()) -> MeshProcess:
    """``meshctl serve`` on free ports; ready once its API answers."""
    http_port = http_port or free_port()
    grpc_port = grpc_port or free_port()
    config_dir = config_dir or tmp / "mesh"
    state_dir = tmp / "state"
    certs_dir = tmp / "certs"
    proc = spawn("controlplane", [
        PYTHON, "-m", "meshctl", "serve", "--config-dir", str(config_dir),
        "--state-dir", str(state_dir), "--listen", f"127.0.0.1:{http_port}",
        "--grpc-listen", f"127.0.0.1:{grpc_port}", "--grace", str(grace),
        "--certs-dir", str(certs_dir), *(["--warmup", str(warmup)] if warmup is not None else []),
        *args], tmp)
    scheme = "https" if "--api-tls" in args or "--api-cert" in args else "http"
    proc.info.update(api=f"{scheme}://127.0.0.1:{http_port}", grpc=f"127.0.0.1:{grpc_port}",
                     config_dir=config_dir, state_dir=state_dir, certs_dir=certs_dir)
    _CERTS_BY_GRPC[f"127.0.0.1:{grpc_port}"] = certs_dir

    def up() -> bool:
        if not proc.alive():
            raise AssertionError(f"control plane exited:\n{proc.output()}")
        if scheme == "https":  # up once it accepts connections; the test checks the TLS
            with contextlib.suppress(OSError), socket.create_connection(
                    ("127.0.0.1", http_port), timeout=1):
                return (certs_dir / "trust-bundle.pem").is_file()
            return False
        return http_get(f"http://127.0.0.1:{http_port}/api/v1/proxies")[0] == 200

    try:
        wait_for(up, timeout, "the control plane API")
    except BaseException:
        proc.kill()  # a control plane that never came up must not outlive the test
        raise
    proc.info["token"] = (state_dir / "token").read_text().strip()
    return proc


# Which CA directory serves a control plane's gRPC address: sidecars need its trust bundle
# (--ca-file) and a bootstrap token for their service (--token-file), as in a real mesh.
_CERTS_BY_GRPC: dict[str, Path] = {}


def sidecar_credentials(log_dir: Path, control_plane: str, service: str,
                        namespace: str = "default", token: str = "service") -> list[str]:
    """--ca-file/--token-file arguments for a proxy of ``service``; ``token``: its
    ``service`` or its ``gateway`` token."""
    from meshctl.ca import BootstrapTokens

    certs_dir = _CERTS_BY_GRPC.get(control_plane)
    if certs_dir is None:
        return []
    tokens = BootstrapTokens.load(certs_dir)
    make = tokens.gateway_token_for if token == "gateway" else tokens.token_for
    token_file = log_dir / f"token-{token}-{namespace}-{service}"
    token_file.write_text(make(namespace, service))
    token_file.chmod(0o600)
    return ["--ca-file", str(certs_dir / "trust-bundle.pem"), "--token-file", str(token_file)]


def start_sidecar(log_dir: Path, control_plane: str, service: str, version: str, *,
                  app: str | None = None, mode: str = "sidecar", wait_ready: bool = True,
                  timeout: float = 20.0, extra: list[str] | None = None,
                  namespace: str = "default", source: Path = ROOT,
                  token: str | None = None) -> MeshProcess:
    """``python -m proxy --control-plane ...`` on free ports; waits for /ready when asked.
    ``source``: the tree whose ``proxy`` package runs (another build, as
    tests/test_proxy_versions.py makes one). ``token``: which bootstrap token it gets,
    ``service`` or ``gateway`` (default: a gateway's for a gateway, a trusted one)."""
    ports = {k: free_port() for k in ("inbound", "outbound", "admin")}
    argv = [PYTHON, "-m", "proxy", "--control-plane", control_plane, "--service", service,
            "--labels", f"version={version}", "--mode", mode,
            *(["--namespace", namespace] if namespace != "default" else []),
            "--outbound", f"127.0.0.1:{ports['outbound']}",
            "--admin", f"127.0.0.1:{ports['admin']}"]
    if mode == "sidecar":
        argv += ["--inbound", f"127.0.0.1:{ports['inbound']}"]
    if app:
        argv += ["--app", app]
    argv += sidecar_credentials(log_dir, control_plane, service, namespace,
                                token or ("gateway" if mode == "gateway" else "service"))
    name = f"{service}-{version}-{ports['inbound'] if mode == 'sidecar' else ports['admin']}"
    proc = spawn(name, argv + (extra or []), log_dir, cwd=source)
    proc.info.update({k: f"127.0.0.1:{p}" for k, p in ports.items()}, name=name)
    if wait_ready:
        def ready() -> bool:
            if not proc.alive():
                raise AssertionError(f"sidecar {name} exited:\n{proc.output()}")
            return http_get(f"http://127.0.0.1:{ports['admin']}/ready")[0] == 200

        wait_for(ready, timeout, f"sidecar {name} ready")
    return proc


def proxies(control_plane: MeshProcess) -> list[dict[str, Any]]:
    """``GET /api/v1/proxies`` of a control plane."""
    status, body = http_json(control_plane.info["api"] + "/api/v1/proxies")
    assert status == 200, body
    return list(body["proxies"])


def all_synced(control_plane: MeshProcess, names: set[str]) -> bool:
    """Whether every named proxy is connected, ready and has ACKed its latest snapshot (a
    proxy turning ready later changes the registry again: every snapshot is pending anew)."""
    listed = {p["name"]: p for p in proxies(control_plane)}
    return all(n in listed and listed[n]["synced"] and listed[n]["connected"]
               and listed[n]["ready"] for n in names)


def meshctl(control_plane: MeshProcess, *args: str, timeout: float = 60
            ) -> subprocess.CompletedProcess[str]:
    """``meshctl --control-plane <its API> ARGS`` with its API token, output as text."""
    return subprocess.run([PYTHON, "-m", "meshctl", "--control-plane",
                           control_plane.info["api"], *args], capture_output=True, text=True,
                          cwd=ROOT, timeout=timeout,
                          env={**os.environ, "AMI_TOKEN": control_plane.info["token"]})


def apply_yaml(control_plane: MeshProcess, text: str) -> int:
    """POST /api/v1/apply with the control plane's token; the highest resourceVersion."""
    status, body = http_json(control_plane.info["api"] + "/api/v1/apply", "POST", text,
                             token=control_plane.info["token"], content_type="application/yaml")
    assert status == 200, body
    return max(int(r["resourceVersion"]) for r in body["results"])
