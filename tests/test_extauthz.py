"""AuthorizationPolicy CUSTOM through real processes: `meshctl serve`, sidecars, an app and a
real HTTP authorization service (an aiohttp app in this module, behind its own sidecar, and
the same app reached as an ExternalService host).

Workloads (one app answers for all of them with what it got):
- `api`: CUSTOM provider `authz` (the mesh service) for /allow/*, /deny/*, /slow/*, /both/*;
  a DENY policy for /both/* and /deny/*;
- `open`: CUSTOM provider `authz-egress` (ExternalService host, failOpen, short timeout);
- `lost`: CUSTOM provider `authz-gone` (an ExternalService whose port nothing listens on,
  statusOnError 503);
- the gateway (to api): CUSTOM provider `authz` for /gw/*.
The authorization service decides by the path it is asked (pathPrefix /check + the request's):
/check/allow/* and /check/both/* 200, /check/deny/* 401, /check/slow/* never answers,
/check/broken/* 503.
"""

from __future__ import annotations

import asyncio
import http.client
import json
import socket
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import jwt
import pytest
import yaml
from aiohttp import web
from cryptography.hazmat.primitives.asymmetric import rsa
from jwt.algorithms import RSAAlgorithm

from tests import meshbuilder
from tests.h2app import h2_request
from tests.helpers_mesh import wait_for
from tests.ports import free_port
from tests.proxyharness import Backends, eventually, get, roundtrip
from tests.resources import document, documents, mesh_config
from tests.test_mtls_static import mesh_ca, mint, start_proxy

pytestmark = pytest.mark.timeout(240)

DENY_BODY = b"denied by the test's authorization service\n"


def providers(egress_port: int, gone_port: int) -> list[dict[str, Any]]:
    return [
        {"name": "authz", "envoyExtAuthzHttp": {
            "service": "authz", "port": 8000, "timeout": "2s", "pathPrefix": "/check",
            "includeRequestHeadersInCheck": ["x-user", "x-fwd-*"],
            "includeAdditionalHeadersInCheck": {"x-asked-by": "api-sidecar"},
            "headersToUpstreamOnAllow": ["x-ext-user"],
            "headersToDownstreamOnAllow": ["x-ext-note"],
            "headersToDownstreamOnDeny": ["x-deny-why"]}},
        {"name": "authz-egress", "envoyExtAuthzHttp": {
            "service": "authz.partner.test", "port": egress_port, "timeout": "500ms",
            "pathPrefix": "/check", "failOpen": True,
            "headersToUpstreamOnAllow": ["x-ext-user"]}},
        {"name": "authz-gone", "envoyExtAuthzHttp": {
            "service": "gone.partner.test", "port": gone_port, "statusOnError": 503}},
    ]


def custom(name: str, service: str, provider: str, rules: list[Any]) -> str:
    return document("AuthorizationPolicy", name, {
        "selector": {"service": service}, "action": "CUSTOM", "provider": {"name": provider},
        "rules": rules})


def external(name: str, host: str, port: int) -> str:
    return document("ExternalService", name, {
        "hosts": [host], "ports": [{"number": port, "protocol": "HTTP"}],
        "endpoints": [{"address": "127.0.0.1"}]})


PATHS = ["/allow/*", "/deny/*", "/slow/*", "/both/*", "/broken/*"]


