"""A gateway behind load balancers (`--trusted-proxies N`): the client is the Nth address from
the right of the x-forwarded-for it arrives with, for a Route rule's per-source rate limit,
CONSISTENT_HASH by sourceIp and AuthorizationPolicy remoteIpBlocks; without the option the
header is the client's word and nothing of it is believed."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Iterator
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
import yaml

from proxy.clientaddress import trusted_client
from tests.proxyharness import (
    Backends,
    ProxyProcess,
    dry_run,
    eventually,
    get,
    read_response,
)

pytestmark = pytest.mark.timeout(120)

# a token per client address and none refilled during the test (as the rule-limit tests)
LIMITED = {"host": "echo", "rules": [
    {"matches": [{"path": {"prefix": "/limited"}}], "backends": [{}],
     "rateLimit": {"requestsPerSecond": 0.01, "burst": 1, "perSource": True}},
    {"backends": [{}]}]}
DENY_NETWORK = {"selector": {"service": "client"}, "action": "DENY",
                "rules": [{"from": [{"remoteIpBlocks": ["203.0.113.0/24"]}]}]}


def start_gateway(tmp: Path, backends: list[int], *extra: str) -> tuple[ProxyProcess, int]:
    proc = ProxyProcess(tmp, {"echo": backends}, args=("--mode", "gateway", *extra),
                        routes=[LIMITED], access_log=True)
    port = proc.listen_as_gateway([{"destination": "echo"}])
    config = yaml.safe_load(proc.config.read_text())
    config["inbound"] = {"authorization": [DENY_NETWORK]}
    proc.config.write_text(yaml.safe_dump(config))
    proc.start()
    return proc, port


@pytest.fixture
def trusting_proc(tmp_path: Path, echo: int) -> Iterator[tuple[ProxyProcess, int]]:
    proc, port = start_gateway(tmp_path, [echo], "--trusted-proxies", "1")
    yield proc, port
    proc.stop()


@pytest.fixture
def trusting(trusting_proc: tuple[ProxyProcess, int]) -> int:
    return trusting_proc[1]


def logged(proc: ProxyProcess) -> list[dict[str, Any]]:
    return [json.loads(x) for x in proc.stdout().splitlines() if x.startswith("{")]


async def status(port: int, path: str, xff: str | None = None) -> tuple[int, str | None]:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        writer.write(get("echo", path, extra=f"x-forwarded-for: {xff}\r\n" if xff else ""))
        resp = await asyncio.wait_for(read_response(reader), 10)
    finally:
        writer.close()
    return resp.status, resp.header("x-ami-reason")


async def test_each_client_behind_the_balancer_has_its_own_bucket(trusting: int) -> None:
    assert await status(trusting, "/limited", "198.51.100.7") == (200, None)
    assert await status(trusting, "/limited", "198.51.100.7") == (429, "rate_limited")
    assert await status(trusting, "/limited", "198.51.100.8") == (200, None)
    # what a client writes left of the balancer's entry is not believed: same bucket
    assert await status(trusting, "/limited", "10.9.9.9, 198.51.100.8") == (429,
                                                                            "rate_limited")
    # no entry, or one that is no address: the connection's peer (the balancer itself)
    assert await status(trusting, "/limited") == (200, None)
    assert await status(trusting, "/limited", "unknown") == (429, "rate_limited")


async def test_remote_ip_blocks_judge_the_trusted_client(trusting: int) -> None:
    assert await status(trusting, "/a", "203.0.113.5") == (403, "not_authorized")
    assert await status(trusting, "/a", "198.51.100.7") == (200, None)
    # a client cannot hide behind an address it writes itself
    assert await status(trusting, "/a", "198.51.100.7, 203.0.113.5") == (403, "not_authorized")
    assert await status(trusting, "/a", "203.0.113.5, 198.51.100.7") == (200, None)


async def test_the_access_log_names_the_trusted_client(
        trusting_proc: tuple[ProxyProcess, int]) -> None:
    proc, port = trusting_proc
    assert await status(port, "/logged-client", "10.1.1.1, 198.51.100.40") == (200, None)
    await eventually(lambda: any(x.get("path") == "/logged-client" for x in logged(proc)))
    line = next(x for x in logged(proc) if x.get("path") == "/logged-client")
    assert line["client_address"] == "198.51.100.40"


async def test_without_the_option_the_header_is_not_believed(tmp_path: Path,
                                                             echo: int) -> None:
    proc, port = start_gateway(tmp_path, [echo])
    try:
        assert await status(port, "/a", "203.0.113.5") == (200, None)
        assert await status(port, "/limited", "198.51.100.1") == (200, None)
        assert await status(port, "/limited", "198.51.100.2") == (429, "rate_limited")
        await eventually(lambda: any(x.get("path") == "/a" for x in logged(proc)))
        assert next(x for x in logged(proc) if x.get("path") == "/a")["client_address"] == (
            "127.0.0.1")
    finally:
        proc.stop()


async def test_source_ip_hashing_follows_the_trusted_client(tmp_path: Path) -> None:
    """Two endpoints, CONSISTENT_HASH by sourceIp: each client behind the balancer keeps its
    endpoint, and different clients spread over both (all from one peer address)."""
    backends = Backends()
    try:
        ports = [backends.aiohttp(_named(str(n))) for n in range(2)]
        proc = ProxyProcess(tmp_path, {"echo": ports},
                            args=("--mode", "gateway", "--trusted-proxies", "1"))
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
                seen.setdefault(client, set()).add(await _served_by(port, client))
            assert all(len(names) == 1 for names in seen.values()), seen
            assert {name for names in seen.values() for name in names} == {"0", "1"}
        finally:
            proc.stop()
    finally:
        backends.close()


def _named(name: str) -> Any:
    from aiohttp import web

    async def handler(_request: web.Request) -> web.Response:
        return web.json_response({"name": name})

    app = web.Application()
    app.router.add_get("/{tail:.*}", handler)
    return app


async def _served_by(port: int, client: str) -> str:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        writer.write(get("echo", "/", extra=f"x-forwarded-for: {client}\r\n"))
        resp = await asyncio.wait_for(read_response(reader), 10)
    finally:
        writer.close()
    assert resp.status == 200, resp
    return str(json.loads(resp.body)["name"])


@pytest.mark.parametrize(("flags", "message"), [
    (("--trusted-proxies", "1"), "--trusted-proxies is for --mode gateway"),
    (("--mode", "gateway", "--trusted-proxies", "33"), "--trusted-proxies must be 0 to 32"),
])
def test_misplaced_or_absurd_counts_stop_the_start(tmp_path: Path, flags: tuple[str, ...],
                                                   message: str) -> None:
    done = dry_run(tmp_path, *flags)
    assert done.returncode == 2 and message in done.stderr, done.stderr


def _exchange(xff_line: bytes, peer: bytes = b"10.0.0.1") -> Any:
    return SimpleNamespace(head_tail=[xff_line, b"x-forwarded-proto: http\r\n"],
                           downstream=SimpleNamespace(client_ip=peer))


@pytest.mark.parametrize(("line", "hops", "client"), [
    (b"x-forwarded-for: 10.0.0.1\r\n", 1, b"10.0.0.1"),                 # nothing arrived
    (b"x-forwarded-for: 198.51.100.7, 10.0.0.1\r\n", 1, b"198.51.100.7"),
    (b"x-forwarded-for: 198.51.100.7, 10.0.0.1\r\n", 0, b"10.0.0.1"),
    (b"x-forwarded-for: 1.1.1.1,198.51.100.7 , 10.0.0.1\r\n", 1, b"198.51.100.7"),
    (b"x-forwarded-for: 1.1.1.1, 198.51.100.7, 10.0.0.1\r\n", 2, b"1.1.1.1"),
    (b"x-forwarded-for: 198.51.100.7, 10.0.0.1\r\n", 2, b"10.0.0.1"),    # fewer than trusted
    (b"x-forwarded-for: 2001:DB8::7, 10.0.0.1\r\n", 1, b"2001:db8::7"),
    (b"x-forwarded-for: 198.51.100.7:443, 10.0.0.1\r\n", 1, b"10.0.0.1"),  # no address
    (b"x-forwarded-for: \xff, 10.0.0.1\r\n", 1, b"10.0.0.1"),
    (b"x-request-id: 1\r\n", 1, b"10.0.0.1"),
])
def test_the_nth_address_from_the_right(line: bytes, hops: int, client: bytes) -> None:
    assert trusted_client(_exchange(line), hops) == client
