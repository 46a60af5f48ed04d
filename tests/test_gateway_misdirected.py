"""421 Misdirected Request at the HTTPS gateway: a request on a connection it terminated for
one server name, for a host its TLS passthrough takes (proxy.misdirected). A real
`--mode gateway` proxy whose certificate covers `*.example.com`, as a browser coalescing
HTTP/2 connections would reuse it for `db.example.com`."""

from __future__ import annotations

import asyncio
import json
import socket
import ssl
from collections.abc import Iterator
from typing import Any

import pytest
import yaml
from cryptography import x509

from tests import certs
from tests.h2app import H2Client, Response
from tests.proxyharness import Backends, ProxyProcess, get, metric_value, read_response
from tests.test_gateway_hosts import named_app

DEADLINE = 10.0


@pytest.fixture(scope="module")
def gateway(tmp_path_factory: pytest.TempPathFactory,
            backends: Backends) -> Iterator[tuple[ProxyProcess, int]]:
    tmp = tmp_path_factory.mktemp("gw421")
    cert, key = certs.issue(certs.common_name("edge"), ca=None,
                            san=[x509.DNSName("*.example.com"),
                                 x509.DNSName("*.apps.example.com")]).write(tmp, "edge")
    www, db = backends.aiohttp(named_app("www")), backends.aiohttp(named_app("db"))
    proc = ProxyProcess(tmp, {"www": [www], "db": [db]}, args=(
        "--mode", "gateway", "--gateway-cert", str(cert), "--gateway-key", str(key)))
    port = proc.listen_as_gateway([{"hosts": ["*"], "destination": "www"}])
    config: dict[str, Any] = yaml.safe_load(proc.config.read_text())
    # (db is no TCP service here, so a connection naming it is closed, not relayed: what
    # matters is that the name is the passthrough's, never the HTTP rules')
    config["gateway"]["passthrough"] = [
        {"sniHosts": ["db.example.com", "*.apps.example.com"], "destination": "db"}]
    proc.config.write_text(yaml.safe_dump(config))
    proc.start()
    yield proc, port
    proc.stop()


def _client_tls(alpn: str) -> ssl.SSLContext:
    ctx = ssl.create_default_context()
    ctx.check_hostname, ctx.verify_mode = False, ssl.CERT_NONE  # (the names are the point)
    ctx.set_alpn_protocols([alpn])
    return ctx


async def _requests(port: int, server_name: str | None, hosts: list[str]
                    ) -> list[tuple[int, str | None, dict[str, str] | None]]:
    """HTTP/1.1 requests for ``hosts`` in turn on one TLS connection naming ``server_name``:
    each answer's status, reason and (when an app answered) what the app said."""
    reader, writer = await asyncio.open_connection(
        "127.0.0.1", port, ssl=_client_tls("http/1.1"), server_hostname=server_name)
    answers = []
    try:
        for host in hosts:
            writer.write(get(host, "/"))
            resp = await asyncio.wait_for(read_response(reader), DEADLINE)
            body = json.loads(resp.body) if resp.status == 200 else None
            answers.append((resp.status, resp.header("x-ami-reason"), body))
    finally:
        writer.close()
    return answers


class TlsH2Client(H2Client):
    """H2Client over TLS with ALPN h2, naming ``server_name``."""

    def __init__(self, port: int, server_name: str) -> None:
        super().__init__(port)
        self.server_name = server_name

    async def __aenter__(self) -> TlsH2Client:
        self.reader, self.writer = await asyncio.open_connection(
            "127.0.0.1", self.port, ssl=_client_tls("h2"), server_hostname=self.server_name)
        self.h2.initiate_connection()
        self._flush()
        self.task = asyncio.create_task(self._read())
        return self


def _reason(resp: Response) -> str | None:
    return next((v.decode() for n, v in resp.headers if n == b"x-ami-reason"), None)


@pytest.mark.parametrize("host", [
    "db.example.com", "DB.Example.com.:443", "eu.apps.example.com"])
async def test_a_passthrough_host_on_a_connection_for_another_name_is_421(
        gateway: tuple[ProxyProcess, int], host: str) -> None:
    """Before, the HTTP rule for any host served it: www's app got db.example.com's request
    (and its cookies). Now 421, and the same connection serves its own name after it."""
    answers = await _requests(gateway[1], "www.example.com", [host, "www.example.com"])
    assert answers[0] == (421, "misdirected_request", None)
    assert answers[1] == (200, None, {"app": "www", "host": "www.example.com"})


async def test_over_http2_too(gateway: tuple[ProxyProcess, int]) -> None:
    async with TlsH2Client(gateway[1], "www.example.com") as client:
        misdirected = await client.request("db.example.com", "/", timeout=DEADLINE)
        own = await client.request("www.example.com", "/", timeout=DEADLINE)
    assert (misdirected.status, _reason(misdirected)) == (421, "misdirected_request")
    assert (own.status, json.loads(own.body)) == (200, {"app": "www", "host": "www.example.com"})


async def test_a_connection_naming_no_server_keeps_the_http_rules(
        gateway: tuple[ProxyProcess, int]) -> None:
    """No SNI (a client reaching the gateway by address): its connection is the gateway's
    default, as documented; the HTTP rules answer every host, passthrough names included."""
    answers = await _requests(gateway[1], None, ["db.example.com"])
    assert answers == [(200, None, {"app": "www", "host": "db.example.com"})]


async def test_counted_as_the_gateways_own_answer(gateway: tuple[ProxyProcess, int]) -> None:
    proc, port = gateway
    before = metric_value(await proc.metrics(), "ami_requests_total",
                          response_code="421", response_flags="misdirected_request")
    await _requests(port, "www.example.com", ["db.example.com"])
    after = metric_value(await proc.metrics(), "ami_requests_total",
                         response_code="421", response_flags="misdirected_request")
    assert after == before + 1


def _over_tls12(ctx: ssl.SSLContext, port: int, server_name: str | None, host: str,
                session: ssl.SSLSession | None = None
                ) -> tuple[bytes, ssl.SSLSession | None, bool]:
    """One request for ``host`` over TLS 1.2 naming ``server_name`` (resuming ``session``):
    the answer's status line, the session, whether it was resumed."""
    with socket.create_connection(("127.0.0.1", port), timeout=DEADLINE) as raw, \
            ctx.wrap_socket(raw, server_hostname=server_name, session=session) as tls:
        tls.sendall(get(host, "/", "Connection: close\r\n"))
        answer = b""
        while chunk := tls.recv(65536):
            answer += chunk
        return answer.split(b"\r\n", 1)[0], tls.session, tls.session_reused


async def test_a_resumed_tls12_session_is_judged_by_the_name_it_asks_for(
        gateway: tuple[ProxyProcess, int]) -> None:
    """A TLS 1.2 session first made naming no server, resumed naming www.example.com: the
    SNI callback is given the first handshake's name (None, OpenSSL's SSL_get_servername on
    a resumed session), so db.example.com's request went to the HTTP rules; the ClientHello
    read before the handshake names the server this connection asked for: 421."""
    port, ctx = gateway[1], _client_tls("http/1.1")
    ctx.maximum_version = ssl.TLSVersion.TLSv1_2
    status, session, _ = await asyncio.to_thread(_over_tls12, ctx, port, None,
                                                 "www.example.com")
    assert status == b"HTTP/1.1 200 OK" and session is not None
    status, _, resumed = await asyncio.to_thread(
        _over_tls12, ctx, port, "www.example.com", "db.example.com", session)
    assert resumed  # (else this would be a full handshake, judged right before too)
    assert status.startswith(b"HTTP/1.1 421")