class AuthzMesh(meshbuilder.Mesh):
    """api, open and lost behind sidecars (one app), the authz service behind its own, web
    calling them."""

    def build(self) -> AuthzMesh:
        self.hub = Backends()
        self.defer(self.hub.close)
        self.checks: list[dict[str, Any]] = []  # what the authorization service was asked
        self.seen: list[dict[str, Any]] = []  # what the app got
        authz = self.hub.aiohttp(self._authz_app())
        app = self.hub.aiohttp(self._app())
        gone = free_port()  # nothing listens there
        self.control_plane(documents(
            mesh_config("PERMISSIVE", extensionProviders=providers(authz, gone)),
            external("authz-partner", "authz.partner.test", authz),
            external("gone-partner", "gone.partner.test", gone),
            custom("api-ext", "api", "authz", [{"to": [{"paths": PATHS}]}]),
            document("AuthorizationPolicy", "api-deny", {
                "selector": {"service": "api"}, "action": "DENY",
                "rules": [{"to": [{"paths": ["/both/*", "/deny/*"]}]}]}),
            custom("open-ext", "open", "authz-egress", [{}]),
            custom("lost-ext", "lost", "authz-gone", [{}]),
            document("Gateway", "edge", {"listen": "127.0.0.1:8080",
                                         "rules": [{"destination": "api"}]}),
            custom("gateway-ext", "gateway", "authz",
                   [{"to": [{"paths": ["/gw/*"]}]}])), warmup=0.0)
        self.sidecar("authz", app=f"127.0.0.1:{authz}")
        self.api = self.sidecar("api", app=f"127.0.0.1:{app}")
        self.sidecar("open", app=f"127.0.0.1:{app}")
        self.sidecar("lost", app=f"127.0.0.1:{app}")
        self.web = self.sidecar("web")
        self.edge = self.gateway("edge-gw")
        self.wait_synced()
        wait_for(lambda: self.call("api", "/free/ready")[0] == 200, 20, "api reachable")
        return self

    def _authz_app(self) -> web.Application:
        async def check(request: web.Request) -> web.StreamResponse:
            self.checks.append({"method": request.method, "path": request.path_qs,
                                "headers": {k.lower(): v for k, v in request.headers.items()},
                                "body": await request.read()})
            path = request.path
            if path.startswith(("/check/allow/", "/check/both/", "/check/gw/allow/")):
                return web.Response(text="ok", headers={
                    "x-ext-user": "alice", "x-ext-note": "checked", "x-ext-secret": "kept"})
            if path.startswith(("/check/deny/", "/check/gw/deny/")):
                return web.Response(status=401, body=DENY_BODY, content_type="text/x-deny",
                                    headers={"x-deny-why": "no-token", "x-ext-secret": "kept",
                                             "www-authenticate": 'Key realm="api"'})
            if path.startswith("/check/slow/"):
                await asyncio.sleep(60)
            if path.startswith("/check/broken/"):
                return web.Response(status=503, text="authz is broken")
            return web.Response(text="ok")

        app = web.Application()
        app.router.add_route("*", "/{tail:.*}", check)
        return app

    def _app(self) -> web.Application:
        async def echo(request: web.Request) -> web.Response:
            body = await request.read()
            self.seen.append({"host": request.host, "path": request.path,
                              "headers": {k.lower(): v for k, v in request.headers.items()},
                              "length": len(body)})
            return web.json_response(self.seen[-1])

        app = web.Application()
        app.router.add_route("*", "/{tail:.*}", echo)
        return app

    def call(self, host: str, path: str, headers: dict[str, str] | None = None,
             method: str = "GET", body: bytes | None = None, via: str = "outbound",
             ) -> tuple[int, dict[str, str], bytes]:
        """A request of web's app to ``host`` through web's sidecar (``via="gateway"``: a
        client's through the gateway): status, headers, body."""
        addr, _, port = (self.edge.info["gateway"] if via == "gateway"
                         else self.web.info["outbound"]).rpartition(":")
        conn = http.client.HTTPConnection(addr, int(port), timeout=20)
        try:
            conn.request(method, path, body=body, headers={"Host": host, **(headers or {})})
            resp = conn.getresponse()
            return resp.status, {k.lower(): v for k, v in resp.getheaders()}, resp.read()
        finally:
            conn.close()

    def checked(self, path: str) -> list[dict[str, Any]]:
        return [c for c in self.checks if c["path"].endswith(path)]

    def got(self, path: str) -> list[dict[str, Any]]:
        return [s for s in self.seen if s["path"] == path]


@pytest.fixture(scope="module")
def mesh(tmp_path_factory: pytest.TempPathFactory) -> Iterator[AuthzMesh]:
    with AuthzMesh(tmp_path_factory.mktemp("extauthz")) as built:
        yield built.build()


def test_allowed_request_reaches_the_app_with_the_providers_header(mesh: AuthzMesh) -> None:
    """A 200 from the provider: the app gets the request with headersToUpstreamOnAllow set
    (a client's own value replaced), the client headersToDownstreamOnAllow; the check had
    the method, pathPrefix + path and query, the allowed headers and no body."""
    status, headers, body = mesh.call("api", "/allow/a?q=1", {
        "x-user": "bob", "x-fwd-for": "me", "x-private": "secret", "x-ext-user": "forged",
        "authorization": "Bearer t0ken"})
    assert status == 200, body
    seen = json.loads(body)
    assert seen["headers"]["x-ext-user"] == "alice"  # the provider's, not the client's
    assert "x-ext-secret" not in seen["headers"]  # not in headersToUpstreamOnAllow
    assert headers["x-ext-note"] == "checked"
    assert "x-ext-secret" not in headers
    [check] = mesh.checked("/allow/a?q=1")
    assert check["method"] == "GET" and check["path"] == "/check/allow/a?q=1"
    sent = check["headers"]
    assert sent["x-user"] == "bob" and sent["x-fwd-for"] == "me"  # included, by a pattern
    assert sent["authorization"] == "Bearer t0ken"  # always sent (as Envoy)
    assert sent["x-asked-by"] == "api-sidecar"  # includeAdditionalHeadersInCheck
    assert sent["host"] == "api" and sent["content-length"] == "0"
    assert "x-private" not in sent and "x-ext-user" not in sent
    assert check["body"] == b""
    assert mesh.metric(mesh.api, "ami_ext_authz_checks_total", result="allowed") >= 1


