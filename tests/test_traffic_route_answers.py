"""Route rules that answer themselves or match as Istio's do, with real processes: `meshctl
serve`, a gateway (Gateway edge -> web), `web` (an echo app) behind its sidecar and a caller
sidecar `ops` (no app), and `greeter` (a grpcio server) behind its sidecar.

- Route web: `stub` answers 503 with a JSON body of its own (its response edits set the
  content-type), `added` 200 with one whose edits add it, `bytes` answers 200 with a
  base64-declared body; other requests reach web.
- Route web, rule `beta` (withoutHeaders): /beta requests answer `beta` unless they carry
  `x-stable` (any value) or `x-user: bob`.
- Route web, rules `case` and `api` (ignoreUriCase): /Case/... and /EXACT answer `case` in
  any case; /api/... in any case is sent to web as /v2/... (the prefix matched is replaced).
- Route greeter: requests with `x-fault: unavailable` are aborted with grpcStatus UNAVAILABLE,
  those with `x-fault: exhausted` with grpcStatus 8 (RESOURCE_EXHAUSTED); others reach greeter.
"""

from __future__ import annotations

import asyncio
import http.client
import json
from collections.abc import Iterator

import grpc
import pytest

from tests import meshbuilder
from tests.grpcapp import EchoServer, channel, method, serving_in_thread
from tests.h2app import GRPC, H2Client
from tests.helpers_mesh import MeshProcess, wait_for
from tests.proxyharness import Backends, echo_app

pytestmark = pytest.mark.timeout(240)

STUB = b'{"error": "down for maintenance"}'

RESOURCES = """\
apiVersion: ami.mesh/v1alpha1
kind: Gateway
metadata: {name: edge}
spec:
  listen: 127.0.0.1:8080
  rules: [{destination: web}]
---
apiVersion: ami.mesh/v1alpha1
kind: Route
metadata: {name: web}
spec:
  host: web
  rules:
    - name: stub
      matches: [{path: {exact: /stub}}]
      directResponse: {status: 503, body: {string: 'STUB'}}
      headers: {response: {set: {content-type: application/json}, add: {x-stub: "yes"}}}
    - name: bytes
      matches: [{path: {exact: /bytes}}]
      directResponse: {status: 200, body: {bytes: "AAEC/w=="}}
    - name: added
      matches: [{path: {exact: /added}}]
      directResponse: {status: 200, body: {string: '{}'}}
      headers: {response: {add: {content-type: application/json}}}
    - name: gone
      matches: [{path: {exact: /gone}}]
      directResponse: {status: 204}
    - name: reset
      matches: [{path: {exact: /reset}}]
      directResponse: {status: 205}
    - name: reset-fault
      matches: [{path: {exact: /reset-fault}}]
      backends: [{}]
      fault: {abort: {httpStatus: 205}}
    - name: beta
      matches: [{path: {prefix: /beta},
                 withoutHeaders: {x-stable: {present: true}, X-User: {exact: bob}}}]
      directResponse: {status: 200, body: {string: beta}}
    - name: case
      matches: [{path: {prefix: /Case/}, ignoreUriCase: true},
                {path: {exact: /EXACT}, ignoreUriCase: true}]
      directResponse: {status: 200, body: {string: case}}
    - name: api
      matches: [{path: {prefix: /api/}, ignoreUriCase: true}]
      rewrite: {uri: /v2/}
      backends: [{}]
    - backends: [{}]
---
apiVersion: ami.mesh/v1alpha1
kind: Route
metadata: {name: greeter}
spec:
  host: greeter
  rules:
    - name: unavailable
      matches: [{headers: {x-fault: {exact: unavailable}}}]
      backends: [{}]
      fault: {abort: {grpcStatus: UNAVAILABLE}}
    - name: exhausted
      matches: [{headers: {x-fault: {exact: exhausted}}}]
      backends: [{}]
      fault: {abort: {grpcStatus: 8}}
    - backends: [{}]
""".replace("STUB", STUB.decode())


