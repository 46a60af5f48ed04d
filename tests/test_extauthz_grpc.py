"""AuthorizationPolicy CUSTOM with envoyExtAuthzGrpc providers through real processes:
`meshctl serve`, sidecars, an app, and a real grpcio server implementing Envoy's
`envoy.service.auth.v3.Authorization/Check` (the generated stubs of proxy/authzproto),
behind its own sidecar (reached over mTLS) and as an ExternalService host (h2c egress).

Workloads (one app answers for all of them with what it got):
- `api`: provider `opa` (the mesh service `authz`, timeout 1s) for /allow/*, /deny/*,
  /plain/*, /slow/*, /error/*;
- `egress`: provider `opa-egress` (the same server as an ExternalService GRPC port);
- `lost`: provider `opa-gone` (an ExternalService port nothing listens on, statusOnError 503);
- `open`: provider `opa-open` (the same, failOpen).
The server decides by the path it is asked about: /allow/* OK (with header edits), /deny/*
PERMISSION_DENIED with a denied_response (401, headers, body), /plain/* PERMISSION_DENIED
alone, /slow/* answers after 5s, /error/* fails the call with UNAVAILABLE.
"""

from __future__ import annotations

import asyncio
import http.client
import json
import time
from collections.abc import Iterator
from typing import Any

import grpc
import pytest
from aiohttp import web

from proxy.authzproto import core_pb2, external_auth_pb2, external_auth_pb2_grpc
from proxy.authzproto.external_auth_pb2 import CheckRequest, CheckResponse
from tests import meshbuilder
from tests.grpcapp import serving_in_thread
from tests.h2app import h2_request
from tests.helpers_mesh import wait_for
from tests.ports import free_port
from tests.proxyharness import Backends
from tests.resources import document, documents, mesh_config

pytestmark = pytest.mark.timeout(240)

DENY_BODY = "denied by the test's gRPC authorization service\n"
PERMISSION_DENIED, UNAVAILABLE = 7, 14


def _option(name: str, value: str, append: bool | None = None) -> core_pb2.HeaderValueOption:
    option = core_pb2.HeaderValueOption(header=core_pb2.HeaderValue(key=name, value=value))
    if append is not None:
        option.append.value = append
    return option