def test_denied_request_gets_the_providers_answer_and_never_reaches_the_app(
        mesh: AuthzMesh) -> None:
    """Any other status denies: the client gets the provider's status, body and
    headersToDownstreamOnDeny headers, with `x-ami-reason: ext_authz_denied`; the app sees
    nothing (CUSTOM comes before the DENY policy that also matches /deny/*)."""
    status, headers, body = mesh.call("api", "/deny/a")
    assert (status, headers.get("x-ami-reason")) == (401, "ext_authz_denied")
    assert body == DENY_BODY
    assert headers["x-deny-why"] == "no-token"
    assert headers["www-authenticate"] == 'Key realm="api"'  # passed on with any list
    assert "x-ext-secret" not in headers and "text/x-deny" not in headers["content-type"]
    assert mesh.checked("/deny/a") and not mesh.got("/deny/a")
    assert mesh.metric(mesh.api, "ami_requests_total", response_flags="ext_authz_denied") >= 1


def test_a_denial_passes_every_header_without_headers_to_downstream_on_deny(
        mesh: AuthzMesh) -> None:
    """authz-egress sets no headersToDownstreamOnDeny: the client gets all the answer's
    headers, its content-type the provider's (one, not the proxy's text/plain too)."""
    addr, _, port = mesh.web.info["outbound"].rpartition(":")
    conn = http.client.HTTPConnection(addr, int(port), timeout=20)
    try:
        conn.request("GET", "/deny/all", headers={"Host": "open"})
        resp = conn.getresponse()
        assert (resp.status, resp.getheader("x-ami-reason")) == (401, "ext_authz_denied")
        assert resp.msg.get_all("content-type") == ["text/x-deny"]
        assert resp.getheader("x-ext-secret") == "kept"
        assert resp.getheader("x-deny-why") == "no-token"
        assert resp.read() == DENY_BODY
    finally:
        conn.close()


def test_request_no_custom_rule_selects_is_not_checked(mesh: AuthzMesh) -> None:
    status, _, body = mesh.call("api", "/free/b")
    assert status == 200, body
    assert "x-ext-user" not in json.loads(body)["headers"]
    assert not mesh.checked("/free/b")


def test_custom_then_deny(mesh: AuthzMesh) -> None:
    """The provider allows /both/*, the DENY policy then refuses it: asked first, refused
    after (Istio's order: CUSTOM, DENY, ALLOW)."""
    status, headers, _ = mesh.call("api", "/both/c")
    assert (status, headers.get("x-ami-reason")) == (403, "not_authorized")
    assert len(mesh.checked("/both/c")) == 1 and not mesh.got("/both/c")


def test_provider_timeout_refuses_with_ext_authz_error(mesh: AuthzMesh) -> None:
    status, headers, _ = mesh.call("api", "/slow/d")
    assert (status, headers.get("x-ami-reason")) == (403, "ext_authz_error")
    assert mesh.checked("/slow/d") and not mesh.got("/slow/d")
    assert mesh.metric(mesh.api, "ami_ext_authz_checks_total", result="error") >= 1


def test_a_5xx_from_the_provider_is_an_error_not_a_denial(mesh: AuthzMesh) -> None:
    """As Envoy's: a 5xx answer means the provider failed: statusOnError (or failOpen),
    not the provider's 503 passed on."""
    status, headers, body = mesh.call("api", "/broken/f")
    assert (status, headers.get("x-ami-reason")) == (403, "ext_authz_error"), body
    assert mesh.checked("/broken/f") and not mesh.got("/broken/f")
    assert mesh.call("open", "/broken/f")[0] == 200  # failOpen
    assert mesh.checked("/broken/f")[-1]["headers"]["host"] == "open"


def test_the_gateway_checks_the_requests_its_custom_policy_selects(mesh: AuthzMesh) -> None:
    """A CUSTOM policy selecting the gateway's service applies at its listener: the gateway
    asks the provider (a mesh service: over mTLS) before the request enters the mesh."""
    wait_for(lambda: mesh.call("api", "/free/gw", via="gateway")[0] == 200, 20,
             "the gateway routes to api")
    status, headers, body = mesh.call("api", "/gw/allow/x", via="gateway")
    assert status == 200, body  # the provider allowed /gw/allow/x (not an api CUSTOM path)
    assert json.loads(body)["headers"]["x-ext-user"] == "alice"
    assert mesh.checked("/gw/allow/x")
    status, headers, body = mesh.call("api", "/gw/deny/y", via="gateway")
    assert (status, headers.get("x-ami-reason"), body) == (401, "ext_authz_denied", DENY_BODY)
    assert not mesh.got("/gw/deny/y")
    assert not mesh.checked("/free/gw")


def test_unreachable_provider_answers_status_on_error(mesh: AuthzMesh) -> None:
    status, headers, _ = mesh.call("lost", "/any")
    assert (status, headers.get("x-ami-reason")) == (503, "ext_authz_error")
    assert not [s for s in mesh.seen if s["host"].startswith("lost")]


