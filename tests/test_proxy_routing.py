"""Proxy routing and header rules, through a real `python -m proxy` process and real sockets."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from tests.proxyharness import (
    Backends,
    Message,
    ProxyProcess,
    RawBackend,
    free_port,
    get,
    metric_value,
    read_request,
    roundtrip,
)


async def _reset_midway(backend: RawBackend, reader: asyncio.StreamReader,
                        writer: asyncio.StreamWriter) -> None:
    """Promise 1000 bytes, send 10, then reset the connection."""
    await read_request(reader)
    writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 1000\r\n\r\n0123456789")
    await writer.drain()
    writer.transport.abort()


@pytest.fixture(scope="module")
def env(tmp_path_factory: pytest.TempPathFactory, backends: Backends,
        echo: int) -> Iterator[dict[str, Any]]:
    reset = backends.raw(_reset_midway)
    routes = [{"host": "api", "rules": [
        {"matches": [{"path": {"prefix": "/b"}}], "backends": [{"service": "echo"}]},
    ]}]
    proxy = ProxyProcess(tmp_path_factory.mktemp("routing"),
                         {"echo": [echo], "down": [free_port()], "reset": [reset.port]},
                         routes=routes).start()
    yield {"proxy": proxy, "backends": backends}
    proxy.stop()


def _echoed(resp: Message) -> dict[str, Any]:
    assert resp.status == 200, resp.body
    data: dict[str, Any] = json.loads(resp.body)
    return data


async def test_origin_form_is_routed_by_host(env: dict[str, Any]) -> None:
    """`GET /x` with `Host: echo:9080` reaches the echo service with the path and Host intact."""
    resp = await roundtrip(env["proxy"].outbound, get("echo:9080", "/x?q=1"))
    data = _echoed(resp)
    assert data["raw_path"] == "/x?q=1"
    assert dict(data["headers"])["Host"] == "echo:9080"


async def test_absolute_form_is_routed_by_authority(env: dict[str, Any]) -> None:
    """An HTTP-proxy style request (aiohttp `proxy=`) is routed by its URL's authority."""
    async with aiohttp.ClientSession() as session, session.get(
            "http://echo.default.svc.cluster.local/abs", proxy=f"http://127.0.0.1:{env['proxy'].outbound}"
    ) as resp:
        data = await resp.json()
    assert data["path"] == "/abs"
    assert dict(data["headers"])["Host"] == "echo.default.svc.cluster.local"


@pytest.mark.parametrize("host_line", ["Host: elsewhere.example\r\n", "", "HOST: Echo\r\n"])
async def test_absolute_form_target_is_the_host_upstream(env: dict[str, Any],
                                                        host_line: str) -> None:
    """RFC 9112 3.2.2: with an absolute-form target the proxy ignores the received Host and
    sends the target's: the app sees where the request really went, one Host, never two."""
    raw = f"GET http://echo:9080/abs HTTP/1.1\r\n{host_line}\r\n".encode()
    data = _echoed(await roundtrip(env["proxy"].outbound, raw))
    assert data["path"] == "/abs"
    assert [v for k, v in data["headers"] if k.lower() == "host"] == ["echo:9080"]


async def test_unknown_host_is_404_no_route(env: dict[str, Any]) -> None:
    """A Host that names no service gets a local 404 saying `no_route`."""
    resp = await roundtrip(env["proxy"].outbound, get("nosuch", "/"))
    assert resp.status == 404
    assert resp.header("x-ami-reason") == "no_route"


async def test_route_rule_without_match_is_no_route(env: dict[str, Any]) -> None:
    """A host whose rules match nothing answers 404 `no_route`; a matching path is forwarded."""
    resp = await roundtrip(env["proxy"].outbound, get("api", "/other"))
    assert (resp.status, resp.header("x-ami-reason")) == (404, "no_route")
    resp = await roundtrip(env["proxy"].outbound, get("api", "/b/c"))
    assert _echoed(resp)["path"] == "/b/c"


async def test_upstream_down_is_503_connect_failure(env: dict[str, Any]) -> None:
    """An endpoint with nothing listening gives 503 `upstream_connect_failure`, and is counted."""
    resp = await roundtrip(env["proxy"].outbound, get("down", "/"))
    assert resp.status == 503
    assert resp.header("x-ami-reason") == "upstream_connect_failure"
    text = await env["proxy"].metrics()
    assert metric_value(text, "ami_upstream_connect_failures_total",
                        destination_service="down") >= 1