class Authorizer(external_auth_pb2_grpc.AuthorizationServicer):
    """The provider: records each CheckRequest, answers by the checked request's path."""

    def __init__(self) -> None:
        self.checks: list[CheckRequest] = []
        self.server: grpc.aio.Server | None = None
        self.port = 0

    async def start(self) -> Authorizer:
        self.server = grpc.aio.server()
        external_auth_pb2_grpc.add_AuthorizationServicer_to_server(self, self.server)
        self.port = self.server.add_insecure_port("127.0.0.1:0")
        await self.server.start()
        return self

    async def stop(self) -> None:
        if self.server is not None:
            await self.server.stop(0)

    async def Check(self, request: CheckRequest,
                    context: grpc.aio.ServicerContext) -> CheckResponse:
        self.checks.append(request)
        path = request.attributes.request.http.path
        answer = CheckResponse()
        if path.startswith("/allow/"):
            ok = answer.ok_response
            ok.headers.extend([_option("x-ext-user", "alice"),  # set: replaces the client's
                               _option("x-ext-tag", "checked", append=True),
                               _option("x-ext-new", "fresh", append=False)])
            ok.headers_to_remove.append("x-remove-me")
            ok.response_headers_to_add.append(_option("x-ext-note", "seen"))
        elif path.startswith("/both/"):  # set (or appended) and removed: Envoy removes last
            ok = answer.ok_response
            ok.headers.extend([_option("x-both", "provider"),
                               _option("x-both-tag", "provider", append=True),
                               _option("x-kept-too", "provider")])
            ok.headers_to_remove.extend(["x-both", "X-Both-Tag"])
        elif path.startswith("/cookie/"):  # response headers: one appended, one set
            ok = answer.ok_response
            ok.headers.append(_option("cookie", "authz=1", append=True))  # the request's
            ok.response_headers_to_add.extend([_option("set-cookie", "session=p", append=True),
                                               _option("x-app-note", "provider")])
        elif path.startswith("/actions/"):  # append_action without `append`; raw_value
            absent, exists = core_pb2.HeaderValueOption.ADD_IF_ABSENT, \
                core_pb2.HeaderValueOption.OVERWRITE_IF_EXISTS
            ok = answer.ok_response
            for name, action in (("x-absent-new", absent), ("x-absent-there", absent),
                                 ("x-exists-new", exists), ("x-exists-there", exists),
                                 ("x-default", None), ("x-append-wins", absent)):
                option = _option(name, "provider",
                                 append=False if name == "x-append-wins" else None)
                if action is not None:
                    option.append_action = action
                ok.headers.append(option)
            raw = ok.headers.add()
            raw.header.key, raw.header.raw_value = "x-raw", b"raw-bytes"
        elif path.startswith("/tricky/"):  # edits of what is not the provider's to edit
            ok = answer.ok_response
            ok.headers.extend([_option("x-bad", "a\r\nx-injected: 1"),
                               _option(":path", "/admin"), _option("host", "evil"),
                               _option("content-length", "5"), _option("x-fine", "ok")])
            ok.headers_to_remove.extend(["host", ":authority", "transfer-encoding"])
            ok.response_headers_to_add.append(_option("content-length", "1"))
        elif path.startswith("/deny/"):
            answer.status.code = PERMISSION_DENIED
            denied = answer.denied_response
            denied.status.code = 401  # type: ignore[assignment]  # (an open enum)
            denied.headers.extend([_option("x-deny-why", "no-token"),
                                   _option("www-authenticate", 'Key realm="api"')])
            denied.body = DENY_BODY
        elif path.startswith("/plain/"):
            answer.status.code = PERMISSION_DENIED
        elif path.startswith("/slow/"):
            await asyncio.sleep(5)
        elif path.startswith("/error/"):
            await context.abort(grpc.StatusCode.UNAVAILABLE, "policy store down")
        return answer


def _grpc_provider(name: str, service: str, port: int, **fields: Any) -> dict[str, Any]:
    return {"name": name, "envoyExtAuthzGrpc": {"service": service, "port": port, **fields}}


def _custom(service: str, provider: str, rules: list[Any]) -> str:
    return document("AuthorizationPolicy", f"{service}-ext", {
        "selector": {"service": service}, "action": "CUSTOM", "provider": {"name": provider},
        "rules": rules})


def _external(name: str, host: str, port: int) -> str:
    return document("ExternalService", name, {
        "hosts": [host], "ports": [{"number": port, "protocol": "GRPC"}],
        "endpoints": [{"address": "127.0.0.1"}]})