def test_fail_open_provider_reached_as_egress(mesh: AuthzMesh) -> None:
    """An ExternalService provider is asked as egress; failOpen lets a request through when
    the provider does not answer in its timeout."""
    status, _, body = mesh.call("open", "/allow/e")
    assert status == 200, body
    assert json.loads(body)["headers"]["x-ext-user"] == "alice"
    assert mesh.checked("/allow/e")
    status, _, body = mesh.call("open", "/slow/e")
    assert status == 200, body
    assert mesh.checked("/slow/e") and "x-ext-user" not in json.loads(body)["headers"]


def test_request_body_waits_for_the_decision(mesh: AuthzMesh) -> None:
    """A body larger than what is held before the client is paused reaches the app whole
    once the provider allowed; the provider got none of it."""
    payload = bytes(range(256)) * 1024  # 256 KiB
    status, _, body = mesh.call("api", "/allow/upload", method="POST", body=payload)
    assert status == 200, body
    assert json.loads(body)["length"] == len(payload)
    [check] = mesh.checked("/allow/upload")
    assert check["method"] == "POST" and check["body"] == b""


def test_http2_requests_are_checked_too(mesh: AuthzMesh) -> None:
    """HTTP/2 (h2c, plaintext: the mesh is PERMISSIVE) to api's inbound listener."""
    port = int(mesh.api.info["inbound"].rpartition(":")[2])

    async def both() -> tuple[Any, Any]:
        allowed = await h2_request(port, "api", "/allow/h2")
        denied = await h2_request(port, "api", "/deny/h2")
        return allowed, denied

    allowed, denied = asyncio.run(both())
    assert allowed.status == 200, allowed.body
    assert json.loads(allowed.body)["headers"]["x-ext-user"] == "alice"
    assert denied.status == 401 and denied.body == DENY_BODY
    assert (b"x-ami-reason", b"ext_authz_denied") in denied.headers
    assert (b"x-deny-why", b"no-token") in denied.headers
    assert not mesh.got("/deny/h2")


def test_client_leaving_during_the_check_leaves_the_proxy_serving(mesh: AuthzMesh) -> None:
    """A client that goes away while its check waits cancels it; the proxy goes on."""
    addr, _, port = mesh.web.info["outbound"].rpartition(":")
    before = len(mesh.checked("/slow/gone"))
    with socket.create_connection((addr, int(port)), timeout=10) as sock:
        sock.sendall(b"GET /slow/gone HTTP/1.1\r\nHost: api\r\n\r\n")
        wait_for(lambda: len(mesh.checked("/slow/gone")) > before, 20, "the check asked")
    assert mesh.call("api", "/allow/after")[0] == 200


def test_proxy_config_and_describe_show_the_custom_policy(mesh: AuthzMesh) -> None:
    mesh.wait_certified(30)  # (the control plane reads a sidecar's dump over mTLS)
    shown = mesh.meshctl("proxy-config", mesh.api.info["name"])
    assert shown.returncode == 0, shown.stderr
    assert "CUSTOM, checked by provider authz" in shown.stdout, shown.stdout
    described = mesh.meshctl("describe", "service", "api")
    assert described.returncode == 0, described.stderr
    assert "CUSTOM (authz)" in described.stdout, described.stdout


def test_apply_refuses_an_unknown_provider_and_a_second_one_for_a_workload(
        mesh: AuthzMesh) -> None:
    for doc, expected in [
        (custom("api-typo", "api", "authx", [{}]), "unknown provider 'authx'"),
        (custom("api-other", "api", "authz-gone", [{}]),
         "service api already has a CUSTOM policy with provider 'authz'"),
    ]:
        path = mesh.tmp / "refused.yaml"
        path.write_text(doc)
        done = mesh.meshctl("apply", "-f", str(path))
        assert done.returncode != 0 and expected in done.stderr + done.stdout, (
            done.stdout, done.stderr)
    # nothing changed: api is still checked by authz
    assert mesh.call("api", "/deny/after-refusals")[0] == 401


def test_get_lists_the_custom_policy_with_its_provider(mesh: AuthzMesh) -> None:
    listed = mesh.meshctl("get", "authorizationpolicies")
    assert listed.returncode == 0, listed.stderr
    row = next(line for line in listed.stdout.splitlines() if line.startswith("api-ext"))
    assert "CUSTOM (authz)" in row, listed.stdout


