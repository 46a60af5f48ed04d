"""The control plane over TLS: its own certificate renews in place (gRPC and API); the HTTP API
over HTTPS (--api-tls, --api-cert) with meshctl verifying it; sslscan of the API port."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import socket
import ssl
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest
from cryptography import x509
from grpc import aio

from meshctl.api import mesh_pb2, mesh_pb2_grpc
from meshctl.ca import CertificateAuthority, init_ca
from meshctl.controlplane.ca_service import CONTROL_PLANE_CERT_LIFETIME
from meshctl.controlplane.servercert import RenewingServerCertificate
from tests.fakes import FakeClock
from tests.helpers_mesh import (
    PYTHON,
    ROOT,
    MeshProcess,
    start_control_plane,
    start_sidecar,
    wait_for,
)
from tests.test_tls_scan import accepted_ciphers, enabled_protocols, scan_port

pytestmark = pytest.mark.timeout(120)


def server_cert_serial(port: int, bundle: Path, alpn: str) -> int:
    """Handshake with 127.0.0.1:port, verifying against ``bundle``; the leaf's serial."""
    ctx = ssl.create_default_context(cafile=str(bundle))
    ctx.set_alpn_protocols([alpn])
    with socket.create_connection(("127.0.0.1", port), timeout=5) as raw, \
            ctx.wrap_socket(raw, server_hostname="localhost") as tls:
        der = tls.getpeercert(binary_form=True)
    assert der is not None
    return x509.load_der_x509_certificate(der).serial_number


async def in_thread(fn: object, *args: object) -> object:
    return await asyncio.to_thread(fn, *args)  # type: ignore[arg-type]


