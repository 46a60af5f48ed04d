"""TLS origination: an app's plain HTTP to an ExternalService host leaves its sidecar as TLS
(DestinationPolicy `tls: {mode: SIMPLE}`, ExternalService `targetPort`), through a real proxy
process and a real HTTPS server standing in for the outside host."""

from __future__ import annotations

import ssl
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp import web
from cryptography import x509

from tests.certs import common_name, issue
from tests.proxyharness import Backends, eventually
from tests.traffic_backends import TrafficProxy, call, started

pytestmark = pytest.mark.timeout(60)
NAME = "secure.example.test"  # the name in the outside host's certificate


def self_signed(directory: Path, name: str) -> tuple[Path, Path]:
    """A certificate for ``name`` and its key, self-signed (the file is also its CA file)."""
    issued = issue(common_name(name), ca=None, san=[x509.DNSName(name)])
    return issued.write(directory, name, ".pem")


class OutsideHttps:
    """An HTTPS server (keep-alive) that says what it saw: SNI, TLS version, connection."""

    def __init__(self, hub: Backends, cert: Path, key: Path,
                 client_ca: Path | None = None) -> None:
        self.server_names: list[str | None] = []
        ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        ctx.load_cert_chain(cert, key)
        ctx.sni_callback = lambda sock, name, _ctx: self.server_names.append(name)
        if client_ca is not None:  # a partner that wants its callers' certificates
            ctx.verify_mode = ssl.CERT_REQUIRED
            ctx.load_verify_locations(client_ca)

        async def answer(request: web.Request) -> web.Response:
            transport = request.transport
            assert transport is not None
            ssl_object = transport.get_extra_info("ssl_object")
            peer = ssl_object.getpeercert() or {}
            return web.json_response({
                "path": request.path_qs, "tls": ssl_object.version(),
                "connection": id(transport), "host": request.host,
                "via": request.headers.get("x-via"),
                "client": dict(x[0] for x in peer.get("subject", ())).get("commonName")})

        app = web.Application()
        app.router.add_route("*", "/{tail:.*}", answer)

        async def start() -> int:
            runner = web.AppRunner(app, access_log=None, shutdown_timeout=0.1)
            await runner.setup()
            site = web.TCPSite(runner, "127.0.0.1", 0, ssl_context=ctx)
            await site.start()
            self.runner = runner
            return int(runner.addresses[0][1])

        self.hub = hub
        self.port = hub.call(start())

    def close(self) -> None:
        self.hub.call(self.runner.cleanup())


def _external(port: int, **tls: Any) -> dict[str, Any]:
    return {"ports": [{"number": 80, "protocol": "HTTP", "targetPort": port}],
            "endpoints": ["127.0.0.1"], "policy": {"tls": {"mode": "SIMPLE", **tls}}}


@pytest.fixture(scope="module")
def outside(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[OutsideHttps, Path]]:
    tmp = tmp_path_factory.mktemp("outside")
    cert, key = self_signed(tmp, NAME)
    hub = Backends()
    server = OutsideHttps(hub, cert, key)
    yield server, cert
    server.close()


@pytest.fixture(scope="module")
def partner(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[OutsideHttps, Path]]:
    """An HTTPS server requiring a client certificate; ours is in its trust (self-signed)."""
    tmp = tmp_path_factory.mktemp("partner")
    cert, key = self_signed(tmp, "partner.example.test")
    client_cert, _ = self_signed(tmp, "client.mesh.test")
    hub = Backends()
    server = OutsideHttps(hub, cert, key, client_ca=client_cert)
    yield server, tmp
    server.close()


@pytest.fixture(scope="module")
def proxy(tmp_path_factory: pytest.TempPathFactory, outside: tuple[OutsideHttps, Path],
          partner: tuple[OutsideHttps, Path]) -> Iterator[TrafficProxy]:
    server, ca = outside
    partner_server, partner_dir = partner
    mutual = {"caCertificates": str(partner_dir / "partner.example.test.pem"),
              "sni": "partner.example.test"}
    other_tmp = tmp_path_factory.mktemp("other-ca")
    other_ca, _ = self_signed(other_tmp, NAME)  # the right name, another key: an impostor's
    external = {
        # the name the app calls is the certificate's: SNI and verification default to it
        NAME: _external(server.port, caCertificates=str(ca)),
        # another name for the same server, verified as the name in its certificate (sni)
        "alias.example.test": _external(server.port, caCertificates=str(ca), sni=NAME),
        # a CA that did not sign the server's certificate
        "impostor.example.test": _external(server.port, caCertificates=str(other_ca), sni=NAME),
        # verified by the name asked for, which the certificate does not carry
        "wrong-name.example.test": _external(server.port, caCertificates=str(ca)),
        # the system's roots (no caCertificates): a private CA's certificate is refused
        "public.example.test": _external(server.port, sni=NAME),
        # MUTUAL: with our client certificate; SIMPLE to the same partner: without
        "partner.example.test": _external(
            partner_server.port, **mutual, clientCertificate=str(
                partner_dir / "client.mesh.test.pem"),
            privateKey=str(partner_dir / "client.mesh.test.key")),
        "no-cert.example.test": _external(partner_server.port, **mutual),
    }
    external["partner.example.test"]["policy"]["tls"]["mode"] = "MUTUAL"
    routes = [{"host": NAME, "rules": [{"backends": [{}],
                                        "headers": {"request": {"set": {"x-via": "mesh"}}}}]}]
    hub = Backends()
    yield from started(TrafficProxy(Path(tmp_path_factory.mktemp("proxy")), {}, routes,
                                    external=external), hub)