async def test_a_static_config_naming_an_unknown_provider_fails_closed(
        tmp_path: Path, echo: int) -> None:
    """The control plane refuses a CUSTOM policy naming no provider; a static config can
    still say so: the requests its rules select are refused (403 ext_authz_error), others
    pass, rather than going unchecked."""
    ca = mesh_ca(tmp_path / "ca")
    port = free_port()
    proxy = start_proxy(tmp_path / "api", mint(ca, "api"), {
        "node": {"service": "api"}, "app": f"127.0.0.1:{echo}",
        "mesh": {"mtls": "PERMISSIVE"}, "inbound": {"authorization": [
            {"action": "CUSTOM", "provider": {"name": "nowhere"},
             "rules": [{"to": [{"paths": ["/guarded/*"]}]}]}]}}, inbound=port)
    try:
        refused = await roundtrip(port, get("api", "/guarded/x"))
        assert (refused.status, refused.header("x-ami-reason")) == (403, "ext_authz_error")
        assert (await roundtrip(port, get("api", "/open"))).status == 200
    finally:
        proxy.stop()


# --- a static sidecar and a raw provider: what the provider's answer can do ----------------
def static_custom(app: int, provider: int, **http: Any) -> dict[str, Any]:
    """A static config: `api` (app on `app`) whose CUSTOM policy asks, for every request,
    the ExternalService host authz.test on `provider` (pathPrefix /check)."""
    return {
        "node": {"service": "api"}, "app": f"127.0.0.1:{app}", "mesh": {"mtls": "PERMISSIVE"},
        "external": {"authz.test": {"ports": [{"number": provider, "protocol": "HTTP"}],
                                    "endpoints": ["127.0.0.1"]}},
        "inbound": {
            "authorization": [{"action": "CUSTOM", "provider": {"name": "raw"},
                               "rules": [{}]}],
            "extAuthz": [{"name": "raw", "envoyExtAuthzHttp": {
                "service": "authz.test", "port": provider, "pathPrefix": "/check",
                "timeout": "2s", **http}}]}}


async def raw_answer(answer: bytes, reader: asyncio.StreamReader,
                     writer: asyncio.StreamWriter) -> None:
    """Read one check (a head, no body) and write ``answer`` for it."""
    await reader.readuntil(b"\r\n\r\n")
    writer.write(answer)
    await writer.drain()


async def test_a_provider_answer_of_many_small_chunks_is_read_in_linear_time(
        tmp_path: Path, echo: int, backends: Backends) -> None:
    """An answer body in many tiny chunks (under the 64 KiB bound) is counted as it comes,
    not summed again at every chunk: the proxy answers at once and keeps serving."""
    chunks = b"1\r\nx\r\n" * 60000
    provider = backends.raw(lambda _b, r, w: raw_answer(
        b"HTTP/1.1 403 Forbidden\r\ntransfer-encoding: chunked\r\n\r\n" + chunks
        + b"0\r\n\r\n", r, w))
    ca = mesh_ca(tmp_path / "ca")
    port = free_port()
    proxy = start_proxy(tmp_path / "api", mint(ca, "api"),
                        static_custom(echo, provider.port), inbound=port)
    try:
        loop = asyncio.get_running_loop()
        began = loop.time()
        denied = await roundtrip(port, get("api", "/x"))
        took = loop.time() - began
        assert (denied.status, denied.header("x-ami-reason")) == (403, "ext_authz_denied")
        assert denied.body == b"x" * 60000
        assert took < 3, f"the answer took {took:.1f}s"
    finally:
        proxy.stop()


async def test_a_clients_underscore_spelling_of_an_upstream_header_is_replaced_too(
        tmp_path: Path, echo: int, backends: Backends) -> None:
    """headersToUpstreamOnAllow replaces the client's header of that name in every spelling
    an app may read as it (`x_ext_user` is HTTP_X_EXT_USER to WSGI, as `x-ext-user`): a
    client cannot forge the provider's header by writing `_` for `-`."""
    provider = backends.raw(lambda _b, r, w: raw_answer(
        b"HTTP/1.1 200 OK\r\nx-ext-user: alice\r\ncontent-length: 0\r\n\r\n", r, w))
    ca = mesh_ca(tmp_path / "ca")
    port = free_port()
    proxy = start_proxy(tmp_path / "api", mint(ca, "api"), static_custom(
        echo, provider.port, headersToUpstreamOnAllow=["x-ext-user"]), inbound=port)
    try:
        resp = await roundtrip(port, get("api", "/x", "x_ext_user: mallory\r\n"
                                                     "X_Ext-User: eve\r\n"))
        assert resp.status == 200, resp.body
        seen = {k.lower(): v for k, v in json.loads(resp.body)["headers"]}
        assert seen.get("x-ext-user") == "alice"
        assert not {"x_ext_user", "x_ext-user"} & set(seen), seen
    finally:
        proxy.stop()


