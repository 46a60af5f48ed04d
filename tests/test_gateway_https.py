"""The gateway serves HTTPS with an operator's certificate, reloaded when its files change."""

from __future__ import annotations

import asyncio
import ipaddress
import json
import ssl
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import yaml
from cryptography import x509

from tests import certs
from tests.proxyharness import (
    ProxyProcess,
    dry_run,
    get,
    metric_value,
    read_response,
)
from tests.test_tls_scan import AEAD_MARKERS, accepted_ciphers, enabled_protocols, scan_port

pytestmark = pytest.mark.timeout(120)
RELOAD_DEADLINE = 20.0  # the files are looked at every 5 s


@dataclass
class Pem:
    cert: bytes
    key: bytes
    serial: int
    not_after: float = 0.0


def issue(name: str) -> Pem:
    """A self-signed server certificate for 127.0.0.1 (what an operator's CA would give)."""
    issued = certs.issue(certs.common_name(name), ca=None,
                         san=[x509.IPAddress(ipaddress.ip_address("127.0.0.1"))])
    return Pem(issued.cert_pem, issued.key_pem, issued.cert.serial_number,
               issued.cert.not_valid_after_utc.timestamp())


def install(pem: Pem, directory: Path) -> tuple[Path, Path]:
    """Write the pair the way cert-manager and `kubectl` secrets do: a rename over the old."""
    paths = directory / "tls.crt", directory / "tls.key"
    for path, data in zip(paths, (pem.cert, pem.key), strict=True):
        tmp = path.with_suffix(".new")
        tmp.write_bytes(data)
        tmp.replace(path)
    return paths


class Gateway:
    """`python -m proxy --mode gateway` in static mode, HTTPS on its gateway listener."""

    def __init__(self, tmp: Path, echo: int, first: Pem) -> None:
        self.cert, self.key = install(first, tmp)
        self.proc = ProxyProcess(tmp, {"echo": [echo]}, args=(
            "--mode", "gateway", "--gateway-cert", str(self.cert), "--gateway-key",
            str(self.key), "--log-level", "INFO"))
        self.port = self.proc.listen_as_gateway([{"destination": "echo"}])

    async def connect(self, trusted: Pem, alpn: tuple[str, ...] = ("http/1.1",),
                      ) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
        ctx = ssl.create_default_context(cadata=trusted.cert.decode())
        ctx.set_alpn_protocols(list(alpn))
        return await asyncio.open_connection("127.0.0.1", self.port, ssl=ctx)

    async def served_serial(self) -> int:
        """The serial number of the certificate a new handshake gets."""
        ctx = ssl.create_default_context()
        ctx.check_hostname, ctx.verify_mode = False, ssl.CERT_NONE
        _, writer = await asyncio.open_connection("127.0.0.1", self.port, ssl=ctx)
        der = writer.get_extra_info("ssl_object").getpeercert(binary_form=True)
        writer.close()
        return int(x509.load_der_x509_certificate(der).serial_number)


@pytest.fixture
def gateway(tmp_path: Path, echo: int) -> Iterator[Gateway]:
    gw = Gateway(tmp_path, echo, issue("first"))
    gw.proc.start()
    yield gw
    gw.proc.stop()


async def exchange(reader: asyncio.StreamReader, writer: asyncio.StreamWriter,
                   path: str) -> dict[str, str]:
    """One request on an open connection; the headers the backend saw."""
    writer.write(get("echo", path))
    resp = await asyncio.wait_for(read_response(reader), 10)
    assert resp.status == 200, resp
    return {k.lower(): v for k, v in json.loads(resp.body)["headers"]}


async def test_https_request_reaches_the_service_as_https(gateway: Gateway) -> None:
    first = Pem(gateway.cert.read_bytes(), b"", 0)
    reader, writer = await gateway.connect(first)
    assert writer.get_extra_info("ssl_object").selected_alpn_protocol() == "http/1.1"
    seen = await exchange(reader, writer, "/productpage")
    writer.close()
    assert seen["x-forwarded-proto"] == "https"
    assert "x-forwarded-client-cert" not in seen  # no mesh identity at the edge


async def test_browsers_get_http2_and_reach_an_http1_app(gateway: Gateway) -> None:
    """Offered `h2` and `http/1.1`, as browsers do, the gateway picks `h2`; curl --http2
    gets pages over it from an app that speaks HTTP/1.1 only (the request is downgraded on
    the last hop), one TLS connection for several requests."""
    first = Pem(gateway.cert.read_bytes(), b"", 0)
    _, writer = await gateway.connect(first, ("h2", "http/1.1"))
    assert writer.get_extra_info("ssl_object").selected_alpn_protocol() == "h2"
    writer.close()
    url = f"https://127.0.0.1:{gateway.port}"
    done = await asyncio.to_thread(subprocess.run, [
        "curl", "-sS", "--http2", "--cacert", str(gateway.cert), "--max-time", "10",
        "-w", "\n%{http_version} %{num_connects}\n", f"{url}/productpage",
        "--next", "--http2", "--cacert", str(gateway.cert), "-w", "\n%{http_version}\n",
        "-I", f"{url}/static/app.css"], capture_output=True, text=True, timeout=30)
    assert done.returncode == 0, done.stderr
    page, version, head, version_head = done.stdout.split("\n", 3)
    seen = json.loads(page)
    assert version.split() == ["2", "1"] and version_head.rstrip().endswith("2")
    assert (seen["path"], seen["version"]) == ("/productpage", "1.1")
    assert dict((k.lower(), v) for k, v in seen["headers"])["x-forwarded-proto"] == "https"
    assert head.startswith("HTTP/2 200")


