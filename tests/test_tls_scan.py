"""An external scanner (sslscan) confirms the listener offers only TLS >= 1.2 and AEAD ciphers."""

from __future__ import annotations

import asyncio
import xml.etree.ElementTree as ET
from pathlib import Path

from proxy.tls import server_context
from tests.test_tls import mint, new_ca
from tests.tools import required_tool

AEAD_MARKERS = ("GCM", "CHACHA20", "CCM")
SCAN_DEADLINE = 60.0


def sslscan() -> str:
    """The sslscan binary; the test skips without it, or fails when AMI_REQUIRE_TOOLS=1."""
    return required_tool("sslscan", hint="apt-get install sslscan")


async def scan_port(port: int) -> ET.Element:
    """Run sslscan against 127.0.0.1:port; its XML report."""
    proc = await asyncio.create_subprocess_exec(
        sslscan(), "--no-colour", "--xml=-", f"127.0.0.1:{port}",
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    out, err = await asyncio.wait_for(proc.communicate(), SCAN_DEADLINE)
    assert proc.returncode == 0, err.decode()
    return ET.fromstring(out[out.index(b"<?xml") :])


def accepted_ciphers(report: ET.Element) -> list[tuple[str, str]]:
    """(TLS version, cipher name) of every cipher the scanner got accepted."""
    return [(c.get("sslversion") or "", c.get("cipher") or "") for c in report.iter("cipher")
            if c.get("status") in ("accepted", "preferred")]


async def scan(require_client_cert: bool, tmp_path: Path) -> ET.Element:
    """sslscan against a 127.0.0.1 listener using server_context."""
    ca = new_ca(tmp_path / f"ca-{require_client_cert}")
    ctx = server_context(mint(ca, "reviews"), require_client_cert=require_client_cert)

    async def close(_reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.close()

    server = await asyncio.start_server(close, "127.0.0.1", 0, ssl=ctx)
    async with server:
        return await scan_port(server.sockets[0].getsockname()[1])


def enabled_protocols(report: ET.Element) -> set[str]:
    """Protocol versions the scanner could negotiate, e.g. {"tls1.2", "tls1.3"}."""
    return {
        f"{p.get('type')}{p.get('version')}"
        for p in report.iter("protocol")
        if p.get("enabled") == "1"
    }


async def test_strict_listener_speaks_only_tls_1_2_and_1_3(tmp_path: Path) -> None:
    """The STRICT (client cert required) listener has SSLv2/3 and TLS 1.0/1.1 disabled."""
    report = await scan(True, tmp_path)
    assert enabled_protocols(report) == {"tls1.2", "tls1.3"}


async def test_listener_accepts_only_aead_ciphers(tmp_path: Path) -> None:
    """Every cipher the scanner gets accepted is AEAD, and TLS 1.2 and 1.3 both have some.

    Cipher enumeration needs handshakes that complete without a client certificate, so this
    scans a listener with require_client_cert=False: same protocol and cipher settings.
    """
    report = await scan(False, tmp_path)
    accepted = accepted_ciphers(report)
    assert {version for version, _ in accepted} == {"TLSv1.2", "TLSv1.3"}, accepted
    weak = [name for _, name in accepted if not any(m in name for m in AEAD_MARKERS)]
    assert weak == []
    assert enabled_protocols(report) == {"tls1.2", "tls1.3"}