class AnswerMesh(meshbuilder.Mesh):
    gateway_proc: MeshProcess
    web: MeshProcess
    ops: MeshProcess
    greeter: EchoServer

    @property
    def ops_port(self) -> int:
        return int(self.ops.info["outbound"].rpartition(":")[2])

    @property
    def gateway_port(self) -> int:
        return int(self.gateway_proc.info["gateway"].rpartition(":")[2])

    def call(self, path: str, *, method: str = "GET", via: MeshProcess | None = None,
             host: str = "web", headers: dict[str, str] | None = None
             ) -> tuple[int, dict[str, str], bytes]:
        """An HTTP/1.1 request to the gateway (or through ``via``'s outbound listener)."""
        port = self.gateway_port if via is None else int(via.info["outbound"].rpartition(":")[2])
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
        try:
            conn.request(method, path, headers={"Host": host, **(headers or {})})
            resp = conn.getresponse()
            body = resp.read()
            return resp.status, {k.lower(): v for k, v in resp.getheaders()}, body
        finally:
            conn.close()


@pytest.fixture(scope="module")
def mesh(tmp_path_factory: pytest.TempPathFactory) -> Iterator[AnswerMesh]:
    tmp = tmp_path_factory.mktemp("answers")
    backends = Backends()
    with AnswerMesh(tmp) as mesh:
        mesh.defer(backends.close)
        mesh.greeter = EchoServer("greeter")
        serving = serving_in_thread(mesh.greeter)
        serving.__enter__()
        mesh.defer(lambda: serving.__exit__(None, None, None))
        mesh.control_plane(RESOURCES, warmup=0.0)
        mesh.web = mesh.sidecar("web", app=f"127.0.0.1:{backends.aiohttp(echo_app())}")
        mesh.ops = mesh.sidecar("ops")
        mesh.sidecar("greeter", app=f"127.0.0.1:{mesh.greeter.port}")
        mesh.gateway_proc = mesh.gateway("edge-gw")
        mesh.wait_synced()
        wait_for(lambda: mesh.call("/ready")[0] == 200, 20, "web reachable through the gateway")
        wait_for(lambda: mesh.call("/ready", via=mesh.ops)[0] == 200, 20, "web from ops")
        yield mesh


# --- directResponse -------------------------------------------------------------------------
def test_direct_response_answers_at_the_gateway_and_in_a_sidecar(mesh: AnswerMesh) -> None:
    """The rule's status and body, with its response edits (content-type set, a header
    added), `x-ami-reason: direct_response`; web never sees the request; other paths reach
    web. Counted with response_flags=direct_response."""
    served = mesh.metric(mesh.web, "ami_requests_total", reporter="destination")
    before = mesh.metric(mesh.gateway_proc, "ami_requests_total",
                         response_flags="direct_response", response_code="503")
    for via in (None, mesh.ops):
        status, headers, body = mesh.call("/stub", via=via)
        assert (status, body) == (503, STUB), (via, status, body)
        assert headers["content-type"] == "application/json"
        assert headers["content-length"] == str(len(STUB))
        assert headers["x-stub"] == "yes"
        assert headers["x-ami-reason"] == "direct_response"
        status, headers, body = mesh.call("/bytes", via=via, method="POST")
        assert (status, body) == (200, b"\x00\x01\x02\xff")
        assert headers["content-type"].startswith("text/plain")
    assert mesh.metric(mesh.web, "ami_requests_total", reporter="destination") == served
    assert mesh.metric(mesh.gateway_proc, "ami_requests_total",
                       response_flags="direct_response", response_code="503") == before + 1
    assert mesh.metric(mesh.ops, "ami_requests_total", response_flags="direct_response",
                       response_code="200") >= 1
    status, _, body = mesh.call("/stubs")
    assert status == 200 and json.loads(body)["path"] == "/stubs"