async def test_plaintext_to_the_https_listener_is_refused_and_counted(gateway: Gateway) -> None:
    reader, writer = await asyncio.open_connection("127.0.0.1", gateway.port)
    writer.write(get("echo", "/"))
    data = await asyncio.wait_for(reader.read(), 15)
    writer.close()
    assert not data.startswith(b"HTTP/")  # no HTTP answer in the clear
    assert metric_value(await gateway.proc.metrics(), "ami_tls_handshake_failures_total",
                        listener="gateway") == 1


async def test_renewed_files_are_served_to_new_handshakes_without_dropping_open_ones(
        gateway: Gateway, tmp_path: Path) -> None:
    first = Pem(gateway.cert.read_bytes(), b"", await gateway.served_serial())
    old_reader, old_writer = await gateway.connect(first)
    await exchange(old_reader, old_writer, "/before")

    broken = issue("broken")
    install(Pem(broken.cert, issue("other").key, 0), tmp_path)  # key of another certificate
    loop = asyncio.get_running_loop()
    end = loop.time() + RELOAD_DEADLINE
    while "not reloaded" not in gateway.proc.stderr():
        assert loop.time() < end, gateway.proc.stderr()
        await asyncio.sleep(0.2)  # polling interval of a bounded wait
    assert await gateway.served_serial() == first.serial  # the last good pair stays

    renewed = issue("renewed")
    install(renewed, tmp_path)
    while await gateway.served_serial() != renewed.serial:
        assert loop.time() < end + RELOAD_DEADLINE, gateway.proc.stderr()
        await asyncio.sleep(0.2)  # polling interval of a bounded wait
    reader, writer = await gateway.connect(renewed)  # verifies against the new certificate
    await exchange(reader, writer, "/after")
    writer.close()
    await exchange(old_reader, old_writer, "/still-open")  # the old connection lives on
    old_writer.close()
    assert "gateway certificate reloaded" in gateway.proc.stderr()
    expiry = metric_value(await gateway.proc.metrics(),
                          "ami_gateway_certificate_expiry_timestamp_seconds")
    assert expiry == renewed.not_after


async def test_scanner_finds_only_tls_1_2_and_1_3_with_aead_ciphers(gateway: Gateway) -> None:
    report = await scan_port(gateway.port)
    assert enabled_protocols(report) == {"tls1.2", "tls1.3"}
    accepted = [name for _, name in accepted_ciphers(report)]
    assert accepted and all(any(m in name for m in AEAD_MARKERS) for name in accepted), accepted


@pytest.mark.parametrize(("extra", "message"), [
    (("--mode", "gateway", "--gateway-cert", "{cert}"), "go together"),
    (("--gateway-cert", "{cert}", "--gateway-key", "{key}"), "need --mode gateway"),
    (("--mode", "gateway", "--gateway-cert", "{cert}", "--gateway-key", "{other}"),
     "do not load as a PEM certificate chain and its key"),
    (("--mode", "gateway", "--gateway-cert", "{cert}", "--gateway-key", "{missing}"),
     "missing.key: No such file or directory"),
])
def test_bad_certificate_flags_stop_the_start(tmp_path: Path, extra: tuple[str, ...],
                                               message: str) -> None:
    cert, key = install(issue("x"), tmp_path)
    other = tmp_path / "other.key"
    other.write_bytes(issue("y").key)
    names = {"cert": cert, "key": key, "other": other, "missing": tmp_path / "missing.key"}
    done = dry_run(tmp_path, *(arg.format(**names) for arg in extra))
    assert done.returncode == 2 and message in done.stderr, done.stderr


async def test_scheme_match_redirects_plain_http_only(tmp_path: Path, echo: int) -> None:
    """`matches: [{scheme: {exact: http}}]` + `redirect: {scheme: https}`: the plain gateway
    sends visitors to HTTPS, the HTTPS gateway with the very same Route serves them (a rule
    restricted by sourceLabels alone redirected on both: a loop)."""
    route = {"host": "echo", "rules": [
        {"matches": [{"scheme": {"exact": "http"}}], "redirect": {"scheme": "https"}},
        {"backends": [{}]}]}
    for name in ("https", "http"):
        (tmp_path / name).mkdir()
    secure = Gateway(tmp_path / "https", echo, issue("scheme"))
    config = yaml.safe_load(secure.proc.config.read_text())
    secure.proc.config.write_text(yaml.safe_dump({**config, "routes": [route]}))
    plain = ProxyProcess(tmp_path / "http", {"echo": [echo]}, args=("--mode", "gateway"),
                         routes=[route])
    plain_port = plain.listen_as_gateway([{"destination": "echo"}])
    secure.proc.start()
    plain.start()
    try:
        reader, writer = await asyncio.open_connection("127.0.0.1", plain_port)
        writer.write(get("echo", "/page?q=1"))
        moved = await asyncio.wait_for(read_response(reader), 10)
        writer.close()
        assert (moved.status, moved.header("location")) == (301, "https://echo/page?q=1")
        reader, writer = await secure.connect(Pem(secure.cert.read_bytes(), b"", 0))
        seen = await exchange(reader, writer, "/page?q=1")  # 200, no redirect
        writer.close()
        assert seen["x-forwarded-proto"] == "https"
    finally:
        plain.stop()
        secure.proc.stop()
