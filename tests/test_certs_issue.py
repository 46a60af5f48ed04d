"""`meshctl certs issue`: identities for static proxies from the local CA files, the gateway
marker with --gateway, and a static gateway using one trusted for XFCC by a static sidecar.

Real processes: a static `echo` sidecar (STRICT) listing `ingress` in its file's
`mesh.trustedXfccIdentities` and `mesh.gatewayIdentities`, in front of an echo app; two static
HTTPS gateways of service `ingress` (verifying a partner CA's client certificates), one with an
identity issued `--gateway`, one without. Every identity comes from the command.
"""

from __future__ import annotations

import asyncio
import json
import ssl
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import yaml
from cryptography import x509

from meshctl.api.gatewaycert import is_gateway_certificate
from meshctl.ca.spiffe import uri_sans
from tests.proxyharness import (
    PROXY_ROOT,
    Backends,
    ProxyProcess,
    echo_app,
    free_port,
    get,
    read_response,
)
from tests.test_gateway_mtls import Pki, expected_xfcc, install_ca
from tests.test_gateway_mtls import pki as pki  # the fixture: a partner CA and its client

pytestmark = pytest.mark.timeout(120)
ECHO = "spiffe://cluster.local/ns/default/sa/echo"
INGRESS = "spiffe://cluster.local/ns/default/sa/ingress"
XFCC = "x-forwarded-client-cert"


def meshctl(*argv: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "meshctl", *argv], capture_output=True,
                          text=True, cwd=PROXY_ROOT, timeout=60)


def issue(ca: Path, out: Path, service: str, *extra: str) -> Path:
    done = meshctl("certs", "issue", "--dir", str(ca), "--service", service, "--out", str(out),
                   *extra)
    assert done.returncode == 0, done.stderr
    return out


@pytest.fixture(scope="module")
def ca(tmp_path_factory: pytest.TempPathFactory) -> Path:
    directory = tmp_path_factory.mktemp("ca") / "certs"
    done = meshctl("certs", "init", "--dir", str(directory))
    assert done.returncode == 0, done.stderr
    return directory


def test_issue_writes_an_identity_dir_with_the_marker_only_when_asked(ca: Path,
                                                                      tmp_path: Path) -> None:
    """The four files `--identity-dir` reads, the key private; one SPIFFE id; the gateway
    marker with --gateway only; the TTL asked for."""
    marked = issue(ca, tmp_path / "gw", "ingress", "--gateway", "--namespace", "edge",
                   "--ttl", "2h")
    plain = issue(ca, tmp_path / "plain", "ingress", "--namespace", "edge")
    assert sorted(p.name for p in marked.iterdir()) == ["bundle.pem", "cert.pem", "chain.pem",
                                                        "key.pem"]
    assert (marked / "key.pem").stat().st_mode & 0o777 == 0o600
    gw = x509.load_pem_x509_certificate((marked / "cert.pem").read_bytes())
    other = x509.load_pem_x509_certificate((plain / "cert.pem").read_bytes())
    sid = "spiffe://cluster.local/ns/edge/sa/ingress"
    assert uri_sans(gw) == uri_sans(other) == [sid]
    assert is_gateway_certificate(gw) and not is_gateway_certificate(other)
    lifetime = gw.not_valid_after_utc - gw.not_valid_before_utc
    assert 7200 <= lifetime.total_seconds() <= 7200 + 61  # not_before is backdated 60 s


@pytest.mark.parametrize(("argv", "error"), [
    (("--service", "Bad_Name"), "invalid service 'Bad_Name'"),
    (("--service", "ingress", "--ttl", "5"), "duration '5' has no unit"),
    # the CA would clamp these (a 1 m, a 1-year certificate): a static proxy never renews, so
    # a lifetime other than the one asked for is refused, not issued
    (("--service", "ingress", "--ttl", "5s"), "--ttl 5s is under the minimum of 1m"),
    (("--service", "ingress", "--ttl", "87600h"), "--ttl 87600h outlasts the intermediate CA"),
    (("--service", "ingress", "--dir", "{missing}"), "missing (run `meshctl certs init`?)"),
    (("--service", "meshctl", "--namespace", "ami-system"),
     "namespace 'ami-system' is reserved for the control plane"),
])
def test_bad_input_is_one_line_and_writes_nothing(ca: Path, tmp_path: Path,
                                                  argv: tuple[str, ...], error: str) -> None:
    out = tmp_path / "out"
    args = [a.replace("{missing}", str(tmp_path / "nowhere")) for a in argv]
    done = meshctl("certs", "issue", "--dir", str(ca), "--out", str(out), *args)
    assert done.returncode == 1 and done.stdout == ""
    assert done.stderr.startswith("meshctl certs issue: ") and error in done.stderr
    assert done.stderr.count("\n") == 1 and not out.exists()