async def test_upstream_reset_mid_response_aborts_client(env: dict[str, Any]) -> None:
    """A reset after the response head truncates the client's response and counts upstream_reset."""
    proxy = env["proxy"]
    reader, writer = await asyncio.open_connection("127.0.0.1", proxy.outbound)
    writer.write(get("reset", "/"))
    head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 10)
    assert b"content-length: 1000" in head.lower()
    rest = await asyncio.wait_for(reader.read(), 10)  # the proxy must end the connection early
    writer.close()
    assert len(rest) < 1000
    text = await proxy.metrics()
    assert metric_value(text, "ami_requests_total", response_flags="upstream_reset",
                        destination_service="reset") >= 1


@pytest.mark.parametrize(("sent", "received"), [
    ("/x?q=a%20b&r=%2F..", "/x?q=a%20b&r=%2F.."),  # a normal target goes through byte for byte
    ("/x?", "/x?"),
    ("/x#frag", "/x"),  # a fragment never reaches the server
    ("/a/../x?q=1", "/x?q=1"),  # a normalised path keeps its query
    # encoded unreserved characters are decoded (the app would too); other escapes stay
    ("/%61%7E%2d/a%20b%3F%25%2561", "/a~-/a%20b%3F%25%2561"),
])
async def test_request_target_sent_upstream(env: dict[str, Any], sent: str,
                                            received: str) -> None:
    """The backend gets the client's target when it is already normal, else the normal form."""
    resp = await roundtrip(env["proxy"].outbound, get("echo", sent))
    assert _echoed(resp)["raw_path"] == received


@pytest.mark.parametrize("path", ["/a/../b", "//b", "/a/..%2Fb", "/a/%2e%2e/b", "/./b", "/%62",
                                  "/a\\..\\b", "/\\b", "/a/..\\b"])
async def test_paths_are_normalised_before_routing(env: dict[str, Any], path: str) -> None:
    """Dot segments, repeated, encoded and back slashes, an encoded letter become `/b`, for the
    backend and route match."""
    resp = await roundtrip(env["proxy"].outbound, get("echo", path))
    assert _echoed(resp)["raw_path"] == "/b"
    resp = await roundtrip(env["proxy"].outbound, get("api", "/x/..%2F" + path.lstrip("/")))
    assert _echoed(resp)["path"] == "/b"


async def test_hop_by_hop_headers_are_stripped(env: dict[str, Any]) -> None:
    """Connection, Keep-Alive, TE, Proxy-* and Connection-listed headers never reach the backend."""
    extra = ("Connection: keep-alive, X-Secret-Hop\r\nKeep-Alive: timeout=5\r\nTE: trailers\r\n"
             "Proxy-Authorization: Basic eA==\r\nProxy-Connection: keep-alive\r\n"
             "X-Secret-Hop: 1\r\nX-Kept: yes\r\nTrailer: X-T\r\n")
    resp = await roundtrip(env["proxy"].outbound, get("echo", "/h", extra))
    names = {k.lower() for k, _ in _echoed(resp)["headers"]}
    assert "x-kept" in names
    for gone in ("keep-alive", "te", "proxy-authorization", "proxy-connection", "x-secret-hop",
                 "trailer"):
        assert gone not in names, gone


async def test_hop_by_hop_response_headers_are_stripped(env: dict[str, Any]) -> None:
    """Headers the upstream lists in Connection (and Keep-Alive) do not reach the client,
    whether Connection names them alone or after `keep-alive` (responsehead skips the token
    scan only for a bare `keep-alive` or `close`)."""
    connection = {"/alone": b"X-Up-Hop", "/listed": b"keep-alive, X-Up-Hop",
                  "/spaced": b" Keep-Alive ,X-Up-Hop"}

    async def handler(_: RawBackend, reader: asyncio.StreamReader,
                      writer: asyncio.StreamWriter) -> None:
        while (req := await read_request(reader)) is not None:
            writer.write(b"HTTP/1.1 200 OK\r\nConnection: " + connection[req.target]
                         + b"\r\nX-Up-Hop: 1\r\nKeep-Alive: timeout=5\r\nX-Up-Kept: 1\r\n"
                         b"Content-Length: 2\r\n\r\nok")
            await writer.drain()

    backend = env["backends"].raw(handler)
    proxy = ProxyProcess(Path(env["proxy"].config.parent), {"hop": [backend.port]})
    proxy.start()
    try:
        responses = [await roundtrip(proxy.outbound, get("hop", path)) for path in connection]
    finally:
        proxy.stop()
    for resp in responses:
        assert (resp.status, resp.body) == (200, b"ok")
        assert resp.header("x-up-kept") == "1"
        assert resp.header("x-up-hop") is None and resp.header("keep-alive") is None


