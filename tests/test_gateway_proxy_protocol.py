"""A gateway behind an L4 load balancer (`--proxy-protocol`): each connection opens with a
PROXY header, v1 or v2, whose client is the client's address everywhere the gateway uses one
(x-forwarded-for, the access log, per-source rate limits, remoteIpBlocks), while `ipBlocks`
judge the balancer itself; a connection without a valid header is closed and counted. Real
haproxy (send-proxy, send-proxy-v2) in front of the plain and the HTTPS gateway, and raw
sockets for the header's hostile forms."""

from __future__ import annotations

import asyncio
import json
import ssl
import subprocess
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from proxy.proxyprotocol import V2_MAX_PAYLOAD, V2_SIGNATURE, v1, v2
from tests.h2app import H2Client
from tests.ports import free_port
from tests.proxyharness import (
    Backends,
    Message,
    ProxyProcess,
    at_eof,
    dry_run,
    eventually,
    get,
    metric_value,
    read_response,
)
from tests.test_gateway_hosts import named_app
from tests.test_gateway_https import issue
from tests.tools import required_tool

pytestmark = pytest.mark.timeout(120)
HEADER_TIMEOUT = 2.0  # the gateway's --header-timeout: how long a header may take

# a token per client address and none refilled during the test (as the rule-limit tests)
LIMITED = {"host": "echo", "rules": [
    {"matches": [{"path": {"prefix": "/limited"}}], "backends": [{}],
     "rateLimit": {"requestsPerSecond": 0.01, "burst": 1, "perSource": True}},
    {"backends": [{}]}]}
POLICIES = [
    # the client the header names is judged by remoteIpBlocks...
    {"selector": {"service": "client"}, "action": "DENY",
     "rules": [{"from": [{"remoteIpBlocks": ["203.0.113.0/24"]}]}]},
    # ...and ipBlocks judge the connection's own peer: the balancer, on loopback here. Were
    # they to judge the header's client, every request would be denied.
    {"selector": {"service": "client"}, "action": "DENY",
     "rules": [{"from": [{"notIpBlocks": ["127.0.0.0/8"]}]}]},
]
REQUEST = get("echo", "/a")


def start_gateway(tmp: Path, echo: int, *extra: str) -> tuple[ProxyProcess, int]:
    proc = ProxyProcess(tmp, {"echo": [echo]},
                        args=("--mode", "gateway", "--proxy-protocol", "--header-timeout",
                              str(HEADER_TIMEOUT), *extra),
                        routes=[LIMITED], access_log=True)
    port = proc.listen_as_gateway([{"destination": "echo"}])
    config = yaml.safe_load(proc.config.read_text())
    config["inbound"] = {"authorization": POLICIES}
    # TLS passthrough for one name: to an HTTP service, so its connections are refused
    # (protocol_mismatch) and logged, with the client they came from
    config["gateway"]["passthrough"] = [{"sniHosts": ["db.example.com"], "destination": "echo"}]
    proc.config.write_text(yaml.safe_dump(config))
    proc.start()
    return proc, port


