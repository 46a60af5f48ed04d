"""Client certificates at the HTTPS gateway (`--gateway-client-ca`, Istio's `tls.mode: MUTUAL`):
verified against the operator's CA bundle, passed on in x-forwarded-client-cert."""

from __future__ import annotations

import asyncio
import hashlib
import ipaddress
import json
import ssl
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.x509.oid import NameOID

from tests.certs import Issued, issue
from tests.proxyharness import (
    ProxyProcess,
    dry_run,
    get,
    metric_value,
    read_response,
)

pytestmark = pytest.mark.timeout(120)
RELOAD_DEADLINE = 20.0  # the files are looked at every 5 s


def name(cn: str, org: str = "Partner") -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.ORGANIZATION_NAME, org),
                      x509.NameAttribute(NameOID.COMMON_NAME, cn)])


@dataclass
class Pki:
    server: Issued  # the gateway's own HTTPS certificate
    partner_ca: Issued
    other_ca: Issued
    partner: Issued  # a client certificate from the partner CA
    stranger: Issued  # a client certificate from another CA


@pytest.fixture(scope="module")
def pki() -> Pki:
    partner_ca, other_ca = issue(name("Partner CA"), ca=True), issue(name("Other CA"), ca=True)
    return Pki(
        server=issue(name("gateway", "Operator"),
                     san=[x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
        partner_ca=partner_ca, other_ca=other_ca,
        partner=issue(name("shop-client"), partner_ca, san=[
            x509.UniformResourceIdentifier("spiffe://partner.example/shop"),
            x509.DNSName("shop.partner.example")]),
        stranger=issue(name("stranger", "Elsewhere"), other_ca))


class Gateway:
    """`python -m proxy --mode gateway`, HTTPS asking for client certificates of `ca_file`."""

    def __init__(self, tmp: Path, echo: int, pki: Pki, *extra: str) -> None:
        self.pki = pki
        self.cert, self.key = pki.server.write(tmp, "tls")
        self.ca_file = tmp / "ca.crt"
        install_ca(self.ca_file, pki.partner_ca)
        self.proc = ProxyProcess(tmp, {"echo": [echo]}, args=(
            "--mode", "gateway", "--gateway-cert", str(self.cert), "--gateway-key",
            str(self.key), "--gateway-client-ca", str(self.ca_file), *extra))
        self.port = self.proc.listen_as_gateway([{"destination": "echo"}])
        self.tmp = tmp

    def client_context(self, client: Issued | None, alpn: str = "http/1.1") -> ssl.SSLContext:
        ctx = ssl.create_default_context(cadata=self.pki.server.cert_pem.decode())
        ctx.set_alpn_protocols([alpn])
        if client is not None:
            cert, key = client.write(self.tmp, f"client-{client.cert.serial_number}")
            ctx.load_cert_chain(cert, key)
        return ctx

    async def request(self, client: Issued | None, extra: str = "",
                      ) -> dict[str, list[str]] | None:
        """One request with `client`'s certificate: the headers the backend saw (a list per
        name), or None when the gateway refused the connection."""
        try:
            reader, writer = await asyncio.wait_for(asyncio.open_connection(
                "127.0.0.1", self.port, ssl=self.client_context(client)), 10)
        except (ssl.SSLError, ConnectionError):
            return None  # refused in the handshake (TLS 1.2, or 1.3 with an early alert)
        try:
            writer.write(get("echo", "/who", extra))
            # TLS 1.3: the client's handshake ends before the server checked its certificate,
            # so a refusal arrives as an alert on the first read.
            resp = await asyncio.wait_for(read_response(reader), 10)
        except (ssl.SSLError, ConnectionError, asyncio.IncompleteReadError):
            return None
        finally:
            writer.close()
        assert resp.status == 200, resp
        seen: dict[str, list[str]] = {}
        for k, v in json.loads(resp.body)["headers"]:
            seen.setdefault(k.lower(), []).append(v)
        return seen

    async def failures(self) -> float:
        return metric_value(await self.proc.metrics(), "ami_tls_handshake_failures_total",
                            listener="gateway") or 0


def install_ca(path: Path, ca: Issued) -> None:
    """Replace the CA bundle the way a secret mount does: a rename over the old file."""
    tmp = path.with_suffix(".new")
    tmp.write_bytes(ca.cert_pem)
    tmp.replace(path)


@pytest.fixture
def gateway(tmp_path: Path, echo: int, pki: Pki) -> Iterator[Gateway]:
    gw = Gateway(tmp_path, echo, pki)
    gw.proc.start()
    yield gw
    gw.proc.stop()


def expected_xfcc(client: Issued) -> str:
    der = client.cert.public_bytes(serialization.Encoding.DER)
    return (f"Hash={hashlib.sha256(der).hexdigest()};Subject=\"CN=shop-client,O=Partner\";"
            "URI=spiffe://partner.example/shop;DNS=shop.partner.example")


async def test_a_partner_certificate_reaches_the_service_as_xfcc(gateway: Gateway) -> None:
    seen = await gateway.request(gateway.pki.partner)
    assert seen is not None
    assert seen["x-forwarded-client-cert"] == [expected_xfcc(gateway.pki.partner)]
    assert seen["x-forwarded-proto"] == ["https"]


async def test_a_forged_xfcc_from_the_client_is_replaced(gateway: Gateway) -> None:
    forged = ('x-forwarded-client-cert: Subject="CN=admin";URI=spiffe://partner.example/admin'
              "\r\nx_forwarded_client_cert: URI=spiffe://partner.example/admin\r\n")
    seen = await gateway.request(gateway.pki.partner, forged)
    assert seen is not None
    assert [k for k in seen if k.replace("_", "-") == "x-forwarded-client-cert"] \
        == ["x-forwarded-client-cert"]
    assert seen["x-forwarded-client-cert"] == [expected_xfcc(gateway.pki.partner)]


async def test_http2_requests_carry_the_client_certificate_too(gateway: Gateway) -> None:
    """curl --http2 with the partner's certificate: the same XFCC on an HTTP/2 request."""
    cert, key = gateway.pki.partner.write(gateway.tmp, "curl-client")
    done = await asyncio.to_thread(subprocess.run, [
        "curl", "-sS", "--http2", "--cacert", str(gateway.cert), "--cert", str(cert),
        "--key", str(key), "--max-time", "10", "-H", "x-forwarded-client-cert: URI=forged",
        "-w", "\n%{http_version}", f"https://127.0.0.1:{gateway.port}/who"],
        capture_output=True, text=True, timeout=30)
    assert done.returncode == 0, done.stderr
    body, version = done.stdout.rsplit("\n", 1)
    assert version == "2"
    xfcc = [v for k, v in json.loads(body)["headers"] if k.lower() == "x-forwarded-client-cert"]
    assert xfcc == [expected_xfcc(gateway.pki.partner)]


@pytest.mark.parametrize("who", ["nobody", "stranger"])
async def test_no_certificate_or_another_cas_is_refused_and_counted(gateway: Gateway,
                                                                   who: str) -> None:
    client = None if who == "nobody" else gateway.pki.stranger
    assert await gateway.request(client) is None
    assert await gateway.failures() == 1
    assert await gateway.request(gateway.pki.partner) is not None  # the listener serves on


async def test_optional_takes_clients_without_a_certificate(tmp_path: Path, echo: int,
                                                             pki: Pki) -> None:
    gw = Gateway(tmp_path, echo, pki, "--gateway-client-cert", "optional")
    gw.proc.start()
    try:
        anonymous = await gw.request(None, "x-forwarded-client-cert: URI=forged\r\n")
        assert anonymous is not None and "x-forwarded-client-cert" not in anonymous
        partner = await gw.request(pki.partner)
        assert partner is not None
        assert partner["x-forwarded-client-cert"] == [expected_xfcc(pki.partner)]
        assert await gw.request(pki.stranger) is None  # presented, so it must verify
    finally:
        gw.proc.stop()


async def test_a_new_client_ca_serves_new_handshakes(gateway: Gateway) -> None:
    """The bundle is reloaded with the certificate files; a bundle without a certificate is
    refused with a warning and the last good one stays."""
    loop = asyncio.get_running_loop()
    gateway.ca_file.with_suffix(".new").write_text("not a bundle\n")
    gateway.ca_file.with_suffix(".new").replace(gateway.ca_file)
    end = loop.time() + RELOAD_DEADLINE
    while "no PEM certificate in the client CA bundle" not in gateway.proc.stderr():
        assert loop.time() < end, gateway.proc.stderr()
        await asyncio.sleep(0.2)  # polling interval of a bounded wait
    assert await gateway.request(gateway.pki.partner) is not None

    install_ca(gateway.ca_file, gateway.pki.other_ca)
    while await gateway.request(gateway.pki.stranger) is None:
        assert loop.time() < end + RELOAD_DEADLINE, gateway.proc.stderr()
        await asyncio.sleep(0.2)  # polling interval of a bounded wait
    assert await gateway.request(gateway.pki.partner) is None  # the old CA's clients are out


@pytest.mark.parametrize(("extra", "message"), [
    (("--gateway-client-ca", "{ca}"), "--gateway-client-ca needs --gateway-cert"),
    (("--gateway-client-cert", "optional"), "--gateway-client-cert needs --gateway-client-ca"),
    (("--gateway-cert", "{cert}", "--gateway-key", "{key}", "--gateway-client-ca", "{key}"),
     "no PEM certificate in the client CA bundle"),
    (("--gateway-cert", "{cert}", "--gateway-key", "{key}", "--gateway-client-ca",
      "{missing}"), "missing.crt: No such file or directory"),
])
def test_bad_client_ca_flags_stop_the_start(tmp_path: Path, pki: Pki, extra: tuple[str, ...],
                                            message: str) -> None:
    cert, key = pki.server.write(tmp_path, "tls")
    ca, _ = pki.partner_ca.write(tmp_path, "ca")
    names = {"cert": cert, "key": key, "ca": ca, "missing": tmp_path / "missing.crt"}
    done = dry_run(tmp_path, "--mode", "gateway", *(arg.format(**names) for arg in extra))
    assert done.returncode == 2 and message in done.stderr, done.stderr


def test_hostile_certificate_fields_cannot_break_the_header(pki: Pki) -> None:
    """A partner CA may sign anything into a DN or SAN: CR/LF, quotes, `;` and `,` stay inside
    the one element (escaped), so no header or XFCC field can be smuggled in."""
    from proxy.clientcert import xfcc_line

    hostile = issue(name('x"\r\nx-evil: 1;URI=spiffe://a,é'), pki.partner_ca, san=[
        x509.UniformResourceIdentifier('spiffe://p/a";DNS=b,c\r\nx'),
        x509.DNSName("ok.example")])
    line = xfcc_line(hostile.cert.public_bytes(serialization.Encoding.DER))
    assert line.endswith(b"\r\n") and line.count(b"\r\n") == 1 and line.isascii()
    value = line[len(b"x-forwarded-client-cert: "):-2].decode()
    assert 'Subject="CN=x\\"\\0D\\0Ax-evil: 1\\;URI=spiffe://a\\,\\C3\\A9,O=Partner"' in value
    assert value.endswith(";URI=spiffe://p/a%22%3BDNS=b%2Cc%0D%0Ax;DNS=ok.example")


@pytest.mark.parametrize("version", [ssl.TLSVersion.TLSv1_2, ssl.TLSVersion.TLSv1_3],
                         ids=["tls1.2", "tls1.3"])
async def test_no_session_is_resumed_so_every_connection_is_verified(
        gateway: Gateway, version: ssl.TLSVersion) -> None:
    """A resumed session would skip the client certificate's verification (after the CA was
    withdrawn from the bundle, say): every handshake is a full one."""
    ctx = gateway.client_context(gateway.pki.partner)
    ctx.maximum_version = version

    def two_connections() -> tuple[bool, bool]:
        import socket

        session = None
        reused = []
        for _ in range(2):
            with socket.create_connection(("127.0.0.1", gateway.port), timeout=10) as raw, \
                    ctx.wrap_socket(raw, server_hostname="127.0.0.1", session=session) as tls:
                tls.sendall(get("echo", "/"))
                tls.recv(1)  # TLS 1.3 tickets, if any, come after the handshake
                session = tls.session
                reused.append(tls.session_reused)
        return reused[0], reused[1]

    assert await asyncio.to_thread(two_connections) == (False, False)