class GrpcAuthzMesh(meshbuilder.Mesh):
    """api, egress, lost, open behind sidecars (one app), the gRPC authorizer behind its
    own; web calling them."""

    def build(self) -> GrpcAuthzMesh:
        self.authorizer = Authorizer()
        serving = serving_in_thread(self.authorizer)  # type: ignore[arg-type]
        serving.__enter__()
        self.defer(lambda: serving.__exit__(None, None, None))
        self.hub = Backends()
        self.defer(self.hub.close)
        self.seen: list[dict[str, Any]] = []  # what the app got
        app = self.hub.aiohttp(self._app())
        grpc_port, gone = self.authorizer.port, free_port()
        self.control_plane(documents(
            mesh_config("PERMISSIVE", accessLog=True, extensionProviders=[
                _grpc_provider("opa", "authz", 8000, timeout="1s"),
                _grpc_provider("opa-egress", "opa.partner.test", grpc_port),
                _grpc_provider("opa-gone", "gone.partner.test", gone, statusOnError="503"),
                _grpc_provider("opa-open", "gone.partner.test", gone, failOpen=True)]),
            _external("opa-partner", "opa.partner.test", grpc_port),
            _external("gone-partner", "gone.partner.test", gone),
            _custom("api", "opa", [{"to": [{"paths": [
                "/allow/*", "/deny/*", "/plain/*", "/slow/*", "/error/*", "/tricky/*",
                "/both/*", "/cookie/*", "/actions/*"]}]}]),
            _custom("egress", "opa-egress", [{}]),
            _custom("lost", "opa-gone", [{}]),
            _custom("open", "opa-open", [{}])), warmup=0.0)
        self.sidecar("authz", app=f"127.0.0.1:{grpc_port}")
        self.api = self.sidecar("api", app=f"127.0.0.1:{app}")
        for service in ("egress", "lost", "open"):
            self.sidecar(service, app=f"127.0.0.1:{app}")
        self.web = self.sidecar("web")
        self.wait_synced()
        wait_for(lambda: self.call("api", "/free/ready")[0] == 200, 20, "api reachable")
        return self

    def _app(self) -> web.Application:
        async def echo(request: web.Request) -> web.Response:
            self.seen.append({"host": request.host, "path": request.path,
                              "headers": [[k.lower(), v] for k, v in request.headers.items()]})
            response = web.json_response(self.seen[-1])
            if request.path.startswith("/cookie/"):
                response.headers["set-cookie"] = "app=1"
                response.headers["x-app-note"] = "app"
            return response

        app = web.Application()
        app.router.add_route("*", "/{tail:.*}", echo)
        return app

    def call(self, host: str, path: str, headers: list[tuple[str, str]] | None = None,
             ) -> tuple[int, http.client.HTTPMessage, bytes]:
        """A GET of web's app to ``host`` through web's sidecar: status, headers, body."""
        addr, _, port = self.web.info["outbound"].rpartition(":")
        conn = http.client.HTTPConnection(addr, int(port), timeout=20)
        try:
            conn.putrequest("GET", path, skip_host=True)
            conn.putheader("Host", host)
            for name, value in headers or ():
                conn.putheader(name, value)
            conn.endheaders()
            resp = conn.getresponse()
            return resp.status, resp.msg, resp.read()
        finally:
            conn.close()

    def checked(self, path: str) -> list[CheckRequest]:
        return [c for c in self.authorizer.checks if c.attributes.request.http.path == path]

    def got(self, path: str) -> list[dict[str, Any]]:
        return [s for s in self.seen if s["path"] == path]


@pytest.fixture(scope="module")
def mesh(tmp_path_factory: pytest.TempPathFactory) -> Iterator[GrpcAuthzMesh]:
    with GrpcAuthzMesh(tmp_path_factory.mktemp("extauthz-grpc")) as built:
        yield built.build()


def _values(seen: dict[str, Any], name: str) -> list[str]:
    return [v for k, v in seen["headers"] if k == name]


def test_allowed_request_carries_the_providers_header_edits(mesh: GrpcAuthzMesh) -> None:
    """Status OK: ok_response's headers are set on the request (a client's own value
    replaced), appended where `append` is true (to the client's value after a `,`, one
    header line, as Envoy's appendCopy sends it), headers_to_remove dropped; the client gets
    response_headers_to_add."""
    status, headers, body = mesh.call("api", "/allow/a?q=1", [
        ("x-ext-user", "forged"), ("x-ext-tag", "client"), ("x-remove-me", "secret"),
        ("x-kept", "yes")])
    assert status == 200, body
    seen = json.loads(body)
    assert _values(seen, "x-ext-user") == ["alice"]
    assert _values(seen, "x-ext-tag") == ["client,checked"]  # appended, not replaced
    assert _values(seen, "x-ext-new") == ["fresh"]
    assert _values(seen, "x-remove-me") == [] and _values(seen, "x-kept") == ["yes"]
    assert headers["x-ext-note"] == "seen"
    assert mesh.metric(mesh.api, "ami_ext_authz_checks_total", result="allowed") >= 1