@pytest.fixture(scope="module")
def module_tmp(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("gw")


@pytest.fixture(scope="module")
def gateway(module_tmp: Path, echo: int) -> Iterator[tuple[ProxyProcess, int]]:
    proc, port = start_gateway(module_tmp, echo)
    yield proc, port
    proc.stop()


@pytest.fixture(scope="module")
def tls_gateway(tmp_path_factory: pytest.TempPathFactory, echo: int
                ) -> Iterator[tuple[ProxyProcess, int, Any]]:
    tmp = tmp_path_factory.mktemp("tlsgw")
    pem = issue("gateway")
    (tmp / "tls.crt").write_bytes(pem.cert)
    (tmp / "tls.key").write_bytes(pem.key)
    proc, port = start_gateway(tmp, echo, "--gateway-cert", str(tmp / "tls.crt"),
                               "--gateway-key", str(tmp / "tls.key"))
    yield proc, port, pem
    proc.stop()


def logged(proc: ProxyProcess) -> list[dict[str, Any]]:
    return [json.loads(x) for x in proc.stdout().splitlines() if x.startswith("{")]


async def logged_client(proc: ProxyProcess, path: str) -> str:
    await eventually(lambda: any(x.get("path") == path for x in logged(proc)),
                     what=f"the access log line of {path}")
    return str(next(x for x in logged(proc) if x.get("path") == path)["client_address"])


def forwarded_for(resp: Message) -> str | None:
    """The x-forwarded-for the echo app received."""
    assert resp.status == 200, (resp.status, resp.body)
    headers = {k.lower(): v for k, v in json.loads(resp.body)["headers"]}
    return headers.get("x-forwarded-for")


async def send(port: int, *parts: bytes, local: str = "127.0.0.1") -> Message:
    """Each of ``parts`` written (and flushed) on its own, then one response read."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port, local_addr=(local, 0))
    try:
        for part in parts:
            writer.write(part)
            await writer.drain()
        return await asyncio.wait_for(read_response(reader), 10)
    finally:
        writer.close()


async def closed_unanswered(port: int, data: bytes) -> bool:
    """Whether the gateway closes a connection opening with ``data`` without a byte back."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        writer.write(data)
        return await at_eof(reader, HEADER_TIMEOUT + 10)
    finally:
        writer.close()


async def refused(proc: ProxyProcess, reason: str) -> float:
    return metric_value(await proc.metrics(), "ami_proxy_protocol_refused_total", reason=reason)


# --- the header's client is the client ------------------------------------------------------
async def test_a_v1_header_names_the_client_of_the_request_in_its_segment(
        gateway: tuple[ProxyProcess, int]) -> None:
    proc, port = gateway
    # the header and the request in one write: the request's bytes are not lost
    resp = await send(port, v1("198.51.100.7", 40000, "192.0.2.1", 443)
                      + get("echo", "/v1-client"))
    assert forwarded_for(resp) == "198.51.100.7"
    assert await logged_client(proc, "/v1-client") == "198.51.100.7"


async def test_a_v2_ipv6_header_with_tlvs_names_the_client(
        gateway: tuple[ProxyProcess, int]) -> None:
    proc, port = gateway
    tlvs = b"\x02\x00\x0bexample.com" + b"\x05\x00\x04abcd"  # authority, unique id: skipped
    resp = await send(port, v2("2001:db8::7", 40000, "2001:db8::1", 443, tlvs)
                      + get("echo", "/v2-client"))
    assert forwarded_for(resp) == "2001:db8::7"
    assert await logged_client(proc, "/v2-client") == "2001:db8::7"


async def test_a_client_forwarded_for_is_kept_and_the_headers_client_appended(
        gateway: tuple[ProxyProcess, int]) -> None:
    _, port = gateway
    resp = await send(port, v1("198.51.100.7", 1, "192.0.2.1", 2)
                      + get("echo", "/", extra="x-forwarded-for: 10.1.1.1\r\n"))
    assert forwarded_for(resp) == "10.1.1.1, 198.51.100.7"


async def test_the_balancers_own_connections_are_their_own_client(
        gateway: tuple[ProxyProcess, int]) -> None:
    """v2 LOCAL (a health check) and v1 UNKNOWN: the connection's peer is the client."""
    proc, port = gateway
    resp = await send(port, v2(None, local=True) + get("echo", "/local"), local="127.0.0.3")
    assert forwarded_for(resp) == "127.0.0.3"
    resp = await send(port, b"PROXY UNKNOWN\r\n" + get("echo", "/unknown"), local="127.0.0.3")
    assert forwarded_for(resp) == "127.0.0.3"
    assert await logged_client(proc, "/unknown") == "127.0.0.3"


@pytest.mark.parametrize("version", [1, 2])
async def test_a_header_in_tiny_writes_still_parses(gateway: tuple[ProxyProcess, int],
                                                    version: int) -> None:
    _, port = gateway
    header = (v1("198.51.100.20", 5, "192.0.2.1", 80) if version == 1
              else v2("198.51.100.20", 5, "192.0.2.1", 80, b"\x04\x00\x01x"))
    data = header + REQUEST
    # a byte per write up to a few bytes into the request, then the rest
    parts = [data[i:i + 1] for i in range(len(header) + 3)] + [data[len(header) + 3:]]
    assert forwarded_for(await send(port, *parts)) == "198.51.100.20"


class ProxiedH2Client(H2Client):
    """A prior-knowledge h2c client whose connection opens with ``header``."""

    def __init__(self, port: int, header: bytes) -> None:
        super().__init__(port)
        self.header = header

    async def __aenter__(self) -> ProxiedH2Client:
        self.reader, self.writer = await asyncio.open_connection("127.0.0.1", self.port)
        self.writer.write(self.header)
        self.h2.initiate_connection()
        self._flush()
        self.task = asyncio.create_task(self._read())
        return self


async def test_http2_requests_name_the_headers_client(
        gateway: tuple[ProxyProcess, int]) -> None:
    """h2c: each stream's client is its connection's header's, for the app, the log and
    the policies (remoteIpBlocks the client, ipBlocks the balancer)."""
    proc, port = gateway
    async with ProxiedH2Client(port, v1("198.51.100.80", 1, "192.0.2.1", 2)) as client:
        resp = await client.request("echo", "/h2-client")
        assert resp.status == 200, resp
        headers = {k.lower(): v for k, v in resp.json()["headers"]}
        assert headers["x-forwarded-for"] == "198.51.100.80"
    assert await logged_client(proc, "/h2-client") == "198.51.100.80"
    async with ProxiedH2Client(port, v2("203.0.113.80", 1, "192.0.2.1", 2)) as client:
        assert (await client.request("echo", "/")).status == 403


async def test_each_client_behind_the_balancer_has_its_own_bucket(
        gateway: tuple[ProxyProcess, int]) -> None:
    _, port = gateway

    async def status(client: str) -> tuple[int, str | None]:
        resp = await send(port, v1(client, 1, "192.0.2.1", 2) + get("echo", "/limited"))
        return resp.status, resp.header("x-ami-reason")

    assert await status("198.51.100.30") == (200, None)
    assert await status("198.51.100.30") == (429, "rate_limited")
    assert await status("198.51.100.31") == (200, None)


async def test_remote_ip_blocks_judge_the_headers_client_ip_blocks_the_balancer(
        gateway: tuple[ProxyProcess, int]) -> None:
    _, port = gateway
    denied = await send(port, v2("203.0.113.5", 1, "192.0.2.1", 2) + REQUEST)
    assert (denied.status, denied.header("x-ami-reason")) == (403, "not_authorized")
    # (the notIpBlocks 127.0.0.0/8 policy would deny this one if ipBlocks read the header)
    assert (await send(port, v2("198.51.100.9", 1, "192.0.2.1", 2) + REQUEST)).status == 200


async def test_source_ip_hashing_follows_the_headers_client(tmp_path: Path,
                                                             backends: Backends) -> None:
    """Two endpoints, CONSISTENT_HASH by sourceIp: each client behind the balancer keeps its
    endpoint, and different clients spread over both (all from one peer address)."""
    ports = [backends.aiohttp(named_app(str(n))) for n in range(2)]
    proc = ProxyProcess(tmp_path, {"echo": ports}, args=("--mode", "gateway",
                                                         "--proxy-protocol"))
    port = proc.listen_as_gateway([{"destination": "echo"}])
    config = yaml.safe_load(proc.config.read_text())
    config["services"]["echo"]["policy"] = {"loadBalancer": "CONSISTENT_HASH",
                                            "consistentHash": {"sourceIp": True}}
    proc.config.write_text(yaml.safe_dump(config))
    proc.start()
    try:
        seen: dict[str, set[str]] = {}
        for n in range(40):
            client = f"198.51.100.{n % 20}"
            resp = await send(port, v2(client, 1000 + n, "192.0.2.1", 80) + REQUEST)
            assert resp.status == 200, resp
            seen.setdefault(client, set()).add(json.loads(resp.body)["app"])
        assert all(len(names) == 1 for names in seen.values()), seen
        assert {name for names in seen.values() for name in names} == {"0", "1"}
    finally:
        proc.stop()


async def test_trusted_proxies_count_from_the_headers_client(tmp_path: Path,
                                                             echo: int) -> None:
    """A CDN in front of the L4 balancer: the header names the CDN, whose x-forwarded-for
    entry is the client (`--trusted-proxies 1`)."""
    proc, port = start_gateway(tmp_path, echo, "--trusted-proxies", "1")
    try:
        cdn = v1("198.51.100.50", 1, "192.0.2.1", 2)
        denied = await send(port, cdn + get("echo", "/", extra="x-forwarded-for: 203.0.113.9\r\n"))
        assert denied.status == 403
        resp = await send(port, cdn + get("echo", "/cdn",
                                          extra="x-forwarded-for: 198.51.100.60\r\n"))
        assert forwarded_for(resp) == "198.51.100.60, 198.51.100.50"
        assert await logged_client(proc, "/cdn") == "198.51.100.60"
    finally:
        proc.stop()


def client_hello(server_name: str) -> bytes:
    """A real ClientHello naming ``server_name`` (OpenSSL's, through memory BIOs)."""
    ctx = ssl.create_default_context()
    ctx.check_hostname, ctx.verify_mode = False, ssl.CERT_NONE
    outgoing = ssl.MemoryBIO()
    tls = ctx.wrap_bio(ssl.MemoryBIO(), outgoing, server_hostname=server_name)
    with pytest.raises(ssl.SSLWantReadError):
        tls.do_handshake()
    return outgoing.read()


@pytest.mark.parametrize("https", [False, True])
async def test_tls_passthrough_sees_the_headers_client(
        gateway: tuple[ProxyProcess, int], tls_gateway: tuple[ProxyProcess, int, Any],
        https: bool) -> None:
    """The ClientHello after the header is read as without one (peeked at, on the HTTPS
    gateway), and the passthrough's access log line names the header's client."""
    proc, port = (tls_gateway[0], tls_gateway[1]) if https else gateway
    client = "198.51.100.71" if https else "198.51.100.70"
    assert await closed_unanswered(port, v2(client, 1, "192.0.2.1", 443)
                                   + client_hello("db.example.com"))
    await eventually(lambda: any(x.get("client_address") == client for x in logged(proc)),
                     what="the passthrough's access log line")
    line = next(x for x in logged(proc) if x.get("client_address") == client)
    assert (line["authority"], line["reason"]) == ("db.example.com", "protocol_mismatch")


# --- what is no header is closed -------------------------------------------------------------
@pytest.mark.parametrize(("data", "reason"), [
    (REQUEST, "not_proxy_protocol"),  # a client that skipped the balancer
    (b"\r\n\r\n\x00\r\nQUIX\n\x21\x11\x00\x0c" + bytes(12) + REQUEST, "not_proxy_protocol"),
    (b"PROXY TCP4 198.51.100.7 192.0.2.1 1 2" + b" " * 80, "malformed"),  # no CRLF in 107
    (b"PROXY TCP4 198.51.100.7 192.0.2.1 1 2\n" + REQUEST, "malformed"),  # LF alone
    (b"PROXY TCP4 198.51.100.7 192.0.2.1 1 99999\r\n" + REQUEST, "malformed"),
    (V2_SIGNATURE + b"\x21\x11" + (V2_MAX_PAYLOAD + 1).to_bytes(2, "big"), "malformed"),
    (V2_SIGNATURE + b"\x22\x11\x00\x0c" + bytes(12) + REQUEST, "unsupported"),  # command
    (V2_SIGNATURE + b"\x21\x31\x00\xd8" + bytes(216) + REQUEST, "unsupported"),  # AF_UNIX
    (V2_SIGNATURE + b"\x21\x51\x00\x0c" + bytes(12) + REQUEST, "unsupported"),  # family 5
    (b"PROXY UDP4 198.51.100.7 192.0.2.1 1 2\r\n" + REQUEST, "unsupported"),
])
async def test_a_connection_without_a_valid_header_is_closed_and_counted(
        gateway: tuple[ProxyProcess, int], data: bytes, reason: str) -> None:
    proc, port = gateway
    before = await refused(proc, reason)
    assert await closed_unanswered(port, data)
    assert await refused(proc, reason) == before + 1
    if reason == "not_proxy_protocol":  # the first is a warning: a balancer without it?
        await eventually(lambda: "sending the PROXY protocol header?" in proc.stderr(),
                         what="the warning in the gateway's log")


async def test_a_header_cut_short_then_silence_is_closed_at_the_header_timeout(
        gateway: tuple[ProxyProcess, int]) -> None:
    proc, port = gateway
    before = await refused(proc, "timeout")
    loop = asyncio.get_running_loop()
    for partial in (b"PROXY TCP4 198.51.1", V2_SIGNATURE + b"\x21\x11\x00\x0c\xc6"):
        start = loop.time()
        assert await closed_unanswered(port, partial)
        assert loop.time() - start >= HEADER_TIMEOUT  # not before the timeout
    assert await refused(proc, "timeout") == before + 2


async def test_the_https_gateway_refuses_a_client_hello_without_a_header(
        tls_gateway: tuple[ProxyProcess, int, Any]) -> None:
    proc, port, pem = tls_gateway
    before = await refused(proc, "not_proxy_protocol")
    ctx = ssl.create_default_context(cadata=pem.cert.decode())
    with pytest.raises((ssl.SSLError, ConnectionError)):
        _, writer = await asyncio.wait_for(
            asyncio.open_connection("127.0.0.1", port, ssl=ctx), 10)
        writer.close()
    assert await refused(proc, "not_proxy_protocol") == before + 1


def test_the_option_is_the_gateways(tmp_path: Path) -> None:
    done = dry_run(tmp_path, "--proxy-protocol")
    assert done.returncode == 2 and "--proxy-protocol is for --mode gateway" in done.stderr


# --- behind a real haproxy --------------------------------------------------------------------
HAPROXY = """global
    nbthread 1
defaults
    mode tcp
    timeout connect 5s
    timeout client 60s
    timeout server 60s
frontend fe
    bind 127.0.0.1:{listen}
    default_backend be
backend be
    server gateway 127.0.0.1:{gateway} {send}
"""


async def haproxy(tmp: Path, gateway: int, send: str) -> AsyncIterator[int]:
    """haproxy in TCP mode in front of ``gateway``, sending the PROXY header (``send``)."""
    binary = required_tool("haproxy", hint="apt-get install haproxy")
    listen = free_port()
    conf = tmp / f"haproxy-{send}.cfg"
    conf.write_text(HAPROXY.format(listen=listen, gateway=gateway, send=send))
    proc = subprocess.Popen([binary, "-db", "-f", str(conf)], stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE)
    try:
        async def listening() -> bool:
            if proc.poll() is not None:
                raise AssertionError(f"haproxy exited: {proc.stderr.read()!r}")  # type: ignore[union-attr]
            try:
                _, writer = await asyncio.open_connection("127.0.0.1", listen)
            except OSError:
                return False
            writer.close()
            return True

        end = asyncio.get_running_loop().time() + 15
        while not await listening():
            assert asyncio.get_running_loop().time() < end, "haproxy did not listen"
            await asyncio.sleep(0.05)  # poll interval of a deadline-bounded wait
        yield listen
    finally:
        proc.terminate()
        proc.wait(10)


@pytest.fixture(params=["send-proxy", "send-proxy-v2"])
async def balanced(request: pytest.FixtureRequest, gateway: tuple[ProxyProcess, int],
                   tmp_path: Path) -> AsyncIterator[tuple[ProxyProcess, int, str]]:
    async for port in haproxy(tmp_path, gateway[1], request.param):
        yield gateway[0], port, request.param


async def test_behind_haproxy_the_app_and_the_log_see_the_client(
        balanced: tuple[ProxyProcess, int, str]) -> None:
    proc, port, send_proxy = balanced
    path = f"/haproxy-{send_proxy}"
    resp = await send(port, get("echo", path), local="127.0.0.2")
    assert forwarded_for(resp) == "127.0.0.2"
    assert await logged_client(proc, path) == "127.0.0.2"


async def test_behind_haproxy_each_client_has_its_own_bucket(
        balanced: tuple[ProxyProcess, int, str]) -> None:
    _, port, send_proxy = balanced
    first, second = ("127.0.0.4", "127.0.0.5") if send_proxy == "send-proxy" else (
        "127.0.0.6", "127.0.0.7")
    assert (await send(port, get("echo", "/limited"), local=first)).status == 200
    assert (await send(port, get("echo", "/limited"), local=first)).status == 429
    # from haproxy's one address, but another client: another bucket
    assert (await send(port, get("echo", "/limited"), local=second)).status == 200


async def test_behind_haproxy_over_tls_the_app_sees_the_client(
        tls_gateway: tuple[ProxyProcess, int, Any], tmp_path: Path) -> None:
    proc, gateway_port, pem = tls_gateway
    ctx = ssl.create_default_context(cadata=pem.cert.decode())
    async for port in haproxy(tmp_path, gateway_port, "send-proxy-v2"):
        reader, writer = await asyncio.open_connection("127.0.0.1", port, ssl=ctx,
                                                       local_addr=("127.0.0.8", 0))
        try:
            writer.write(get("echo", "/over-tls"))
            resp = await asyncio.wait_for(read_response(reader), 10)
        finally:
            writer.close()
        assert forwarded_for(resp) == "127.0.0.8"
        assert await logged_client(proc, "/over-tls") == "127.0.0.8"


@pytest.mark.parametrize(("blocks", "client", "checked"), [
    ({"ipBlocks": ["127.0.0.0/8"]}, "198.51.100.90", True),  # the balancer: selected
    ({"ipBlocks": ["198.51.100.0/24"]}, "198.51.100.91", False),  # the header's client: not
    ({"notIpBlocks": ["127.0.0.0/8"]}, "198.51.100.92", False),
    ({"remoteIpBlocks": ["198.51.100.0/24"]}, "198.51.100.93", True),
])
async def test_a_custom_policys_ip_blocks_judge_the_balancer(
        tmp_path: Path, echo: int, blocks: dict[str, list[str]], client: str,
        checked: bool) -> None:
    """A CUSTOM rule's `ipBlocks` judge the connection's peer (the balancer) as ALLOW and
    DENY rules' do, its `remoteIpBlocks` the header's client. Its provider is unknown to the
    gateway, so a request the rule selects is refused (ext_authz_error) and another passes."""
    proc = ProxyProcess(tmp_path, {"echo": [echo]},
                        args=("--mode", "gateway", "--proxy-protocol"))
    port = proc.listen_as_gateway([{"destination": "echo"}])
    config = yaml.safe_load(proc.config.read_text())
    config["inbound"] = {"authorization": [
        {"selector": {"service": "client"}, "action": "CUSTOM", "provider": {"name": "nowhere"},
         "rules": [{"from": [blocks]}]}]}
    proc.config.write_text(yaml.safe_dump(config))
    proc.start()
    try:
        resp = await send(port, v1(client, 1, "192.0.2.1", 2) + REQUEST)
        assert ((resp.status, resp.header("x-ami-reason")) == (403, "ext_authz_error")
                if checked else resp.status == 200), (resp.status, resp.body)
    finally:
        proc.stop()


class ProxiedTlsH2Client(H2Client):
    """An h2 client over TLS (ALPN h2) whose connection opens with ``header``, in clear."""

    def __init__(self, port: int, header: bytes, ctx: ssl.SSLContext) -> None:
        super().__init__(port)
        self.header, self.ctx = header, ctx

    async def __aenter__(self) -> ProxiedTlsH2Client:
        reader, writer = await asyncio.open_connection("127.0.0.1", self.port)
        writer.write(self.header)
        await writer.drain()
        await writer.start_tls(self.ctx, server_hostname="gateway")
        assert writer.get_extra_info("ssl_object").selected_alpn_protocol() == "h2"
        self.reader, self.writer = reader, writer
        self.h2.initiate_connection()
        self._flush()
        self.task = asyncio.create_task(self._read())
        return self


async def test_http2_over_tls_names_the_headers_client(
        tls_gateway: tuple[ProxyProcess, int, Any]) -> None:
    proc, port, pem = tls_gateway
    ctx = ssl.create_default_context(cadata=pem.cert.decode())
    ctx.set_alpn_protocols(["h2"])
    async with ProxiedTlsH2Client(port, v2("198.51.100.81", 1, "192.0.2.1", 443),
                                  ctx) as client:
        resp = await client.request("echo", "/h2-tls-client", scheme="https")
        assert resp.status == 200, resp
        headers = {k.lower(): v for k, v in resp.json()["headers"]}
        assert headers["x-forwarded-for"] == "198.51.100.81"
    assert await logged_client(proc, "/h2-tls-client") == "198.51.100.81"
    async with ProxiedTlsH2Client(port, v1("203.0.113.81", 1, "192.0.2.1", 443),
                                  ctx) as client:
        assert (await client.request("echo", "/", scheme="https")).status == 403


@pytest.mark.parametrize("version", [1, 2])
async def test_an_ipv4_mapped_client_is_written_as_a_socket_names_it(
        gateway: tuple[ProxyProcess, int], version: int) -> None:
    """A dual-stack balancer names an IPv4 client in IPv6 (`::ffff:a.b.c.d`): the app's
    x-forwarded-for and the access log read it so, as a dual-stack socket's peer."""
    proc, port = gateway
    client, path = f"::ffff:198.51.100.{100 + version}", f"/mapped-v{version}"
    header = (f"PROXY TCP6 {client} ::ffff:192.0.2.1 1 2\r\n".encode() if version == 1
              else v2(client, 1, "::ffff:192.0.2.1", 2))
    resp = await send(port, header + get("echo", path))
    assert forwarded_for(resp) == client
    assert await logged_client(proc, path) == client
