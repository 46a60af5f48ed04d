"""envoyExtAuthzGrpc on the wire: a sidecar asking a raw HTTP/2 provider
(tests/grpcauthzwire.py, an ExternalService host reached as h2c egress) that sends what a
grpcio server never does: the gRPC framing's edge cases, Envoy's error_response, a GOAWAY or
REFUSED_STREAM before the call was processed, a stream limit of one; and that shows the
resets and connections the sidecar makes.

Workloads (one app answers for all with what it got), called through web's sidecar:
- `api`: provider `wire` (timeout 2s);
- `open`: provider `wire-open` (the same server, failOpen);
- `narrow`: provider `narrow` (another server: one stream per connection, its SETTINGS and
  its answers late, so that checks arriving together wait for one connection);
- `legacy`: provider `h1-mesh`, the mesh service `oldauthz` whose sidecar declares
  `--app-protocol http1`; `legacy-egress`: provider `h1-egress`, an ExternalService host that
  answers HTTP/1.1 only (the app).
"""

from __future__ import annotations

import http.client
import json
import socket
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import pytest
from aiohttp import web

from tests import meshbuilder
from tests.grpcapp import serving_in_thread
from tests.grpcauthzwire import ERROR_BODY, LATE, WireAuthz
from tests.helpers_mesh import wait_for
from tests.proxyharness import Backends
from tests.resources import document, documents, mesh_config

pytestmark = pytest.mark.timeout(240)


def _provider(name: str, host: str, port: int, **fields: Any) -> dict[str, Any]:
    return {"name": name, "envoyExtAuthzGrpc": {"service": host, "port": port, **fields}}


def _custom(service: str, provider: str) -> str:
    return document("AuthorizationPolicy", f"{service}-ext", {
        "selector": {"service": service}, "action": "CUSTOM", "provider": {"name": provider},
        "rules": [{"to": [{"notPaths": ["/free/*"]}]}]})


def _external(name: str, host: str, port: int) -> str:
    return document("ExternalService", name, {
        "hosts": [host], "ports": [{"number": port, "protocol": "GRPC"}],
        "endpoints": [{"address": "127.0.0.1"}]})


class WireMesh(meshbuilder.Mesh):
    def build(self) -> WireMesh:
        self.wire = WireAuthz()
        self.narrow = WireAuthz(max_streams=1, settings_delay=0.5, answer_delay=0.3)
        serving = serving_in_thread(self.wire, self.narrow)  # type: ignore[arg-type]
        serving.__enter__()
        self.defer(lambda: serving.__exit__(None, None, None))
        self.hub = Backends()
        self.defer(self.hub.close)
        self.seen: list[dict[str, Any]] = []
        app = self.hub.aiohttp(self._app())
        self.control_plane(documents(
            mesh_config("PERMISSIVE", extensionProviders=[
                _provider("wire", "wire.partner.test", self.wire.port, timeout="2s"),
                _provider("wire-open", "wire.partner.test", self.wire.port, failOpen=True),
                _provider("narrow", "narrow.partner.test", self.narrow.port, timeout="30s"),
                _provider("h1-mesh", "oldauthz", 9000),
                _provider("h1-egress", "h1.partner.test", app)]),
            _external("wire-partner", "wire.partner.test", self.wire.port),
            _external("narrow-partner", "narrow.partner.test", self.narrow.port),
            _external("h1-partner", "h1.partner.test", app),
            _custom("api", "wire"), _custom("open", "wire-open"),
            _custom("narrow", "narrow"), _custom("legacy", "h1-mesh"),
            _custom("legacy-egress", "h1-egress")), warmup=0.0)
        self.api = self.sidecar("api", app=f"127.0.0.1:{app}")
        for service in ("open", "narrow", "legacy", "legacy-egress"):
            self.sidecar(service, app=f"127.0.0.1:{app}")
        # a provider whose sidecar says its app speaks HTTP/1.1 only
        self.sidecar("oldauthz", app=f"127.0.0.1:{self.wire.port}",
                     extra=["--app-protocol", "http1"])
        self.web = self.sidecar("web")
        self.wait_synced()
        for service in ("api", "open", "narrow", "legacy", "legacy-egress"):
            wait_for(lambda s=service: self.call(s, "/free/ready")[0] == 200, 20,  # type: ignore[misc]
                     f"{service} reachable")
        return self

    def _app(self) -> web.Application:
        async def echo(request: web.Request) -> web.Response:
            self.seen.append({"host": request.host, "path": request.path})
            return web.json_response(self.seen[-1])

        app = web.Application()
        app.router.add_route("*", "/{tail:.*}", echo)
        return app

    def outbound(self) -> tuple[str, int]:
        addr, _, port = self.web.info["outbound"].rpartition(":")
        return addr, int(port)

    def call(self, host: str, path: str) -> tuple[int, http.client.HTTPMessage, bytes]:
        """A GET to ``host`` through web's sidecar: status, headers, body."""
        conn = http.client.HTTPConnection(*self.outbound(), timeout=60)
        try:
            conn.request("GET", path, headers={"Host": host})
            resp = conn.getresponse()
            return resp.status, resp.msg, resp.read()
        finally:
            conn.close()

    def got(self, path: str) -> bool:
        return any(s["path"] == path for s in self.seen)