def test_append_action_and_raw_value_as_envoy_reads_them(mesh: GrpcAuthzMesh) -> None:
    """Without `append`: ADD_IF_ABSENT adds only a header the client did not send,
    OVERWRITE_IF_EXISTS replaces only one it did, the default (APPEND_IF_EXISTS_OR_ADD) sets
    (Ami's reading, docs/security.md); `append` given wins over `append_action`; a header
    given as raw_value carries those bytes."""
    status, _, body = mesh.call("api", "/actions/m", [
        ("x-absent-there", "client"), ("x-exists-there", "client"), ("x-default", "client"),
        ("x-append-wins", "client")])
    assert status == 200, body
    seen = json.loads(body)
    assert _values(seen, "x-absent-new") == ["provider"]
    assert _values(seen, "x-absent-there") == ["client"]
    assert _values(seen, "x-exists-new") == []
    assert _values(seen, "x-exists-there") == ["provider"]
    assert _values(seen, "x-default") == ["provider"]
    assert _values(seen, "x-append-wins") == ["provider"]
    assert _values(seen, "x-raw") == ["raw-bytes"]


def test_a_header_both_set_and_removed_is_removed(mesh: GrpcAuthzMesh) -> None:
    """ok_response naming a header in `headers` and in `headers_to_remove` (any case): it
    reaches the app in neither form, as Envoy removes after it sets and appends."""
    status, _, body = mesh.call("api", "/both/k", [("x-both", "client"),
                                                   ("x-both-tag", "client")])
    assert status == 200, body
    seen = json.loads(body)
    assert _values(seen, "x-both") == [] and _values(seen, "x-both-tag") == []
    assert _values(seen, "x-kept-too") == ["provider"]


def test_response_headers_to_add_appends_or_sets_as_envoy(mesh: GrpcAuthzMesh) -> None:
    """response_headers_to_add: `append: true` adds beside the app's header (the app's
    cookie and the provider's both reach the client), else the provider's replaces it."""
    status, headers, body = mesh.call("api", "/cookie/l", [("cookie", "a=1")])
    assert status == 200, body
    # a request cookie appended: one `cookie` line, joined by `; ` as Envoy's appendCopy does
    assert _values(json.loads(body), "cookie") == ["a=1; authz=1"]
    assert sorted(headers.get_all("set-cookie") or []) == ["app=1", "session=p"]
    assert headers.get_all("x-app-note") == ["provider"]


def test_the_provider_cannot_edit_the_requests_target_framing_or_split_a_header(
        mesh: GrpcAuthzMesh) -> None:
    """ok_response edits of pseudo-headers, `host`, the framing, or a value with CR LF are
    dropped: the request reaches the app as it was sent, with the provider's other edits."""
    status, headers, body = mesh.call("api", "/tricky/k")
    assert status == 200, body
    seen = json.loads(body)
    assert (seen["path"], seen["host"]) == ("/tricky/k", "api")
    assert _values(seen, "x-fine") == ["ok"]
    assert not _values(seen, "x-bad") and not _values(seen, "x-injected")
    assert _values(seen, "content-length") in ([], ["0"])
    assert int(headers["content-length"]) == len(body)


def test_the_check_request_describes_the_request_and_its_caller(mesh: GrpcAuthzMesh) -> None:
    """The CheckRequest: method, path with query, host, scheme, protocol, size, the headers
    (lower-case, Envoy's pseudo-headers, repeated ones joined), the request id, the caller's
    SPIFFE id and address as the source, the sidecar's own SPIFFE id and address as the
    destination, the request's start time."""
    before = time.time()
    status, _, body = mesh.call("api", "/allow/b?x=2", [
        ("X-User", "bob"), ("x-multi", "1"), ("x-multi", "2")])
    after = time.time()
    assert status == 200, body
    [check] = mesh.checked("/allow/b?x=2")
    # when the request started, as Envoy's stream start time (the wall clock)
    assert before <= check.attributes.request.time.ToNanoseconds() / 1e9 <= after
    source = check.attributes.source
    assert source.principal.startswith("spiffe://") and source.principal.endswith("/sa/web")
    assert source.address.socket_address.address == "127.0.0.1"
    assert source.address.socket_address.port_value > 0
    destination = check.attributes.destination
    assert destination.address.socket_address.port_value == int(
        mesh.api.info["inbound"].rpartition(":")[2])
    # over mTLS, the checking sidecar's own SPIFFE id, as Envoy's (its certificate's URI SAN)
    assert destination.principal.startswith("spiffe://")
    assert destination.principal.endswith("/sa/api")
    request = check.attributes.request.http
    assert (request.method, request.host, request.scheme) == ("GET", "api", "http")
    assert request.protocol == "HTTP/1.1" and request.size == -1
    sent = dict(request.headers)
    assert sent["x-user"] == "bob" and sent["x-multi"] == "1,2"
    assert (sent[":authority"], sent[":method"], sent[":path"]) == ("api", "GET", "/allow/b?x=2")
    assert "host" not in sent and "x-ami-peer" not in sent
    assert request.id and sent["x-request-id"] == request.id
    seen = json.loads(body)
    assert _values(seen, "x-request-id") == [request.id]  # the id the app gets too
    # appended to nothing: not added, as Envoy appends only to a header the request has
    assert _values(seen, "x-ext-tag") == []