async def test_request_id_added_when_absent_and_kept_when_present(env: dict[str, Any]) -> None:
    """The proxy adds a UUID x-request-id to requests without one and keeps a client's own."""
    resp = await roundtrip(env["proxy"].outbound, get("echo", "/"))
    rid = "".join(v for k, v in _echoed(resp)["headers"] if k.lower() == "x-request-id")
    assert len(rid) == 36 and rid.count("-") == 4
    resp = await roundtrip(env["proxy"].outbound, get("echo", "/", "X-Request-Id: mine-1\r\n"))
    assert [v for k, v in _echoed(resp)["headers"] if k.lower() == "x-request-id"] == ["mine-1"]


async def test_forwarded_headers_are_set(env: dict[str, Any]) -> None:
    """x-forwarded-for gets the client address appended; x-forwarded-proto is set, not trusted."""
    extra = "X-Forwarded-For: 10.0.0.1\r\nX-Forwarded-Proto: https\r\n"
    resp = await roundtrip(env["proxy"].outbound, get("echo", "/", extra))
    headers = _echoed(resp)["headers"]
    assert [v for k, v in headers if k.lower() == "x-forwarded-for"] == ["10.0.0.1, 127.0.0.1"]
    assert [v for k, v in headers if k.lower() == "x-forwarded-proto"] == ["http"]


async def test_identity_headers_from_client_are_dropped(env: dict[str, Any]) -> None:
    """A client cannot forge x-forwarded-client-cert through the sidecar."""
    resp = await roundtrip(env["proxy"].outbound,
                              get("echo", "/", "X-Forwarded-Client-Cert: By=spiffe://evil\r\n"))
    assert "x-forwarded-client-cert" not in {k.lower() for k, _ in _echoed(resp)["headers"]}


@pytest.mark.parametrize(("snippet", "message"), [
    ("routes: [{host: web, rules: [{backends: [{weigth: 3}]}]}]",
     "routes[0].rules[0].backends[0].weigth: unknown field, did you mean 'weight'?"),
    ("services: {web: {endpoints: [{address: '127.0.0.1:1'}], policy: {loadBalancer: FAST}}}",
     "services.web.policy.loadBalancer"),
    ("inbound: {authorization: [{action: MAYBE}]}", "inbound.authorization[0].action"),
    # a dry-run CUSTOM policy would still be enforced (its provider asked, its answer kept)
    ("inbound: {authorization: [{dryRun: true, action: CUSTOM, provider: {name: ext},"
     " rules: [{to: [{paths: [/x]}]}]}]}",
     "inbound.authorization[0].dryRun: a CUSTOM policy cannot be dry-run"),
    ("gateway: {rules: [{hosts: ['*.'], destination: web}]}", "gateway.rules[0].hosts[0]"),
    # keys the snapshot parser reads itself: a typo is refused too, not ignored
    ("mesh: {acessLog: true}", "mesh.acessLog: unknown field, did you mean 'accessLog'?"),
    ("services: {web: {endpoint: [{address: '127.0.0.1:1'}]}}",
     "services.web.endpoint: unknown field, did you mean 'endpoints'?"),
    ("services: {web: {endpoints: [{address: '127.0.0.1:1', label: {version: v1}}]}}",
     "services.web.endpoints[0].label: unknown field, did you mean 'labels'?"),
    ("routes: [{hosts: web, rules: []}]", "routes[0].hosts: unknown field"),
    ("listener: {outbound: '127.0.0.1:1'}", "listener: unknown field, did you mean 'listeners'?"),
    ("mesh: {tracing: {sampleRate: 1}}", "mesh.tracing.sampleRate: unknown field, expected one of"),
])
def test_static_config_errors_name_the_field_and_exit_2(
        tmp_path: Path, capsys: pytest.CaptureFixture[str], snippet: str, message: str) -> None:
    """Every part of a static config is checked by the resources' own parsers; their errors
    are one `error:` line with the field path and exit status 2, never a traceback."""
    from proxy.__main__ import main

    config = tmp_path / "proxy.yaml"
    config.write_text(f"version: s\n{snippet}\n")
    assert main(["--config", str(config), "--dry-run"]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"error: {config}: ") and message in err and "Traceback" not in err