async def test_the_jwt_is_verified_before_the_check_and_custom_rules_read_it(
        tmp_path: Path, echo: int, backends: Backends) -> None:
    """As Envoy's jwt_authn filter runs before ext_authz: a token that does not verify is
    refused (401) without asking the provider, even on a path it always checks; a CUSTOM
    rule naming a claim checks only the requests whose verified token carries it; the
    provider gets the request as the app will, without the token the sidecar removes
    (forwardOriginalToken unset); and the ALLOW after the check still reads its principal."""
    asked: list[bytes] = []

    async def provider_allows(_b: Any, reader: asyncio.StreamReader,
                              writer: asyncio.StreamWriter) -> None:
        asked.append(await reader.readuntil(b"\r\n\r\n"))
        writer.write(b"HTTP/1.1 200 OK\r\nconnection: close\r\ncontent-length: 0\r\n\r\n")
        await writer.drain()

    provider = backends.raw(provider_allows)
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    jwk = json.loads(RSAAlgorithm.to_jwk(key.public_key())) | {"kid": "k1"}
    config = static_custom(echo, provider.port)
    config["inbound"]["authentication"] = [
        {"jwtRules": [{"issuer": "https://idp.test", "jwks": json.dumps({"keys": [jwk]})}]}]
    config["inbound"]["authorization"] = [{
        "action": "CUSTOM", "provider": {"name": "raw"},
        "rules": [{"to": [{"paths": ["/always/*"]}]},
                  {"when": [{"claim": "role", "values": ["admin"]}]}]},
        # after the check, the ALLOW still knows the principal of the (removed) token
        {"action": "ALLOW", "rules": [{"from": [{"requestPrincipals": ["https://idp.test/*"]}]}]}]

    def bearer(role: str) -> str:
        token = jwt.encode({"iss": "https://idp.test", "sub": "alice", "role": role,
                            "exp": int(time.time()) + 600}, key, algorithm="RS256",
                           headers={"kid": "k1"})
        return f"Authorization: Bearer {token}\r\n"

    port = free_port()
    proxy = start_proxy(tmp_path / "api", mint(mesh_ca(tmp_path / "ca"), "api"), config,
                        inbound=port)
    try:
        forged = await roundtrip(port, get("api", "/always/x",
                                           "Authorization: Bearer not.a.jwt\r\n"))
        assert (forged.status, forged.header("x-ami-reason")) == (401, "jwt_invalid")
        assert asked == []
        admin = await roundtrip(port, get("api", "/admin", bearer("admin")))
        assert admin.status == 200, admin.body
        assert len(asked) == 1 and asked[0].startswith(b"GET /check/admin ")
        assert b"authorization:" not in asked[0].lower()
        assert (await roundtrip(port, get("api", "/user", bearer("user")))).status == 200
        anonymous = await roundtrip(port, get("api", "/anonymous"))
        assert (anonymous.status, anonymous.header("x-ami-reason")) == (403, "not_authorized")
        assert len(asked) == 1  # neither carried the claim: not checked
    finally:
        proxy.stop()


async def test_a_static_config_with_two_providers_for_a_workload_fails_closed(
        tmp_path: Path, echo: int, backends: Backends) -> None:
    """One provider per workload (the control plane refuses a second); a static config may
    still name two: the requests either's rules select are refused (403 ext_authz_error,
    as Istio denies), not the second's let through unchecked."""
    provider = backends.raw(lambda _b, r, w: raw_answer(
        b"HTTP/1.1 200 OK\r\ncontent-length: 0\r\n\r\n", r, w))
    config = static_custom(echo, provider.port)
    inbound = config["inbound"]
    inbound["authorization"] = [
        {"action": "CUSTOM", "provider": {"name": "raw"},
         "rules": [{"to": [{"paths": ["/one/*"]}]}]},
        {"action": "CUSTOM", "provider": {"name": "other"},
         "rules": [{"to": [{"paths": ["/two/*"]}]}]}]
    inbound["extAuthz"].append({"name": "other", "envoyExtAuthzHttp": {
        "service": "authz.test", "port": provider.port, "pathPrefix": "/other"}})
    ca = mesh_ca(tmp_path / "ca")
    port = free_port()
    proxy = start_proxy(tmp_path / "api", mint(ca, "api"), config, inbound=port)
    try:
        for path in ("/one/x", "/two/x"):
            refused = await roundtrip(port, get("api", path))
            assert (refused.status, refused.header("x-ami-reason")) == (
                403, "ext_authz_error"), (path, refused.body)
        assert (await roundtrip(port, get("api", "/open"))).status == 200
        assert "two or more providers" in proxy.stderr()
    finally:
        proxy.stop()