def test_denied_request_gets_the_providers_status_headers_and_body(
        mesh: GrpcAuthzMesh) -> None:
    """A non-OK status denies with denied_response: its status, headers and body, reason
    `ext_authz_denied`; the app sees nothing."""
    status, headers, body = mesh.call("api", "/deny/c")
    assert (status, headers["x-ami-reason"]) == (401, "ext_authz_denied")
    assert body.decode() == DENY_BODY
    assert headers["x-deny-why"] == "no-token"
    assert headers["www-authenticate"] == 'Key realm="api"'
    assert mesh.checked("/deny/c") and not mesh.got("/deny/c")
    assert mesh.metric(mesh.api, "ami_ext_authz_checks_total", result="denied") >= 1


def test_a_denial_without_denied_response_is_403(mesh: GrpcAuthzMesh) -> None:
    status, headers, _ = mesh.call("api", "/plain/d")
    assert (status, headers["x-ami-reason"]) == (403, "ext_authz_denied")
    assert mesh.checked("/plain/d") and not mesh.got("/plain/d")


def test_a_grpc_error_from_the_provider_is_an_error_not_a_denial(mesh: GrpcAuthzMesh) -> None:
    """The call failing (UNAVAILABLE from the provider) is no answer: statusOnError (403)."""
    status, headers, _ = mesh.call("api", "/error/e")
    assert (status, headers["x-ami-reason"]) == (403, "ext_authz_error")
    assert mesh.checked("/error/e") and not mesh.got("/error/e")
    assert mesh.metric(mesh.api, "ami_ext_authz_checks_total", result="error") >= 1


def test_provider_timeout_refuses_with_ext_authz_error(mesh: GrpcAuthzMesh) -> None:
    status, headers, _ = mesh.call("api", "/slow/f")
    assert (status, headers["x-ami-reason"]) == (403, "ext_authz_error")
    assert mesh.checked("/slow/f") and not mesh.got("/slow/f")


def test_request_no_custom_rule_selects_is_not_checked(mesh: GrpcAuthzMesh) -> None:
    status, _, body = mesh.call("api", "/free/g", [("x-ext-user", "client")])
    assert status == 200, body
    assert _values(json.loads(body), "x-ext-user") == ["client"]
    assert not mesh.checked("/free/g")


def test_http2_requests_are_checked_too(mesh: GrpcAuthzMesh) -> None:
    """HTTP/2 (h2c, plaintext: the mesh is PERMISSIVE) to api's inbound listener: the check
    says HTTP/2, and the edits and the denial apply as to HTTP/1.1."""
    port = int(mesh.api.info["inbound"].rpartition(":")[2])

    async def both() -> tuple[Any, Any]:
        allowed = await h2_request(port, "api", "/allow/h2")
        denied = await h2_request(port, "api", "/deny/h2")
        return allowed, denied

    allowed, denied = asyncio.run(both())
    assert allowed.status == 200, allowed.body
    assert _values(json.loads(allowed.body), "x-ext-user") == ["alice"]
    [check] = mesh.checked("/allow/h2")
    assert check.attributes.request.http.protocol == "HTTP/2"
    assert check.attributes.source.principal == ""  # plaintext: no peer identity
    assert check.attributes.destination.principal == ""  # (nor its own, as Envoy's)
    assert denied.status == 401 and denied.body.decode() == DENY_BODY
    assert (b"x-deny-why", b"no-token") in denied.headers
    assert not mesh.got("/deny/h2")