def test_a_content_type_the_rule_adds_replaces_the_default(mesh: AnswerMesh) -> None:
    """`headers.response.add: {content-type: ...}` gives the answer that one content-type,
    not text/plain besides it (Envoy sets its default only when the route's edits gave
    none), over HTTP/1.1 and HTTP/2."""
    conn = http.client.HTTPConnection("127.0.0.1", mesh.gateway_port, timeout=10)
    try:
        conn.request("GET", "/added", headers={"Host": "web"})
        resp = conn.getresponse()
        assert (resp.status, resp.read()) == (200, b"{}")
        assert resp.msg.get_all("content-type") == ["application/json"]
    finally:
        conn.close()

    async def run() -> None:
        async with H2Client(mesh.gateway_port) as client:
            answer = await client.request("web", "/added")
            assert [v for n, v in answer.headers if n == b"content-type"] == [
                b"application/json"], answer.headers

    asyncio.run(run())


def test_direct_response_to_head_has_no_body(mesh: AnswerMesh) -> None:
    """HEAD gets the status and the length of the body it would have had, and no body; the
    connection stays usable (the next request on it is answered)."""
    conn = http.client.HTTPConnection("127.0.0.1", mesh.gateway_port, timeout=10)
    try:
        conn.request("HEAD", "/stub", headers={"Host": "web"})
        resp = conn.getresponse()
        assert (resp.status, resp.read()) == (503, b"")
        assert resp.getheader("content-length") == str(len(STUB))
        conn.request("GET", "/bytes", headers={"Host": "web"})
        resp = conn.getresponse()
        assert (resp.status, resp.read()) == (200, b"\x00\x01\x02\xff")
    finally:
        conn.close()


def test_a_204_direct_response_has_no_body_nor_length(mesh: AnswerMesh) -> None:
    """A 204 is sent without content-length (RFC 9110 forbids one) or body, over HTTP/1.1
    (the keep-alive connection's next answer is intact) and HTTP/2 (its HEADERS end the
    stream)."""
    conn = http.client.HTTPConnection("127.0.0.1", mesh.gateway_port, timeout=10)
    try:
        conn.request("GET", "/gone", headers={"Host": "web"})
        resp = conn.getresponse()
        assert (resp.status, resp.read(), resp.getheader("content-length")) == (204, b"", None)
        conn.request("GET", "/bytes", headers={"Host": "web"})
        resp = conn.getresponse()
        assert (resp.status, resp.read()) == (200, b"\x00\x01\x02\xff")
    finally:
        conn.close()

    async def run() -> None:
        async with H2Client(mesh.gateway_port) as client:
            gone = await client.request("web", "/gone")
            assert (gone.status, gone.body, gone.get("content-length")) == (204, b"", None)

    asyncio.run(run())


def test_a_205_has_no_body_and_a_length_of_zero(mesh: AnswerMesh) -> None:
    """205 Reset Content has no content (RFC 9110 15.3.6; browsers read none after one): a
    directResponse's and a fault abort's (not the reason's line) say `content-length: 0`, and
    the keep-alive connection's next answer is intact; over HTTP/2 too."""
    conn = http.client.HTTPConnection("127.0.0.1", mesh.gateway_port, timeout=10)
    try:
        for path in ("/reset", "/reset-fault"):
            conn.request("GET", path, headers={"Host": "web"})
            resp = conn.getresponse()
            assert (resp.status, resp.read(), resp.getheader("content-length")) == (
                205, b"", "0"), path
        conn.request("GET", "/bytes", headers={"Host": "web"})
        resp = conn.getresponse()
        assert (resp.status, resp.read()) == (200, b"\x00\x01\x02\xff")
    finally:
        conn.close()

    async def run() -> None:
        async with H2Client(mesh.gateway_port) as client:
            for path in ("/reset", "/reset-fault"):
                answer = await client.request("web", path)
                assert (answer.status, answer.body) == (205, b""), path

    asyncio.run(run())