async def test_own_certificate_is_renewed_for_new_grpc_and_api_connections(
        tmp_path: Path) -> None:
    """Past half its 30-day lifetime, the next handshake (gRPC or API) gets a new certificate;
    a connection opened before keeps working. Before, it was issued once, at start, so a
    control plane up for 30 days refused every sidecar reconnecting."""
    # 0.6 of a lifetime ago, so that every certificate it issues is valid right now for the
    # clients, which verify with the real time
    clock = FakeClock(time.time() - 0.6 * CONTROL_PLANE_CERT_LIFETIME)
    init_ca(tmp_path / "certs", clock=clock)
    ca = CertificateAuthority(tmp_path / "certs", clock=clock)
    bundle = tmp_path / "certs" / "trust-bundle.pem"
    own = RenewingServerCertificate(ca, ["localhost"], clock=clock)
    assert own.current.not_after - own.current.issued_at == pytest.approx(
        CONTROL_PLANE_CERT_LIFETIME)

    grpc_server = aio.server()
    mesh_pb2_grpc.add_MeshControlServicer_to_server(  # type: ignore[no-untyped-call]
        mesh_pb2_grpc.MeshControlServicer(), grpc_server)
    grpc_port = grpc_server.add_secure_port("127.0.0.1:0", own.grpc_credentials())
    await grpc_server.start()

    async def echo(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        while data := await reader.read(100):
            writer.write(data)
        writer.close()

    api = await asyncio.start_server(echo, "127.0.0.1", 0, ssl=own.api_context())
    api_port = api.sockets[0].getsockname()[1]
    try:
        first = own.current.chain_pem
        grpc_serial = await in_thread(server_cert_serial, grpc_port, bundle, "h2")
        api_serial = await in_thread(server_cert_serial, api_port, bundle, "http/1.1")
        assert grpc_serial == api_serial  # one certificate for both
        ctx = ssl.create_default_context(cafile=str(bundle))
        reader, writer = await asyncio.open_connection("127.0.0.1", api_port, ssl=ctx,
                                                       server_hostname="localhost")

        clock.now += 0.49 * CONTROL_PLANE_CERT_LIFETIME  # not due yet
        assert await in_thread(server_cert_serial, api_port, bundle, "http/1.1") == api_serial
        assert own.renewals == 0

        clock.now += 0.11 * CONTROL_PLANE_CERT_LIFETIME  # past half the lifetime: now
        new_grpc = await in_thread(server_cert_serial, grpc_port, bundle, "h2")
        new_api = await in_thread(server_cert_serial, api_port, bundle, "http/1.1")
        assert own.renewals == 1 and own.current.chain_pem != first
        assert new_grpc == new_api != api_serial
        # And a real gRPC client still gets through (TLS verified with the trust bundle).
        async with aio.secure_channel(f"127.0.0.1:{grpc_port}", grpc.ssl_channel_credentials(
                bundle.read_bytes()), options=[("grpc.ssl_target_name_override",
                                                "localhost")]) as channel:
            stub = mesh_pb2_grpc.MeshControlStub(channel)  # type: ignore[no-untyped-call]
            with pytest.raises(aio.AioRpcError) as err:
                await stub.IssueCertificate(mesh_pb2.CertificateRequest(), timeout=5)
            assert err.value.code() == grpc.StatusCode.UNIMPLEMENTED  # handshake passed

        writer.write(b"still here")  # the connection opened before the renewal
        assert await asyncio.wait_for(reader.readexactly(10), 5) == b"still here"
        writer.close()
    finally:
        api.close()
        await grpc_server.stop(None)


async def test_a_rotated_ca_signs_the_next_handshake_certificate(tmp_path: Path) -> None:
    """After `meshctl certs rotate` (a new root and intermediate) and the old root retired,
    the next handshake gets a certificate from the new intermediate, which clients holding
    only the new bundle verify, rather than one chaining to the old root until half its 30
    days passed."""
    from meshctl.ca import BootstrapTokens
    from meshctl.ca.rotation import retire_root, rotate_root
    from meshctl.controlplane.ca_service import CertificateService

    directory = tmp_path / "certs"
    init_ca(directory)
    bundle = directory / "trust-bundle.pem"
    service = CertificateService(CertificateAuthority(directory), BootstrapTokens.load(directory))
    own = RenewingServerCertificate(service.current_ca, ["localhost"])

    async def close(_reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.close()

    api = await asyncio.start_server(close, "127.0.0.1", 0, ssl=own.api_context())
    port = api.sockets[0].getsockname()[1]
    try:
        before = await in_thread(server_cert_serial, port, bundle, "http/1.1")
        assert own.renewals == 0  # nothing changed: nothing issued
        retire_root(directory, rotate_root(directory))  # clients now trust the new root only
        after = await in_thread(server_cert_serial, port, bundle, "http/1.1")  # verified
        assert after != before and own.renewals == 1
    finally:
        api.close()


def meshctl(*args: str, cwd: Path = ROOT, env: dict[str, str] | None = None
            ) -> subprocess.CompletedProcess[str]:
    full_env = {k: v for k, v in os.environ.items() if not k.startswith("AMI_")}
    full_env.update(env or {})
    return subprocess.run([PYTHON, "-m", "meshctl", *args], capture_output=True, text=True,
                          cwd=cwd, env=full_env, timeout=30)


@pytest.fixture(scope="module")
def tls_cp(tmp_path_factory: pytest.TempPathFactory) -> Iterator[MeshProcess]:
    tmp = tmp_path_factory.mktemp("api-tls")
    (tmp / "mesh").mkdir()
    cp = start_control_plane(tmp, args=("--api-tls",))
    try:
        yield cp
    finally:
        cp.stop()


def test_meshctl_talks_to_an_https_api_and_verifies_it(tls_cp: MeshProcess,
                                                       tmp_path: Path) -> None:
    """--api-tls: meshctl apply/get/proxy-status over HTTPS, trusting the mesh roots from
    --ca-file, $AMI_CA_FILE or ./certs/trust-bundle.pem; sidecars still connect (gRPC)."""
    api, bundle = tls_cp.info["api"], tls_cp.info["certs_dir"] / "trust-bundle.pem"
    assert api.startswith("https://")
    token = {"AMI_TOKEN": tls_cp.info["token"]}
    route = tmp_path / "route.yaml"
    route.write_text("apiVersion: ami.mesh/v1alpha1\nkind: Route\nmetadata: {name: reviews}\n"
                     "spec:\n  host: reviews\n  rules:\n    - backends: [{service: reviews}]\n")
    applied = meshctl("--control-plane", api, "--ca-file", str(bundle), "apply", "-f",
                      str(route), env=token)
    assert applied.returncode == 0, applied.stderr
    assert "route.ami.mesh/reviews created" in applied.stdout

    by_env = meshctl("get", "routes", "-o", "json",
                     env={"AMI_CONTROL_PLANE": api, "AMI_CA_FILE": str(bundle)})
    assert by_env.returncode == 0, by_env.stderr
    assert [r["metadata"]["name"] for r in json.loads(by_env.stdout)["items"]] == ["reviews"]

    checked = meshctl("--control-plane", api, "--ca-file", str(bundle), "check")
    assert checked.stdout.splitlines()[:3] == [
        "Control plane", f"  ✔ control plane reachable at {api}",
        f"  ✔ API transport: https on 127.0.0.1:{api.rpartition(':')[2]}"], checked.stdout
    assert checked.stdout.count("Control plane") == 1

    # From the directory holding certs/ (as after `meshctl certs init`), nothing to pass.
    by_cwd = meshctl("--control-plane", api, "get", "routes", cwd=tls_cp.info["certs_dir"].parent)
    assert by_cwd.returncode == 0 and "reviews" in by_cwd.stdout, by_cwd.stderr

    sidecar = start_sidecar(tmp_path, tls_cp.info["grpc"], "reviews", "v1", app="127.0.0.1:9")
    try:
        def listed() -> bool:
            out = meshctl("--control-plane", api, "--ca-file", str(bundle), "proxy-status",
                          "-o", "json")
            assert out.returncode == 0, out.stderr
            return any(p["service"] == "reviews" for p in json.loads(out.stdout))

        wait_for(listed, 20, "the sidecar in proxy-status over HTTPS")
    finally:
        sidecar.stop()


def test_an_unverified_api_is_refused_with_the_way_out(tls_cp: MeshProcess,
                                                      tmp_path: Path) -> None:
    """Without the mesh roots meshctl refuses the certificate and says what to pass; plain
    http:// to the HTTPS port fails instead of sending the token in clear."""
    api = tls_cp.info["api"]
    unverified = meshctl("--control-plane", api, "get", "routes", cwd=tmp_path)
    assert unverified.returncode == 1
    assert "CERTIFICATE_VERIFY_FAILED" in unverified.stderr
    assert "--ca-file" in unverified.stderr and "AMI_CA_FILE" in unverified.stderr

    plain = meshctl("--control-plane", api.replace("https://", "http://"), "get", "routes",
                    cwd=tmp_path)
    assert plain.returncode == 1 and f"use {api}" in plain.stderr, plain.stderr


def test_the_grpc_port_is_named_as_such_not_offered_as_https(tls_cp: MeshProcess,
                                                             tmp_path: Path) -> None:
    """--control-plane at the gRPC config-stream port (HTTP/2 only): in plain HTTP or HTTPS
    (its certificate trusted), meshctl says it is the gRPC port and where the API is, instead
    of suggesting https:// (which failed next with 'Remote end closed connection')."""
    bundle = str(tls_cp.info["certs_dir"] / "trust-bundle.pem")
    grpc_addr = tls_cp.info["grpc"]
    for url in (f"http://{grpc_addr}", f"https://{grpc_addr}"):
        out = meshctl("--control-plane", url, "--ca-file", bundle, "get", "routes", cwd=tmp_path)
        assert out.returncode == 1, out
        assert (f"{grpc_addr} looks like the control plane's gRPC config-stream port"
                in out.stderr and "the API is on its --listen address" in out.stderr), out.stderr
        assert "use https://" not in out.stderr
    check = meshctl("--control-plane", f"http://{grpc_addr}", "check", cwd=tmp_path)
    assert check.returncode == 1 and "hint: " + grpc_addr + " looks like" in check.stdout, \
        check.stdout


def test_https_to_a_plain_http_api_says_use_http(tmp_path: Path) -> None:
    """https:// to a control plane serving plain HTTP: the TLS error, then that it speaks
    plain HTTP and the http:// URL to use."""
    (tmp_path / "mesh").mkdir()
    cp = start_control_plane(tmp_path)
    try:
        api = cp.info["api"]
        out = meshctl("--control-plane", api.replace("http://", "https://"), "get", "routes",
                      cwd=tmp_path)
        assert out.returncode == 1, out
        assert out.stderr.rstrip().endswith(
            f"speaks plain HTTP, not HTTPS: use {api}"), out.stderr
        assert "WRONG_VERSION_NUMBER" in out.stderr
    finally:
        cp.stop()


async def test_sslscan_api_port_offers_only_tls12_and_13_aead(tls_cp: MeshProcess) -> None:
    """The HTTPS API has the mesh listeners' settings: TLS 1.2/1.3 only, AEAD ciphers only."""
    report = await scan_port(int(tls_cp.info["api"].rpartition(":")[2]))
    assert enabled_protocols(report) == {"tls1.2", "tls1.3"}
    ciphers = accepted_ciphers(report)
    assert ciphers and all(any(m in name for m in ("GCM", "CHACHA20", "CCM"))
                           for _, name in ciphers), ciphers


def test_api_cert_from_the_operator(tmp_path: Path) -> None:
    """--api-cert/--api-key serve the operator's certificate (here from another CA), which
    meshctl verifies with --ca-file; a missing key file stops serve with a clear error."""
    other = tmp_path / "other-ca"
    init_ca(other)
    ca = CertificateAuthority(other)
    from meshctl.controlplane.ca_service import control_plane_certificate

    cert = control_plane_certificate(ca, ["localhost"])
    (tmp_path / "api.pem").write_bytes(cert.chain_pem)
    (tmp_path / "api.key").write_bytes(cert.key_pem)
    (tmp_path / "mesh").mkdir()
    cp = start_control_plane(tmp_path, args=("--api-cert", str(tmp_path / "api.pem"),
                                             "--api-key", str(tmp_path / "api.key")))
    try:
        api = cp.info["api"]
        mesh_roots = meshctl("--control-plane", api, "--ca-file",
                             str(cp.info["certs_dir"] / "trust-bundle.pem"), "get", "routes")
        assert mesh_roots.returncode == 1 and "CERTIFICATE_VERIFY_FAILED" in mesh_roots.stderr
        operator_roots = meshctl("--control-plane", api, "--ca-file",
                                 str(other / "trust-bundle.pem"), "get", "routes")
        assert operator_roots.returncode == 0, operator_roots.stderr
    finally:
        cp.stop()
    missing = meshctl("serve", "--config-dir", str(tmp_path / "mesh"), "--certs-dir",
                      str(tmp_path / "certs"), "--state-dir", str(tmp_path / "state2"),
                      "--listen", "127.0.0.1:0", "--grpc-listen", "127.0.0.1:0",
                      "--api-cert", str(tmp_path / "api.pem"),
                      "--api-key", str(tmp_path / "nope.key"))
    assert missing.returncode == 1 and "nope.key" in missing.stderr, missing.stderr
    lonely = meshctl("serve", "--api-cert", str(tmp_path / "api.pem"))
    assert lonely.returncode == 2 and "--api-key" in lonely.stderr


def _https_front(listener: socket.socket, ctx: ssl.SSLContext) -> None:
    """An HTTPS server as nginx or an ingress in front of the API: h2 when offered, else
    HTTP/1.1 (answered with an empty RouteList)."""
    def one(conn: socket.socket) -> None:
        with contextlib.suppress(OSError), ctx.wrap_socket(conn, server_side=True) as tls:
            tls.recv(65536)
            body = b'{"kind": "RouteList", "items": []}'
            tls.sendall(b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n"
                        b"Content-Length: %d\r\nConnection: close\r\n\r\n%s" % (len(body), body))

    with contextlib.suppress(OSError):
        while True:
            conn, _ = listener.accept()
            threading.Thread(target=one, args=(conn,), daemon=True).start()


def test_an_https_front_that_speaks_h2_is_not_taken_for_the_grpc_port(tmp_path: Path) -> None:
    """The API behind an HTTPS reverse proxy that offers h2 (and HTTP/1.1), its certificate
    from a CA meshctl was not given: the way out is --ca-file (the hint said it looked like
    the gRPC port, since only h2 was probed); in plain HTTP: use https://."""
    init_ca(tmp_path / "ca")
    from meshctl.controlplane.ca_service import control_plane_certificate

    cert = control_plane_certificate(CertificateAuthority(tmp_path / "ca"), ["localhost"])
    (tmp_path / "front.pem").write_bytes(cert.chain_pem)
    (tmp_path / "front.key").write_bytes(cert.key_pem)
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.load_cert_chain(tmp_path / "front.pem", tmp_path / "front.key")
    ctx.set_alpn_protocols(["h2", "http/1.1"])
    listener = socket.create_server(("127.0.0.1", 0))
    threading.Thread(target=_https_front, args=(listener, ctx), daemon=True).start()
    front = f"127.0.0.1:{listener.getsockname()[1]}"
    try:
        unknown = meshctl("--control-plane", f"https://{front}", "get", "routes", cwd=tmp_path)
        assert unknown.returncode == 1 and "CERTIFICATE_VERIFY_FAILED" in unknown.stderr
        assert "--ca-file" in unknown.stderr and "gRPC" not in unknown.stderr, unknown.stderr
        plain = meshctl("--control-plane", f"http://{front}", "get", "routes", cwd=tmp_path)
        assert plain.returncode == 1 and f"use https://{front}" in plain.stderr, plain.stderr
        trusted = meshctl("--control-plane", f"https://{front}", "--ca-file",
                          str(tmp_path / "ca" / "trust-bundle.pem"), "get", "routes",
                          cwd=tmp_path)
        assert trusted.returncode == 0, trusted.stderr
    finally:
        listener.shutdown(socket.SHUT_RDWR)
        listener.close()