async def test_plain_http_from_the_app_leaves_as_verified_tls(
        proxy: TrafficProxy, outside: tuple[OutsideHttps, Path]) -> None:
    """`http://secure.example.test/` from the app: TLS 1.3 to the host's port 443 (here its
    targetPort), SNI the host's name, one kept-alive TLS connection for several requests, the
    host's Route applied, counted under the host."""
    server, _ = outside
    async with aiohttp.ClientSession() as session:
        replies = [await call(session, proxy, NAME, f"/r{i}?q=1") for i in range(3)]
    assert [r.status for r in replies] == [200, 200, 200], replies
    bodies = [r.body for r in replies]
    assert all(isinstance(b, dict) and b["tls"] == "TLSv1.3" for b in bodies), bodies
    assert [b["path"] for b in bodies] == ["/r0?q=1", "/r1?q=1", "/r2?q=1"]  # type: ignore[index]
    assert len({b["connection"] for b in bodies}) == 1  # type: ignore[index]
    assert bodies[0]["via"] == "mesh"  # type: ignore[index]
    assert bodies[0]["host"] == NAME  # type: ignore[index]
    assert NAME in server.server_names
    assert await proxy.metric("ami_requests_total", destination_service=NAME,
                              response_code="200") == 3


async def test_sni_names_the_certificate_for_another_host_name(
        proxy: TrafficProxy, outside: tuple[OutsideHttps, Path]) -> None:
    async with aiohttp.ClientSession() as session:
        reply = await call(session, proxy, "alias.example.test", "/a")
    assert reply.status == 200 and isinstance(reply.body, dict)
    assert reply.body["tls"] == "TLSv1.3"


@pytest.mark.parametrize("host", ["impostor.example.test", "wrong-name.example.test",
                                  "public.example.test"])
async def test_a_certificate_that_does_not_verify_is_a_connect_failure(
        proxy: TrafficProxy, host: str) -> None:
    """Another CA, a name the certificate lacks, a private CA against the system roots: 503
    upstream_connect_failure, nothing sent, and the sidecar's log says why."""
    seen = len(proxy.stderr())
    async with aiohttp.ClientSession() as session:
        reply = await call(session, proxy, host, "/secret")
    assert (reply.status, reply.reason) == (503, "upstream_connect_failure")
    assert await proxy.metric("ami_upstream_connect_failures_total",
                              destination_service=host) >= 1
    why = {"impostor.example.test": f"TLS to {NAME} (endpoint 127.0.0.1:",
           "wrong-name.example.test": "TLS to wrong-name.example.test (endpoint 127.0.0.1:",
           "public.example.test": f"TLS to {NAME} (endpoint 127.0.0.1:"}[host]
    said = proxy.stderr()[seen:]
    assert why in said, said
    assert ("Hostname mismatch, certificate is not valid for 'wrong-name.example.test'"
            if host.startswith("wrong") else "failed: self-signed certificate") in said, said


async def test_mutual_presents_the_client_certificate(proxy: TrafficProxy) -> None:
    """`mode: MUTUAL` presents `clientCertificate` to a partner requiring one. The same
    partner refuses a SIMPLE origination (no certificate): TLS 1.3 says so only after the
    handshake, so the request fails as `502 upstream_reset`, and the log says what ended it
    (the alert, or the reset that follows it)."""
    seen = len(proxy.stderr())
    async with aiohttp.ClientSession() as session:
        reply = await call(session, proxy, "partner.example.test", "/m")
        refused = await call(session, proxy, "no-cert.example.test", "/m")
    assert reply.status == 200 and isinstance(reply.body, dict), reply
    assert reply.body["client"] == "client.mesh.test"
    assert (refused.status, refused.reason) == (502, "upstream_reset"), refused
    # (logged when the connection is gone, which may be just after the answer)
    await eventually(lambda: "TLS to partner.example.test (endpoint 127.0.0.1:"
                     in proxy.stderr()[seen:])
    said = proxy.stderr()[seen:]
    assert any(f"ended: {why}" in said for why in (
        "TLSV13_ALERT_CERTIFICATE_REQUIRED", "Connection reset by peer",
        "closed under a request")), said


def test_a_missing_ca_file_is_refused_with_its_path(tmp_path: Path) -> None:
    """A caCertificates file the sidecar cannot read: the config is refused, naming the file
    (from the control plane, the same error is the NACK shown by proxy-status)."""
    missing = tmp_path / "nope.pem"
    proxy = TrafficProxy(tmp_path, {}, [], external={NAME: _external(443, caCertificates=str(
        missing))})
    with pytest.raises(RuntimeError, match="proxy exited") as err:
        proxy.start()
    assert f"tls.caCertificates {missing}: No such file or directory" in str(err.value)