@pytest.fixture(scope="module")
def mesh(tmp_path_factory: pytest.TempPathFactory) -> Iterator[WireMesh]:
    with WireMesh(tmp_path_factory.mktemp("extauthz-grpc-wire")) as built:
        yield built.build()


def _refused(mesh: WireMesh, path: str, reason: str = "ext_authz_error",
             status: int = 403) -> None:
    got, headers, body = mesh.call("api", path)
    assert (got, headers["x-ami-reason"]) == (status, reason), body
    assert mesh.wire.checked(path) and not mesh.got(path)


def test_the_call_is_a_grpc_unary_call_with_the_providers_timeout(mesh: WireMesh) -> None:
    """POST /envoy.service.auth.v3.Authorization/Check, application/grpc, te: trailers,
    grpc-timeout from the provider's timeout (2s: `2000m`); one uncompressed message."""
    status, _, body = mesh.call("api", "/plain/a")
    assert status == 200, body
    [call] = mesh.wire.checked("/plain/a")
    assert (call.header(":method"), call.header(":path")) == (
        "POST", "/envoy.service.auth.v3.Authorization/Check")
    assert (call.header(":authority"), call.header(":scheme")) == ("wire.partner.test", "http")
    assert call.header("content-type") == "application/grpc"
    assert call.header("te") == "trailers"
    assert call.header("grpc-timeout") == "2000m"
    assert call.body[0] == 0 and int.from_bytes(call.body[1:5], "big") == len(call.body) - 5


def test_a_message_split_across_data_frames_is_read_whole(mesh: WireMesh) -> None:
    status, _, body = mesh.call("api", "/split/b")
    assert status == 200, body
    assert mesh.got("/split/b")


def test_answers_that_are_not_one_plain_message_are_errors(mesh: WireMesh) -> None:
    """A compressed message (none was offered), two messages, `:status` 503, a trailers-only
    answer with a non-OK grpc-status, an OK CheckResponse whose call then fails (grpc-status
    13): no usable answer, statusOnError (403)."""
    for path in ("/compressed/c", "/two/c", "/status503/c", "/trailers-only/c",
                 "/ok-then-internal/c"):
        _refused(mesh, path)


def test_an_oversized_answer_is_an_error_and_its_stream_is_reset(mesh: WireMesh) -> None:
    """Past 64 KiB the check gives up: ext_authz_error, and the provider's stream is reset
    (RST_STREAM), not left to send the rest; the connection goes on for other checks."""
    _refused(mesh, "/big/d")
    wait_for(lambda: "/big/d" in mesh.wire.resets, 10, "the oversized answer's stream reset")
    status, _, body = mesh.call("api", "/split/d-after")
    assert status == 200, body
    [big], [after] = mesh.wire.checked("/big/d"), mesh.wire.checked("/split/d-after")
    assert after.connection == big.connection


def test_error_response_refuses_with_its_status_headers_and_body(mesh: WireMesh) -> None:
    """Envoy's CheckResponse.error_response (field 5) with a non-OK status: an error, not a
    denial: its status (else statusOnError), headers and body, `ext_authz_error`, counted as
    an error; with failOpen the request goes through."""
    status, headers, body = mesh.call("api", "/error/e")
    assert (status, headers["x-ami-reason"]) == (503, "ext_authz_error")
    assert headers["retry-after"] == "7" and body.decode() == ERROR_BODY
    assert not mesh.got("/error/e")
    _refused(mesh, "/error-plain/e")
    assert mesh.metric(mesh.api, "ami_ext_authz_checks_total", result="error") >= 2
    status, _, body = mesh.call("open", "/error/e-open")
    assert status == 200, body
    assert mesh.got("/error/e-open")