def test_provider_reached_as_egress(mesh: GrpcAuthzMesh) -> None:
    """An ExternalService GRPC port is asked as egress (h2c), as a mesh service would be."""
    status, _, body = mesh.call("egress", "/allow/h")
    assert status == 200, body
    assert _values(json.loads(body), "x-ext-user") == ["alice"]
    status, headers, _ = mesh.call("egress", "/deny/h")
    assert (status, headers["x-ami-reason"]) == (401, "ext_authz_denied")
    assert mesh.checked("/allow/h") and mesh.checked("/deny/h")


def test_provider_down_answers_status_on_error_or_fails_open(mesh: GrpcAuthzMesh) -> None:
    status, headers, _ = mesh.call("lost", "/allow/i")
    assert (status, headers["x-ami-reason"]) == (503, "ext_authz_error")
    assert not [s for s in mesh.seen if s["host"].startswith("lost")]
    status, _, body = mesh.call("open", "/allow/i")
    assert status == 200, body  # failOpen: through, unedited
    assert _values(json.loads(body), "x-ext-user") == []
    assert not mesh.checked("/allow/i")


def test_the_wire_format_matches_envoys_field_numbers() -> None:
    """The generated messages use Envoy's field numbers (external_auth.proto,
    attribute_context.proto, address.proto, base.proto): what a real provider reads."""
    fields = external_auth_pb2.AttributeContext.HttpRequest.DESCRIPTOR.fields_by_name
    assert {n: fields[n].number for n in ("id", "method", "headers", "path", "host",
                                          "scheme", "size", "protocol")} == {
        "id": 1, "method": 2, "headers": 3, "path": 4, "host": 5, "scheme": 6, "size": 9,
        "protocol": 10}
    context = external_auth_pb2.AttributeContext.DESCRIPTOR.fields_by_name
    assert (context["source"].number, context["destination"].number,
            context["request"].number, context["context_extensions"].number) == (1, 2, 4, 10)
    peer = external_auth_pb2.AttributeContext.Peer.DESCRIPTOR.fields_by_name
    assert (peer["address"].number, peer["principal"].number) == (1, 4)
    answer = CheckResponse.DESCRIPTOR.fields_by_name
    assert (answer["status"].number, answer["denied_response"].number,
            answer["ok_response"].number) == (1, 2, 3)
    ok = external_auth_pb2.OkHttpResponse.DESCRIPTOR.fields_by_name
    assert (ok["headers"].number, ok["headers_to_remove"].number,
            ok["response_headers_to_add"].number) == (2, 5, 6)
    socket = core_pb2.SocketAddress.DESCRIPTOR.fields_by_name
    assert (socket["address"].number, socket["port_value"].number) == (2, 3)
    assert CheckResponse.DESCRIPTOR.full_name == "envoy.service.auth.v3.CheckResponse"
    assert external_auth_pb2.DESCRIPTOR.services_by_name["Authorization"].full_name == \
        "envoy.service.auth.v3.Authorization"


def test_access_log_proxy_config_and_describe(mesh: GrpcAuthzMesh) -> None:
    """As for an HTTP provider: the access log's reason, `proxy-config` and `describe`."""
    mesh.call("api", "/deny/j")

    def logged() -> list[dict[str, Any]]:
        return [entry for line in mesh.api.whole_lines() if line.startswith("{")
                for entry in [json.loads(line)] if entry.get("path") == "/deny/j"]

    wait_for(lambda: bool(logged()), 10, "the denial logged")
    assert (logged()[0]["status"], logged()[0]["reason"]) == (401, "ext_authz_denied")
    mesh.wait_certified(30)  # (the control plane reads a sidecar's dump over mTLS)
    shown = mesh.meshctl("proxy-config", mesh.api.info["name"])
    assert shown.returncode == 0, shown.stderr
    assert "CUSTOM, checked by provider opa" in shown.stdout, shown.stdout
    described = mesh.meshctl("describe", "service", "api")
    assert described.returncode == 0, described.stderr
    assert "CUSTOM (opa)" in described.stdout, described.stdout