def test_direct_response_over_http2_and_to_a_grpc_call(mesh: AnswerMesh) -> None:
    """h2c at the gateway: the same answer as HTTP/1.1 (HEAD without DATA); a gRPC call gets
    a trailers-only answer with the gRPC status of 503 (UNAVAILABLE) and the body as its
    grpc-message."""
    async def run() -> None:
        async with H2Client(mesh.gateway_port) as client:
            answer = await client.request("web", "/stub")
            assert (answer.status, answer.body) == (503, STUB)
            assert answer.get("content-type") == "application/json"
            assert answer.get("x-ami-reason") == "direct_response"
            head = await client.request("web", "/stub", method="HEAD")
            assert (head.status, head.body) == (503, b"")
            binary = await client.request("web", "/bytes")
            assert (binary.status, binary.body) == (200, b"\x00\x01\x02\xff")
            call = await client.request("web", "/stub", method="POST", headers=GRPC,
                                        body=b"\x00\x00\x00\x00\x00")
            assert (call.status, call.get("grpc-status")) == (200, "14")
            assert call.get("content-type") == "application/grpc"
            assert "down for maintenance" in (call.get("grpc-message") or "")

    asyncio.run(run())


def test_describe_and_proxy_config_show_the_direct_response(mesh: AnswerMesh) -> None:
    """`meshctl describe service` lists the rule's directResponse; `proxy-config routes`
    shows it as the rule's action."""
    out = mesh.meshctl("describe", "service", "web")
    assert out.returncode == 0, out.stderr
    assert '[stub] path exact=/stub -> directResponse={"status": 503' in out.stdout, out.stdout
    out = mesh.meshctl("proxy-config", "routes", mesh.ops.info["name"])
    assert out.returncode == 0, out.stderr
    assert "directResponse 503" in out.stdout, out.stdout


# --- fault.abort.grpcStatus -----------------------------------------------------------------
async def _unary(port: int, fault: str | None) -> bytes | grpc.StatusCode:
    """A grpcio Unary call to greeter through ``port`` (with ``x-fault``): its answer, or the
    status it failed with."""
    async with channel(port, "greeter") as ch:
        try:
            return bytes(await method(ch, "Unary")(
                b"hi", timeout=10, metadata=(("x-fault", fault),) if fault else None))
        except grpc.aio.AioRpcError as err:
            return err.code()


def test_grpc_abort_fails_the_call_with_its_status(mesh: AnswerMesh) -> None:
    """A real gRPC client (grpcio) through ops' sidecar: the call with `x-fault` fails with
    the declared status, by name (UNAVAILABLE) or number (8, RESOURCE_EXHAUSTED), and never
    reaches greeter; a call without it is answered by greeter. Counted as an abort."""
    calls = mesh.greeter.calls
    before = mesh.metric(mesh.ops, "ami_faults_injected_total", kind="abort")
    assert asyncio.run(_unary(mesh.ops_port, "unavailable")) == grpc.StatusCode.UNAVAILABLE
    assert asyncio.run(_unary(mesh.ops_port, "exhausted")) == \
        grpc.StatusCode.RESOURCE_EXHAUSTED
    assert mesh.greeter.calls == calls
    assert mesh.metric(mesh.ops, "ami_faults_injected_total", kind="abort") == before + 2
    answer = asyncio.run(_unary(mesh.ops_port, None))
    assert isinstance(answer, bytes) and json.loads(answer)["server"] == "greeter"


def test_grpc_abort_is_a_trailers_only_answer(mesh: AnswerMesh) -> None:
    """On the wire (h2c): HTTP 200, application/grpc, grpc-status in the one header block
    that ends the stream, no DATA; a request that is no gRPC call (no gRPC content-type) gets
    the code's HTTP status instead (UNAVAILABLE: 503, RESOURCE_EXHAUSTED: 429), as does an
    HTTP/1.1 request."""
    async def run() -> None:
        async with H2Client(mesh.ops_port) as client:
            call = await client.request("greeter", "/ami.test.Echo/Unary", method="POST",
                                        headers=[*GRPC, ("x-fault", "unavailable")],
                                        body=b"\x00\x00\x00\x00\x00")
            assert (call.status, call.get("content-type")) == (200, "application/grpc")
            assert call.get("grpc-status") == "14" and call.trailers is None
            assert call.body == b"" and call.get("x-ami-reason") == "fault_injected"
            plain = await client.request("greeter", "/", headers=[("x-fault", "exhausted")])
            assert (plain.status, plain.get("grpc-status")) == (429, None)

    asyncio.run(run())
    status, headers, _ = mesh.call("/", via=mesh.ops, host="greeter",
                                   headers={"x-fault": "unavailable"})
    assert (status, headers["x-ami-reason"]) == (503, "fault_injected")


