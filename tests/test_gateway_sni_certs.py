"""A gateway serving several names, each with its own certificate (--gateway-cert repeated):
the server name a client asks for picks the certificate, each pair is reloaded on its own."""

from __future__ import annotations

import asyncio
import json
import ssl
from collections.abc import Iterator
from pathlib import Path

import pytest
from cryptography import x509

from tests import certs
from tests.proxyharness import ProxyProcess, dry_run, get, metric_value, read_response
from tests.test_gateway_https import RELOAD_DEADLINE, Pem, install

pytestmark = pytest.mark.timeout(120)


def issue(*names: str) -> Pem:
    """A self-signed server certificate for these DNS names (an operator's CA's)."""
    issued = certs.issue(certs.common_name(names[0]), ca=None,
                         san=[x509.DNSName(name) for name in names])
    return Pem(issued.cert_pem, issued.key_pem, issued.cert.serial_number,
               issued.cert.not_valid_after_utc.timestamp())


class Gateway:
    """A static HTTPS gateway with the shop's pair first (the default), then the API's."""

    def __init__(self, tmp: Path, echo: int) -> None:
        self.shop, self.api = issue("shop.example.com"), issue("api.example.com",
                                                               "*.api.example.com")
        self.dirs = {"shop": tmp / "shop", "api": tmp / "api"}
        for directory in self.dirs.values():
            directory.mkdir()
        self.files = {"shop": install(self.shop, self.dirs["shop"]),
                      "api": install(self.api, self.dirs["api"])}
        args = ["--mode", "gateway", "--log-level", "INFO"]
        for cert, key in self.files.values():
            args += ["--gateway-cert", str(cert), "--gateway-key", str(key)]
        self.proc = ProxyProcess(tmp, {"echo": [echo]}, args=tuple(args))
        self.port = self.proc.listen_as_gateway([{"destination": "echo"}])

    async def served(self, server_name: str | None) -> int:
        """The serial number of the certificate a handshake naming `server_name` gets."""
        ctx = ssl.create_default_context()
        ctx.check_hostname, ctx.verify_mode = False, ssl.CERT_NONE
        _, writer = await asyncio.open_connection("127.0.0.1", self.port, ssl=ctx,
                                                  server_hostname=server_name)
        der = writer.get_extra_info("ssl_object").getpeercert(binary_form=True)
        writer.close()
        return int(x509.load_der_x509_certificate(der).serial_number)


@pytest.fixture
def gateway(tmp_path: Path, echo: int) -> Iterator[Gateway]:
    gw = Gateway(tmp_path, echo)
    gw.proc.start()
    yield gw
    gw.proc.stop()


@pytest.mark.parametrize(("server_name", "pair"), [
    ("shop.example.com", "shop"),
    ("api.example.com", "api"),
    ("orders.api.example.com", "api"),           # the wildcard
    ("SHOP.Example.COM.", "shop"),               # case and a final dot do not matter
    ("a.b.api.example.com", "shop"),             # a wildcard covers one label only
    ("other.example.com", "shop"),               # no certificate names it: the first pair
    (None, "shop"),                              # no server name at all: the first pair
])
async def test_the_server_name_picks_the_certificate(gateway: Gateway, server_name: str | None,
                                                     pair: str) -> None:
    expected = gateway.shop if pair == "shop" else gateway.api
    assert await gateway.served(server_name) == expected.serial