@dataclass
class Mesh:
    pki: Pki
    marked: ProxyProcess
    marked_port: int
    unmarked: ProxyProcess
    unmarked_port: int


def start_gateway(tmp: Path, identity: Path, pki: Pki, echo_port: int) -> tuple[ProxyProcess,
                                                                                int]:
    """A static HTTPS gateway of service `ingress` sending to the echo sidecar over mTLS."""
    tmp.mkdir()
    cert, key = pki.server.write(tmp, "tls")
    install_ca(tmp / "partner-ca.crt", pki.partner_ca)
    proc = ProxyProcess(tmp, {}, args=(
        "--mode", "gateway", "--identity-dir", str(identity), "--gateway-cert", str(cert),
        "--gateway-key", str(key), "--gateway-client-ca", str(tmp / "partner-ca.crt")))
    port = free_port()
    proc.config.write_text(yaml.safe_dump({
        "version": "static-1",
        "node": {"service": "ingress", "labels": {"version": "v1"}},
        "listeners": {"gateway": f"127.0.0.1:{port}", "admin": f"127.0.0.1:{proc.admin}"},
        "mesh": {"mtls": "STRICT"},
        "services": {"echo": {"endpoints": [{"address": f"127.0.0.1:{echo_port}",
                                             "labels": {"version": "v1"},
                                             "identity": ECHO}]}},
        "gateway": {"rules": [{"destination": "echo"}]}}))
    return proc.start(), port


@pytest.fixture(scope="module")
def mesh(ca: Path, pki: Pki, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Mesh]:
    tmp = tmp_path_factory.mktemp("static-gateway")
    backends = Backends()
    procs: list[ProxyProcess] = []
    try:
        app = backends.aiohttp(echo_app())
        echo_port = free_port()
        (tmp / "echo").mkdir()
        echo = ProxyProcess(tmp / "echo", {}, args=(
            "--identity-dir", str(issue(ca, tmp / "echo-id", "echo"))))
        echo.config.write_text(yaml.safe_dump({
            "version": "static-1", "node": {"service": "echo", "labels": {"version": "v1"}},
            "listeners": {"inbound": f"127.0.0.1:{echo_port}",
                          "admin": f"127.0.0.1:{echo.admin}"},
            "app": f"127.0.0.1:{app}", "appProtocol": "http1",
            "mesh": {"mtls": "STRICT", "trustedXfccIdentities": [INGRESS],
                     "gatewayIdentities": [INGRESS]}}))
        procs.append(echo.start())
        marked, marked_port = start_gateway(
            tmp / "marked", issue(ca, tmp / "marked-id", "ingress", "--gateway"), pki, echo_port)
        procs.append(marked)
        unmarked, unmarked_port = start_gateway(
            tmp / "unmarked", issue(ca, tmp / "unmarked-id", "ingress"), pki, echo_port)
        procs.append(unmarked)
        yield Mesh(pki, marked, marked_port, unmarked, unmarked_port)
    finally:
        for proc in procs:
            proc.stop()
        backends.close()


async def xfcc_at_the_app(mesh: Mesh, port: int, tmp: Path) -> list[str]:
    """One request through a gateway with the partner's client certificate: the XFCC values
    the echo app got."""
    ctx = ssl.create_default_context(cadata=mesh.pki.server.cert_pem.decode())
    cert, key = mesh.pki.partner.write(tmp, "partner")
    ctx.load_cert_chain(cert, key)
    reader, writer = await asyncio.wait_for(
        asyncio.open_connection("127.0.0.1", port, ssl=ctx), 10)
    try:
        writer.write(get("echo", "/who", f"{XFCC}: URI=spiffe://forged.example/x\r\n"))
        resp = await asyncio.wait_for(read_response(reader), 10)
    finally:
        writer.close()
    assert resp.status == 200, resp
    return [v for k, v in json.loads(resp.body)["headers"]
            if k.lower().replace("_", "-") == XFCC]


async def test_a_static_gateway_with_an_issued_gateway_cert_is_trusted_for_xfcc(
        mesh: Mesh, tmp_path: Path) -> None:
    """Through the gateway whose identity `certs issue --gateway` made, the partner client's
    certificate reaches the app (the sidecar keeps the gateway's XFCC and appends its own);
    through the same service's gateway with an identity issued without it, the sidecar drops
    it (the id alone is not enough once gatewayIdentities lists it)."""
    partner = expected_xfcc(mesh.pki.partner)
    assert await xfcc_at_the_app(mesh, mesh.marked_port, tmp_path) == [
        f"{partner},By={ECHO};URI={INGRESS}"]
    assert await xfcc_at_the_app(mesh, mesh.unmarked_port, tmp_path) == [
        f"By={ECHO};URI={INGRESS}"]
