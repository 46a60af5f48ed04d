"""Headers a client outside the mesh must not steer the gateway with (Envoy's rule for
`x-envoy-*` control headers on external requests): a real `--mode gateway` proxy."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Iterator
from typing import Any

import pytest
import yaml
from aiohttp import web

from tests.h2app import H2Client, H2Server
from tests.proxyharness import (
    Backends,
    ProxyProcess,
    eventually,
    get,
    metric_value,
    read_response,
)

DEADLINE = 10.0


class HeldApp:
    """`/held?k=KEY` answers (with the headers it got) only once the test releases KEY;
    anything else answers at once."""

    def __init__(self) -> None:
        self.arrived: dict[str, dict[str, str]] = {}
        self._gates: dict[str, asyncio.Event] = {}
        self.loop: asyncio.AbstractEventLoop | None = None

    def app(self) -> web.Application:
        async def held(request: web.Request) -> web.Response:
            key = request.query["k"]
            self.loop = asyncio.get_running_loop()
            gate = self._gates.setdefault(key, asyncio.Event())
            self.arrived[key] = dict(request.headers)
            await gate.wait()
            return web.json_response(self.arrived[key])

        async def other(request: web.Request) -> web.Response:
            return web.json_response(dict(request.headers))

        app = web.Application()
        app.router.add_get("/held", held)
        app.router.add_route("*", "/{tail:.*}", other)
        return app

    def release(self, key: str) -> None:
        loop = self.loop
        assert loop is not None
        loop.call_soon_threadsafe(lambda: self._gates.setdefault(key, asyncio.Event()).set())


@pytest.fixture(scope="module")
def held(backends: Backends) -> tuple[HeldApp, int]:
    app = HeldApp()
    return app, backends.aiohttp(app.app())


@pytest.fixture(scope="module")
def h2_app(backends: Backends) -> H2Server:
    """An h2c app (as a gRPC server is), recording the requests it gets."""
    return backends.call(H2Server("h2").start())


@pytest.fixture(scope="module")
def gateway(tmp_path_factory: pytest.TempPathFactory, held: tuple[HeldApp, int],
            h2_app: H2Server) -> Iterator[tuple[ProxyProcess, int]]:
    tmp = tmp_path_factory.mktemp("gwedge")
    proc = ProxyProcess(tmp, {"shop": [held[1]], "h2": [h2_app.port]},
                        args=("--mode", "gateway"))
    port = proc.listen_as_gateway([{"hosts": ["h2.example.com"], "destination": "h2"},
                                   {"destination": "shop"}])
    config: dict[str, Any] = yaml.safe_load(proc.config.read_text())
    # One failure ejects shop's only endpoint: every client would then get 503.
    config["services"]["shop"]["policy"] = {"outlierDetection": {"consecutive5xxErrors": 1}}
    proc.config.write_text(yaml.safe_dump(config))
    proc.start()
    yield proc, port
    proc.stop()


async def _h1(port: int, path: str, extra: str = "") -> tuple[int, str | None, bytes]:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        writer.write(get("shop.example.com", path, extra))
        resp = await asyncio.wait_for(read_response(reader), DEADLINE)
        return resp.status, resp.header("x-ami-reason"), resp.body
    finally:
        writer.close()


async def _h2(port: int, path: str, headers: list[tuple[str, str]]
              ) -> tuple[int, str | None, bytes]:
    async with H2Client(port) as client:
        resp = await client.request("shop.example.com", path, headers=headers,
                                    timeout=DEADLINE)
        reason = next((v.decode() for n, v in resp.headers if n == b"x-ami-reason"), None)
        return resp.status, reason, resp.body


async def _held_request(held: HeldApp, key: str, send: Any) -> tuple[int, str | None, bytes]:
    """Send while /held?k=key is held; release it once the app has it (or the gateway has
    answered without waiting for it)."""
    task = asyncio.ensure_future(send(f"/held?k={key}"))
    await eventually(lambda: key in held.arrived or task.done(), DEADLINE,
                     what="the request reached the app or was answered")
    held.release(key)
    return await asyncio.wait_for(task, DEADLINE)


@pytest.mark.parametrize("protocol", ["http1", "http2"])
async def test_a_clients_timeout_header_neither_times_out_nor_ejects_the_endpoint(
        gateway: tuple[ProxyProcess, int], held: tuple[HeldApp, int], protocol: str) -> None:
    """`x-ami-timeout-ms` is the local app's to set at its sidecar. Honoured at the gateway,
    `x-ami-timeout-ms: 1` from any outside client made its request a 504 `timeout`, which
    counts against the endpoint: one such request (five under the default
    consecutive5xxErrors) ejected shop's only endpoint, and every client got 503."""
    proc, port = gateway
    app = held[0]
    key = f"timeout-{protocol}"
    if protocol == "http1":
        answer = await _held_request(app, key, lambda p: _h1(port, p, "x-ami-timeout-ms: 1\r\n"))
    else:
        answer = await _held_request(app, key,
                                     lambda p: _h2(port, p, [("x-ami-timeout-ms", "1")]))
    status, reason, body = answer
    assert (status, reason) == (200, None)
    assert "X-Ami-Timeout-Ms" not in json.loads(body)  # dropped, not passed on
    assert metric_value(await proc.metrics(), "ami_outlier_ejections_total") == 0
    assert (await _h1(port, "/"))[:2] == (200, None)


async def test_a_timeout_header_that_is_no_number_is_no_error_at_the_gateway(
        gateway: tuple[ProxyProcess, int]) -> None:
    """Dropped unread, its value is not judged either (the app's sidecar answers 400
    `invalid_header` to its own app)."""
    status, reason, body = await _h1(gateway[1], "/x", "x-ami-timeout-ms: soon\r\n")
    assert (status, reason) == (200, None)
    assert "X-Ami-Timeout-Ms" not in json.loads(body)


@pytest.mark.parametrize("claimed", ["https", "http"])
async def test_an_http2_apps_scheme_is_the_one_the_client_used(
        gateway: tuple[ProxyProcess, int], h2_app: H2Server, claimed: str) -> None:
    """Over the plaintext gateway the app gets `:scheme: http`, as `x-forwarded-proto` says,
    whatever `:scheme` the client claimed: passed on before, a client's `https` reached the app
    (which an ASGI server reads as scope["scheme"], the request's being HTTPS)."""
    path = f"/scheme/{claimed}"
    async with H2Client(gateway[1]) as client:
        resp = await client.request("h2.example.com", path, scheme=claimed, timeout=DEADLINE)
    assert resp.status == 200
    seen = [r for r in h2_app.requests if r.path == path]
    assert [(r.get(":scheme"), r.get("x-forwarded-proto")) for r in seen] == [("http", "http")]
