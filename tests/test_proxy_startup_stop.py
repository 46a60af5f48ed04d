"""A stop signal during a sidecar's start-up wait (first config and first certificate) ends it
promptly: exit 0, no traceback, no listener bound (docs/proxy.md, Shutdown and drain). That
wait is one: both are asked for at once, and the listeners bind when it ends, with or
without a certificate (docs/controlplane.md, When the control plane is down)."""

from __future__ import annotations

import asyncio
import json
import signal
import socket
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from meshctl.api import mesh_pb2, mesh_pb2_grpc
from meshctl.controlplane.xds import start_grpc_server
from tests.helpers_mesh import MeshProcess, http_get, start_sidecar, wait_for
from tests.ports import free_port

pytestmark = pytest.mark.timeout(120)
# The wait lasts up to 10 s (proxy/agent.py's first_config_timeout): a proxy that sits it
# out exits 10 s or so after the signal.
PROMPT = 5.0


@pytest.fixture
def silent_control_plane() -> Iterator[str]:
    """A port that accepts connections (in the backlog) and never says a word."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", free_port()))
        sock.listen(16)
        host, port = sock.getsockname()
        yield f"{host}:{port}"


def _waiting_for(sidecar: MeshProcess, what: str) -> bool:
    """Whether the sidecar's admin answers and /ready says it is in the wait for ``what``
    (``config_applied``, then ``certificate_loaded``): its listeners bind once both end."""
    if not sidecar.alive():
        raise AssertionError(f"sidecar exited:\n{sidecar.output()}")
    status, body = http_get(f"http://{sidecar.info['admin']}/ready")
    checks = json.loads(body)
    in_wait = not checks[what] and (what == "config_applied" or checks["config_applied"])
    return status == 503 and not checks["listeners_bound"] and in_wait


def _assert_stopped_promptly(sidecar: MeshProcess, sig: int) -> None:
    sidecar.proc.send_signal(sig)
    try:
        code = sidecar.proc.wait(PROMPT)
    except subprocess.TimeoutExpired:
        sidecar.kill()
        raise AssertionError(f"still running {PROMPT}s after the signal:\n"
                             f"{sidecar.output()}") from None
    output = sidecar.output()
    assert code == 0, output
    assert "Traceback" not in output, output
    # A proxy that sat out the waits bound its listeners on the way out.
    assert "listening:" not in output, output
    for kind in ("inbound", "outbound", "admin"):
        host, _, port = sidecar.info[kind].rpartition(":")
        with socket.socket() as probe:
            probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            probe.bind((host, int(port)))  # nothing left bound


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT], ids=lambda s: s.name)
def test_a_signal_while_waiting_for_the_first_config_stops_the_sidecar_at_once(
        tmp_path: Path, silent_control_plane: str, sig: int) -> None:
    """The control plane never answers: SIGTERM (or SIGINT) during the config wait."""
    sidecar = start_sidecar(tmp_path, silent_control_plane, "reviews", "v1",
                            app="127.0.0.1:9", wait_ready=False)
    try:
        wait_for(lambda: _waiting_for(sidecar, "config_applied"), 8, "the config wait")
        _assert_stopped_promptly(sidecar, sig)
    finally:
        sidecar.kill()


class _ConfigButNoCertificate(mesh_pb2_grpc.MeshControlServicer):
    """Pushes a config on the stream; a certificate request is never answered."""

    async def StreamConfig(self, request_iterator: Any, context: Any) -> Any:
        await request_iterator.__anext__()  # the Register
        yield mesh_pb2.ConfigMessage(version="v1", nonce="1", snapshot_json=json.dumps(
            {"mesh": {"mtls": "STRICT"}, "inbound": {"mtls": "STRICT"}, "services": {}}).encode())
        async for _ in request_iterator:  # ACK, Status, until the proxy half-closes
            pass

    async def IssueCertificate(self, request: Any, context: Any) -> Any:
        await asyncio.Event().wait()


async def test_sigterm_while_waiting_for_the_first_certificate_stops_the_sidecar_at_once(
        tmp_path: Path) -> None:
    """The config arrives, the certificate does not: SIGTERM during the certificate wait."""
    server, port = await start_grpc_server(_ConfigButNoCertificate(), f"127.0.0.1:{free_port()}")
    try:
        sidecar = await asyncio.to_thread(start_sidecar, tmp_path, f"127.0.0.1:{port}",
                                          "reviews", "v1", app="127.0.0.1:9", wait_ready=False)
        try:
            await asyncio.to_thread(wait_for, lambda: _waiting_for(sidecar, "certificate_loaded"),
                                    8, "the certificate wait")
            await asyncio.to_thread(_assert_stopped_promptly, sidecar, signal.SIGTERM)
        finally:
            sidecar.kill()
    finally:
        await server.stop(None)


class _SilentWithCertificateOnRequest(mesh_pb2_grpc.MeshControlServicer):
    """Never answers the config stream; answers a certificate request (signed by a real CA
    for default/reviews) only once ``release`` is set."""

    def __init__(self, ca_dir: Path) -> None:
        from meshctl.ca import CertificateAuthority, init_ca

        init_ca(ca_dir)
        self.ca = CertificateAuthority(ca_dir)
        self.release = asyncio.Event()
        self.asked = 0

    async def StreamConfig(self, request_iterator: Any, context: Any) -> Any:
        async for _ in request_iterator:  # the Register, Status...: never a snapshot
            pass
        if False:  # a stream method: a generator that yields nothing
            yield

    async def IssueCertificate(self, request: Any, context: Any) -> Any:
        from meshctl.ca import spiffe_id_for

        self.asked += 1
        await self.release.wait()
        issued = self.ca.sign_csr(request.csr_pem.encode(),
                                  spiffe_id_for("cluster.local", "default", "reviews"), 600)
        return mesh_pb2.CertificateResponse(
            cert_chain_pem=(issued.cert_pem + issued.chain_pem).decode(),
            trust_bundle_pem=self.ca.trust_bundle().decode())


async def test_listeners_bind_when_the_one_start_up_wait_ends_not_after_a_second(
        tmp_path: Path) -> None:
    """No config ever, and the certificate, asked for at start, only once the config wait
    has ended: the listeners are bound by then, unready and without a certificate (which
    then arrives). A start used to wait 10 s for the config and only then up to 10 s more
    for the certificate: 20 s down, and this certificate installed before the listeners."""
    plane = _SilentWithCertificateOnRequest(tmp_path / "ca")
    server, port = await start_grpc_server(plane, f"127.0.0.1:{free_port()}")
    try:
        sidecar = await asyncio.to_thread(start_sidecar, tmp_path, f"127.0.0.1:{port}",
                                          "reviews", "v1", app="127.0.0.1:9", wait_ready=False)
        try:
            await asyncio.to_thread(wait_for, lambda: "no config from" in sidecar.output(), 30,
                                    "the end of the wait for a first config")
            assert plane.asked >= 1  # the certificate was asked for during that wait
            plane.release.set()

            def ready_checks() -> dict[str, Any]:
                status, body = http_get(f"http://{sidecar.info['admin']}/ready")
                return dict(json.loads(body), status=status)

            checks = await asyncio.to_thread(
                wait_for, lambda: (c := ready_checks())["certificate_loaded"] and c, 30,
                "the certificate, once answered")
            assert checks["listeners_bound"] and not checks["config_applied"]
            assert checks["status"] == 503  # unready: no config yet
            log = sidecar.output()
            assert "no workload certificate yet" in log, log
            bound = log.index("listening: inbound")
            assert bound < log.index("workload certificate spiffe://"), log
            assert "Traceback" not in log, log
        finally:
            sidecar.kill()
    finally:
        await server.stop(None)