async def test_at_a_proxy_protocol_gateway_custom_ip_blocks_judge_the_balancer(
        tmp_path: Path, echo: int, backends: Backends) -> None:
    """Behind `--proxy-protocol`, `ipBlocks` judge the connection's own peer (the balancer)
    and `remoteIpBlocks` the client the header names, for CUSTOM rules as for DENY and
    ALLOW: a CUSTOM rule for everything that came through the balancers (on loopback here)
    checks a request whatever client the header names, instead of letting it through."""
    from proxy.proxyprotocol import v1
    from tests.proxyharness import ProxyProcess
    from tests.test_gateway_proxy_protocol import send

    provider = backends.raw(lambda _b, r, w: raw_answer(
        b"HTTP/1.1 401 Unauthorized\r\ncontent-length: 0\r\n\r\n", r, w))
    proc = ProxyProcess(tmp_path, {"echo": [echo]}, args=("--mode", "gateway",
                                                          "--proxy-protocol"))
    port = proc.listen_as_gateway([{"destination": "echo"}])
    config = yaml.safe_load(proc.config.read_text())
    custom = static_custom(echo, provider.port)
    config["external"] = custom["external"]
    config["inbound"] = {
        "authorization": [
            {"selector": {"service": "client"}, "action": "CUSTOM",
             "provider": {"name": "raw"},
             "rules": [{"from": [{"ipBlocks": ["127.0.0.0/8"]}]}]},
            {"selector": {"service": "client"}, "action": "CUSTOM",
             "provider": {"name": "raw"},
             "rules": [{"from": [{"remoteIpBlocks": ["203.0.113.0/24"]}]}]}],
        "extAuthz": custom["inbound"]["extAuthz"]}
    proc.config.write_text(yaml.safe_dump(config))
    proc.start()
    try:
        for client in ("198.51.100.9", "203.0.113.5"):
            denied = await send(port, v1(client, 1, "192.0.2.1", 2) + get("echo", "/a"))
            assert (denied.status, denied.header("x-ami-reason")) == (
                401, "ext_authz_denied"), (client, denied.status, denied.body)
    finally:
        proc.stop()


async def test_a_check_ended_early_closes_its_connection_to_the_provider(
        tmp_path: Path, echo: int, backends: Backends) -> None:
    """A provider that never answers: the check's connection is closed when the client
    leaves, and when the provider's timeout refuses the request; not left open to it."""
    ended: list[str] = []

    async def silent(_b: Any, reader: asyncio.StreamReader, _w: Any) -> None:
        head = await reader.readuntil(b"\r\n\r\n")
        path = head.split(b" ", 2)[1].decode()
        if await reader.read() == b"":  # nothing more comes; EOF when the proxy closes
            ended.append(path)

    provider = backends.raw(silent)
    ca = mesh_ca(tmp_path / "ca")
    port = free_port()
    proxy = start_proxy(tmp_path / "api", mint(ca, "api"),
                        static_custom(echo, provider.port, timeout="1s"), inbound=port)
    try:
        _, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(get("api", "/leaving"))
        await eventually(lambda: provider.accepted >= 1, what="the check asked")
        writer.close()
        await eventually(lambda: "/check/leaving" in ended, 5, what="the check closed")
        refused = await roundtrip(port, get("api", "/waiting"))
        assert (refused.status, refused.header("x-ami-reason")) == (403, "ext_authz_error")
        await eventually(lambda: "/check/waiting" in ended, 5, what="the timed-out check")
    finally:
        proxy.stop()


async def test_an_answer_whose_body_ends_at_close_is_an_answer(
        tmp_path: Path, echo: int, backends: Backends) -> None:
    """An answer without Content-Length or chunking (an HTTP/1.0 server's, Python's
    http.server: its body ends when the connection does) is complete at the close, as any
    response is: allowed (with its headers) or denied (with its body), not an error."""
    async def http10(_b: Any, reader: asyncio.StreamReader, writer: Any) -> None:
        head = await reader.readuntil(b"\r\n\r\n")
        if b" /check/deny" in head:
            writer.write(b"HTTP/1.0 401 Unauthorized\r\nx-why: no key\r\n\r\nno key here\n")
        else:
            writer.write(b"HTTP/1.0 200 OK\r\nx-ext-user: alice\r\n\r\n")
        await writer.drain()

    provider = backends.raw(http10)
    ca = mesh_ca(tmp_path / "ca")
    port = free_port()
    proxy = start_proxy(tmp_path / "api", mint(ca, "api"), static_custom(
        echo, provider.port, headersToUpstreamOnAllow=["x-ext-user"]), inbound=port)
    try:
        allowed = await roundtrip(port, get("api", "/allow"))
        assert allowed.status == 200, allowed.body
        seen = {k.lower(): v for k, v in json.loads(allowed.body)["headers"]}
        assert seen["x-ext-user"] == "alice"
        denied = await roundtrip(port, get("api", "/deny"))
        assert (denied.status, denied.header("x-ami-reason"), denied.header("x-why"),
                denied.body) == (401, "ext_authz_denied", "no key", b"no key here\n")
    finally:
        proxy.stop()