@pytest.mark.parametrize("alpn", ["http/1.1", "h2"])
async def test_a_client_verifying_each_name_reaches_the_service(gateway: Gateway,
                                                                alpn: str) -> None:
    """What a browser does: verify the certificate against the name it asked for."""
    for name, pem in (("shop.example.com", gateway.shop), ("v2.api.example.com", gateway.api)):
        ctx = ssl.create_default_context(cadata=pem.cert.decode())
        ctx.set_alpn_protocols([alpn])
        reader, writer = await asyncio.open_connection("127.0.0.1", gateway.port, ssl=ctx,
                                                       server_hostname=name)
        assert writer.get_extra_info("ssl_object").selected_alpn_protocol() == alpn
        writer.close()
        if alpn == "h2":
            continue  # the handshake is what this test is about; HTTP/2 requests: below
        reader, writer = await asyncio.open_connection("127.0.0.1", gateway.port, ssl=ctx,
                                                       server_hostname=name)
        writer.write(get("echo", "/hello"))
        resp = await asyncio.wait_for(read_response(reader), 10)
        writer.close()
        assert resp.status == 200, resp
        seen = {k.lower(): v for k, v in json.loads(resp.body)["headers"]}
        assert seen["x-forwarded-proto"] == "https"


async def test_each_pair_is_reloaded_on_its_own(gateway: Gateway) -> None:
    renewed = issue("api.example.com", "*.api.example.com", "graphql.example.com")
    install(renewed, gateway.dirs["api"])
    loop = asyncio.get_running_loop()
    end = loop.time() + RELOAD_DEADLINE
    while await gateway.served("api.example.com") != renewed.serial:
        assert loop.time() < end, gateway.proc.stderr()
        await asyncio.sleep(0.2)  # polling interval of a bounded wait
    assert await gateway.served("shop.example.com") == gateway.shop.serial
    # a name the renewed certificate adds is served by it from then on
    assert await gateway.served("graphql.example.com") == renewed.serial
    exposition = await gateway.proc.metrics()
    name = "ami_gateway_certificate_expiry_timestamp_seconds"
    shop_cert, api_cert = gateway.files["shop"][0], gateway.files["api"][0]
    assert metric_value(exposition, name, certificate=str(api_cert)) == renewed.not_after
    assert metric_value(exposition, name, certificate=str(shop_cert)) == gateway.shop.not_after

    broken = issue("api.example.com")
    install(Pem(broken.cert, issue("x.example.com").key, 0), gateway.dirs["api"])
    while "not reloaded" not in gateway.proc.stderr():
        assert loop.time() < end + RELOAD_DEADLINE, gateway.proc.stderr()
        await asyncio.sleep(0.2)  # polling interval of a bounded wait
    assert await gateway.served("api.example.com") == renewed.serial  # the last good pair


async def test_proxy_config_lists_the_names_each_certificate_serves(gateway: Gateway) -> None:
    status, body = await gateway.proc.aget("/config_dump")
    assert status == 200
    listeners = {view["name"]: view for view in json.loads(body)["boundListeners"]}
    assert listeners["gateway"]["tls"] == (
        "HTTPS: shop.example.com; api.example.com, *.api.example.com")


@pytest.mark.parametrize(("pairs", "message"), [
    ((("a", "a"), ("b", None)), "got 2 --gateway-cert and 1 --gateway-key"),
    ((("a", "a"), ("b", "a")), "b.crt and {tmp}/a.key do not load"),
    # one file twice (a templated flag list): nothing served, the expiry series duplicated
    ((("a", "a"), ("b", "b"), ("a", "a")), "--gateway-cert {tmp}/a.crt is given more than once"),
])
def test_bad_pairs_stop_the_start(tmp_path: Path, pairs: tuple[tuple[str, str | None], ...],
                                  message: str) -> None:
    for name in ("a", "b"):
        pem = issue(f"{name}.example.com")
        (tmp_path / f"{name}.crt").write_bytes(pem.cert)
        (tmp_path / f"{name}.key").write_bytes(pem.key)
    args = ["--mode", "gateway"]
    for cert, key in pairs:
        args += ["--gateway-cert", str(tmp_path / f"{cert}.crt")]
        if key is not None:
            args += ["--gateway-key", str(tmp_path / f"{key}.key")]
    done = dry_run(tmp_path, *args)
    assert done.returncode == 2 and message.format(tmp=tmp_path) in done.stderr, done.stderr