# --- match withoutHeaders -------------------------------------------------------------------
def test_without_headers_matches_only_requests_none_of_whose_matchers_hold(
        mesh: AnswerMesh) -> None:
    """At the gateway and in a sidecar: /beta without the headers is the rule's; with
    `x-stable` (even empty) or `x-user: bob` it goes on to the next rule (web's echo);
    `x-user: alice` is still the rule's."""
    def body(via: MeshProcess | None, headers: dict[str, str]) -> bytes:
        status, _, answer = mesh.call("/beta/x", via=via, headers=headers)
        assert status == 200
        return answer

    for via in (None, mesh.ops):
        assert body(via, {}) == b"beta"
        assert body(via, {"x-user": "alice"}) == b"beta"
        assert json.loads(body(via, {"x-stable": ""}))["path"] == "/beta/x"
        assert json.loads(body(via, {"X-User": "bob"}))["path"] == "/beta/x"


def test_describe_and_proxy_config_show_without_headers(mesh: AnswerMesh) -> None:
    """`meshctl describe service` lists the block's withoutHeaders; `proxy-config routes`
    shows them as `without header` conditions."""
    out = mesh.meshctl("describe", "service", "web")
    assert out.returncode == 0, out.stderr
    assert ("[beta] path prefix=/beta, withoutHeaders x-stable present=True, "
            "withoutHeaders X-User exact=bob -> directResponse=") in out.stdout, out.stdout
    out = mesh.meshctl("proxy-config", "routes", mesh.ops.info["name"])
    assert out.returncode == 0, out.stderr
    beta = next(line for line in out.stdout.splitlines() if " beta " in line)
    assert "path prefix /beta & without header " in beta, out.stdout
    assert "without header x-stable present" in beta and "without header x-user exact bob" \
        in beta, out.stdout


# --- match ignoreUriCase --------------------------------------------------------------------
def test_ignore_uri_case_matches_exact_and_prefix_paths_in_any_case(mesh: AnswerMesh) -> None:
    """At the gateway and in a sidecar: /case/, /CASE/ and /exact are the rule's; a path that
    differs by more than case is not; a block without ignoreUriCase stays case-sensitive
    (/BETA/x is web's, not `beta`'s)."""
    for via in (None, mesh.ops):
        for path in ("/Case/a", "/case/a", "/CASE/A", "/EXACT", "/exact", "/Exact"):
            assert mesh.call(path, via=via)[2] == b"case", (via, path)
        for path in ("/case", "/exact/", "/cases/a", "/BETA/x"):
            status, _, body = mesh.call(path, via=via)
            assert status == 200 and json.loads(body)["path"] == path, (via, path)


def test_a_rewrite_replaces_the_prefix_matched_in_any_case(mesh: AnswerMesh) -> None:
    """`rewrite.uri` replaces the prefix a case-insensitive block matched, whatever its case
    in the request; the rest keeps its own."""
    for path, sent in (("/api/Items/1", "/v2/Items/1"), ("/API/x", "/v2/x"),
                       ("/Api/", "/v2/")):
        status, _, body = mesh.call(path, via=mesh.ops)
        assert status == 200 and json.loads(body)["path"] == sent, (path, body)


def test_proxy_config_shows_a_case_insensitive_path(mesh: AnswerMesh) -> None:
    """`proxy-config routes` marks the path `(any case)`; describe lists ignoreUriCase."""
    out = mesh.meshctl("proxy-config", "routes", mesh.ops.info["name"])
    assert out.returncode == 0, out.stderr
    assert "path prefix /Case/ (any case) or path exact /EXACT (any case)" in out.stdout, \
        out.stdout
    out = mesh.meshctl("describe", "service", "web")
    assert "[case] path prefix=/Case/, ignoreUriCase=True | " in out.stdout, out.stdout