def test_a_call_refused_unprocessed_is_sent_again(mesh: WireMesh) -> None:
    """A GOAWAY whose last stream id is below the call's, or RST_STREAM REFUSED_STREAM: the
    provider never looked at it, so it is sent once more (after the GOAWAY, on a new
    connection) and its answer decides."""
    status, _, body = mesh.call("api", "/goaway-once/f")
    assert status == 200, body
    first, second = mesh.wire.checked("/goaway-once/f")
    assert second.connection > first.connection
    status, _, body = mesh.call("api", "/refused-once/f")
    assert status == 200, body
    assert len(mesh.wire.checked("/refused-once/f")) == 2
    assert mesh.got("/goaway-once/f") and mesh.got("/refused-once/f")


def test_a_call_sent_again_is_given_the_time_left_of_the_checks_deadline(
        mesh: WireMesh) -> None:
    """The first call's grpc-timeout is the provider's timeout (2s); one refused unprocessed
    after LATE seconds is sent again with what is left of the check's deadline (at most
    2s - LATE), as a gRPC client's retry is: the provider never works past the check."""
    status, _, body = mesh.call("api", "/refused-late-once/g")
    assert status == 200, body
    first, second = mesh.wire.checked("/refused-late-once/g")
    assert first.header("grpc-timeout") == "2000m"
    left = second.header("grpc-timeout") or ""
    assert left.endswith("m") and 0 < int(left[:-1]) <= 2000 - LATE * 1000, left


def test_a_client_leaving_mid_check_resets_the_call_and_keeps_the_connection(
        mesh: WireMesh) -> None:
    sock = socket.create_connection(mesh.outbound(), timeout=10)
    try:
        sock.sendall(b"GET /hang/g HTTP/1.1\r\nHost: api\r\n\r\n")
        wait_for(lambda: bool(mesh.wire.checked("/hang/g")), 10, "the check asked")
    finally:
        sock.close()
    wait_for(lambda: "/hang/g" in mesh.wire.resets, 10, "the abandoned call reset")
    status, _, body = mesh.call("api", "/split/g-after")
    assert status == 200, body
    [hung], [after] = mesh.wire.checked("/hang/g"), mesh.wire.checked("/split/g-after")
    assert after.connection == hung.connection
    assert not mesh.got("/hang/g")


def test_the_providers_connection_closing_between_checks(mesh: WireMesh) -> None:
    """The provider closes its connection after an answer: the next check opens another."""
    status, _, body = mesh.call("api", "/close-after/i")
    assert status == 200, body
    status, _, body = mesh.call("api", "/split/i-after")
    assert status == 200, body
    [closed], [after] = mesh.wire.checked("/close-after/i"), mesh.wire.checked("/split/i-after")
    assert after.connection > closed.connection


def test_the_timeout_refuses_and_resets_the_call(mesh: WireMesh) -> None:
    _refused(mesh, "/hang/h")
    wait_for(lambda: "/hang/h" in mesh.wire.resets, 10, "the timed-out call reset")


def test_checks_beyond_the_providers_stream_limit_open_another_connection(
        mesh: WireMesh) -> None:
    """The provider takes one stream per connection: checks that waited together for the
    first connection do not fail on it, they open others (as requests do)."""
    paths = [f"/n/{i}" for i in range(5)]
    with ThreadPoolExecutor(len(paths)) as pool:
        answers = list(pool.map(lambda p: mesh.call("narrow", p), paths))
    assert [a[0] for a in answers] == [200] * len(paths), [a[2] for a in answers]
    assert len({c.connection for c in mesh.narrow.calls}) >= 2
    assert all(mesh.got(p) for p in paths)
    assert json.loads(answers[0][2])["host"] == "narrow"


def test_a_provider_speaking_http1_only_fails_every_check(mesh: WireMesh) -> None:
    """gRPC needs HTTP/2: a mesh provider whose sidecar declares `--app-protocol http1`, and
    an outside host answering the HTTP/2 preface in HTTP/1.1, fail the check
    (ext_authz_error), the request never reaching the app."""
    for service, path in (("legacy", "/h1/mesh"), ("legacy-egress", "/h1/egress")):
        status, headers, body = mesh.call(service, path)
        assert (status, headers["x-ami-reason"]) == (403, "ext_authz_error"), body
        assert not mesh.got(path)
    assert not mesh.wire.checked("/h1/mesh")


@pytest.mark.parametrize(("seconds", "sent"), [
    (2.0, b"2000m"), (0.0001, b"1m"), (600.0, b"600000m"), (99_999.999, b"99999999m"),
    (100_000.0, b"100000S"), (10**9, b"16666666M"), (10**10, b"2777777H")])
def test_grpc_timeout_takes_at_most_eight_digits(seconds: float, sent: bytes) -> None:
    """gRPC's `grpc-timeout` is at most 8 digits and a unit: a long provider timeout moves
    to a coarser unit instead of sending a value providers reject."""
    from proxy.grpcauthz import grpc_timeout

    assert grpc_timeout(seconds) == sent