async def test_the_check_carries_the_forwarding_headers_it_names_as_the_app_gets_them(
        tmp_path: Path, echo: int, backends: Backends) -> None:
    """x-forwarded-for (the client's own and this hop's), x-forwarded-proto and
    x-request-id are the proxy's to write (as Envoy's connection manager writes them before
    its filters run): a check naming them gets them as the app does, not none of them."""
    asked: list[dict[str, str]] = []

    async def record(_b: Any, reader: asyncio.StreamReader, writer: Any) -> None:
        head = (await reader.readuntil(b"\r\n\r\n")).decode("latin-1").split("\r\n")
        asked.append({k.strip().lower(): v.strip() for k, _, v in
                      (line.partition(":") for line in head[1:] if line)})
        writer.write(b"HTTP/1.1 200 OK\r\ncontent-length: 0\r\n\r\n")
        await writer.drain()

    provider = backends.raw(record)
    ca = mesh_ca(tmp_path / "ca")
    port = free_port()
    proxy = start_proxy(tmp_path / "api", mint(ca, "api"), static_custom(
        echo, provider.port,
        includeRequestHeadersInCheck=["x-forwarded-*", "x-request-id"]), inbound=port)
    try:
        resp = await roundtrip(port, get("api", "/x", "x-forwarded-for: 198.51.100.7\r\n"
                                                     "x-forwarded-proto: https\r\n"))
        assert resp.status == 200, resp.body
        app = {k.lower(): v for k, v in json.loads(resp.body)["headers"]}
        [check] = asked
        for name in ("x-forwarded-for", "x-forwarded-proto", "x-request-id"):
            assert check.get(name) == app[name], (name, check, app)
        assert check["x-forwarded-for"].startswith("198.51.100.7, ")
    finally:
        proxy.stop()


async def test_a_kept_alive_connection_the_provider_closed_is_not_an_error(
        tmp_path: Path, echo: int, backends: Backends) -> None:
    """A provider that closes an idle kept-alive connection as the next check is written on
    it (a keep-alive timeout meeting the check, or a server closing after each answer
    without saying so) answers nothing there: the check (no body: safe to send again) is
    asked once more on a new connection, not refused as ext_authz_error."""
    async def one_per_connection(_b: Any, reader: asyncio.StreamReader, writer: Any) -> None:
        await reader.readuntil(b"\r\n\r\n")
        writer.write(b"HTTP/1.1 200 OK\r\ncontent-length: 0\r\n\r\n")
        await writer.drain()
        await reader.readuntil(b"\r\n\r\n")  # the next check on it: closed unanswered

    provider = backends.raw(one_per_connection)
    ca = mesh_ca(tmp_path / "ca")
    port = free_port()
    proxy = start_proxy(tmp_path / "api", mint(ca, "api"),
                        static_custom(echo, provider.port), inbound=port)
    try:
        for path in ("/first", "/second", "/third"):
            resp = await roundtrip(port, get("api", path))
            assert resp.status == 200, (path, resp.body)
    finally:
        proxy.stop()


async def test_the_body_waits_paused_until_the_decision_then_arrives_whole(
        tmp_path: Path, backends: Backends) -> None:
    """While the provider has not answered, the app gets nothing of the request and the
    client is no longer read past the 64 KiB held (its writes back up: 32 MiB do not fit in
    the socket buffers); once allowed, every byte reaches the app, in order."""
    decide = asyncio.Event()
    body = bytes(range(256)) * (32 * 4096)  # 32 MiB

    async def waiting(_b: Any, reader: asyncio.StreamReader, writer: Any) -> None:
        await reader.readuntil(b"\r\n\r\n")
        await decide.wait()
        writer.write(b"HTTP/1.1 200 OK\r\ncontent-length: 0\r\n\r\n")
        await writer.drain()

    async def counting(backend: Any, reader: asyncio.StreamReader, writer: Any) -> None:
        from tests.proxyharness import read_request

        request = await read_request(reader)
        assert request is not None
        ok = request.body == body
        writer.write(b"HTTP/1.1 200 OK\r\ncontent-length: 1\r\n\r\n" + (b"y" if ok else b"n"))
        await writer.drain()

    provider = backends.raw(waiting)
    app = backends.raw(counting)
    ca = mesh_ca(tmp_path / "ca")
    port = free_port()
    proxy = start_proxy(tmp_path / "api", mint(ca, "api"),
                        static_custom(app.port, provider.port, timeout="60s"), inbound=port)
    try:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(get("api", "/upload", body=body, method="POST"))
        await eventually(lambda: provider.accepted == 1, what="the check asked")
        with pytest.raises(TimeoutError):  # paused: the client's writes back up
            await asyncio.wait_for(writer.drain(), 2)
        assert app.accepted == 0  # nothing of it reached the app
        backends.loop.call_soon_threadsafe(decide.set)
        await asyncio.wait_for(writer.drain(), 30)
        from tests.proxyharness import read_response

        resp = await asyncio.wait_for(read_response(reader), 30)
        assert (resp.status, resp.body) == (200, b"y")
        writer.close()
    finally:
        proxy.stop()
