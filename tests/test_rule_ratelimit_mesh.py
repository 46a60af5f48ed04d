"""A Route rule's rateLimit, enforced by the proxy that applies the rule, with real processes:
`meshctl serve`, a gateway (labels app=gateway), `web` and `api` apps behind their sidecars,
and a second caller sidecar `ops` (no app).

- Route web, rule `login` (POST /login, at the gateway only): 0.01 req/s, burst 3, perSource:
  each client address has 3 tokens; rule `stream` (/h2 at the gateway): one shared bucket of 2;
  the last rule is not limited.
- Route api, rule `limited` (/limited, every caller): burst 3, in each caller's sidecar.
- An AuthorizationPolicy at the gateway denies requests with `x-blocked: yes`.

No bucket refills within a test (one token per 100 s); the tests share the mesh, so each one
uses its own client address, path or caller.
"""

from __future__ import annotations

import asyncio
import http.client
import json
from collections.abc import Iterator

import pytest

from tests import meshbuilder
from tests.h2app import GRPC, H2Client
from tests.helpers_mesh import MeshProcess, http_json, wait_for
from tests.proxyharness import Backends, echo_app

pytestmark = pytest.mark.timeout(240)

LOGIN = {"requestsPerSecond": 0.01, "burst": 3, "perSource": True}


def web_route(login: dict[str, object] = LOGIN, rest: str = "") -> str:
    return f"""\
apiVersion: ami.mesh/v1alpha1
kind: Route
metadata: {{name: web}}
spec:
  host: web
  rules:
    - name: login
      matches: [{{path: {{exact: /login}}, method: POST, sourceLabels: {{app: gateway}}}}]
      backends: [{{}}]
      rateLimit: {json.dumps(login)}
    - name: stream
      matches: [{{path: {{prefix: /h2}}, sourceLabels: {{app: gateway}}}}]
      backends: [{{}}]
      rateLimit: {{requestsPerSecond: 0.01, burst: 2}}
    - name: rest
      backends: [{{}}]{rest}
"""


RESOURCES = """\
apiVersion: ami.mesh/v1alpha1
kind: Gateway
metadata: {name: edge}
spec:
  listen: 127.0.0.1:8080
  rules: [{destination: web}]
---
apiVersion: ami.mesh/v1alpha1
kind: AuthorizationPolicy
metadata: {name: gateway-blocks}
spec:
  selector: {service: gateway}
  action: DENY
  rules: [{when: [{header: x-blocked, values: ["yes"]}]}]
---
apiVersion: ami.mesh/v1alpha1
kind: Route
metadata: {name: api}
spec:
  host: api
  rules:
    - name: limited
      matches: [{path: {prefix: /limited}}]
      backends: [{}]
      rateLimit: {requestsPerSecond: 0.01, burst: 3}
    - backends: [{}]
---
""" + web_route()


class RuleMesh(meshbuilder.Mesh):
    gateway_proc: MeshProcess
    web: MeshProcess
    api: MeshProcess
    ops: MeshProcess

    @property
    def gateway_port(self) -> int:
        return int(self.gateway_proc.info["gateway"].rpartition(":")[2])

    def call(self, path: str, *, method: str = "POST", source: str = "127.0.0.1",
             via: MeshProcess | None = None, host: str = "web",
             headers: dict[str, str] | None = None) -> tuple[int, dict[str, str]]:
        """A request from ``source`` to the gateway (or through ``via``'s outbound)."""
        port = self.gateway_port if via is None else int(via.info["outbound"].rpartition(":")[2])
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10,
                                          source_address=(source, 0))
        try:
            conn.request(method, path, body=b"" if method == "POST" else None,
                         headers={"Host": host, **(headers or {})})
            resp = conn.getresponse()
            resp.read()
            return resp.status, {k.lower(): v for k, v in resp.getheaders()}
        finally:
            conn.close()

    def statuses(self, path: str, n: int, **kw: object) -> list[int]:
        return [self.call(path, **kw)[0] for _ in range(n)]  # type: ignore[arg-type]

    def drain(self, path: str, burst: int, **kw: object) -> None:
        """Spend what is left of a bucket (earlier tests may have spent some): at most
        ``burst`` requests pass, then one is refused."""
        for _ in range(burst + 1):
            if limited(self.call(path, **kw)):  # type: ignore[arg-type]
                return
        raise AssertionError(f"{path}: more than {burst} requests passed")

    def version(self, proc: MeshProcess) -> str:
        """The version of the snapshot ``proc`` runs (its admin /config_dump)."""
        status, dump = http_json(f"http://{proc.info['admin']}/config_dump")
        assert status == 200, dump
        return str(dump["version"])


@pytest.fixture(scope="module")
def mesh(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RuleMesh]:
    tmp = tmp_path_factory.mktemp("rule-rl")
    backends = Backends()
    with RuleMesh(tmp) as mesh:
        mesh.defer(backends.close)
        mesh.control_plane(RESOURCES, warmup=0.0)
        mesh.web = mesh.sidecar("web", app=f"127.0.0.1:{backends.aiohttp(echo_app())}")
        mesh.api = mesh.sidecar("api", app=f"127.0.0.1:{backends.aiohttp(echo_app())}")
        mesh.ops = mesh.sidecar("ops")
        mesh.gateway_proc = mesh.gateway("edge-gw",
                                         extra=["--labels", "app=gateway,version=v1"])
        mesh.wait_synced()
        wait_for(lambda: mesh.call("/ready", method="GET")[0] == 200, 20,
                 "web reachable through the gateway")
        wait_for(lambda: mesh.call("/", method="GET", via=mesh.web, host="api")[0] == 200, 20,
                 "api reachable from web")
        yield mesh


def limited(result: tuple[int, dict[str, str]]) -> bool:
    status, headers = result
    return (status == 429 and headers.get("x-ami-reason") == "rate_limited"
            and int(headers.get("retry-after", "0")) >= 1)


def test_each_gateway_client_has_its_own_bucket(mesh: RuleMesh) -> None:
    """perSource at the gateway: each client address gets 3 requests, then 429
    `rate_limited` with retry-after; another address still has its 3. Counted as the
    destination's limit is (`ami_rate_limited_total`, `response_flags`)."""
    before = mesh.metric(mesh.gateway_proc, "ami_rate_limited_total",
                         destination_service="web")
    assert mesh.statuses("/login", 3, source="127.0.0.2") == [200, 200, 200]
    assert limited(mesh.call("/login", source="127.0.0.2"))
    assert mesh.statuses("/login", 3, source="127.0.0.3") == [200, 200, 200]
    assert limited(mesh.call("/login", source="127.0.0.3"))
    assert limited(mesh.call("/login", source="127.0.0.2"))
    assert mesh.metric(mesh.gateway_proc, "ami_rate_limited_total",
                       destination_service="web") == before + 3
    assert mesh.metric(mesh.gateway_proc, "ami_requests_total",
                       response_flags="rate_limited") >= 3
    # the app's sidecar saw only the admitted ones; nothing limited it there
    assert mesh.metric(mesh.web, "ami_rate_limited_total") == 0


def test_requests_the_rule_does_not_match_are_not_limited(mesh: RuleMesh) -> None:
    """Another method or path of the drained client goes to the unlimited rule; the same
    route from a sidecar (not the gateway, whose labels the rule names) is not limited."""
    assert mesh.statuses("/login", 3, source="127.0.0.4") == [200, 200, 200]
    assert limited(mesh.call("/login", source="127.0.0.4"))
    assert mesh.statuses("/login", 5, source="127.0.0.4", method="GET") == [200] * 5
    assert mesh.statuses("/other", 5, source="127.0.0.4") == [200] * 5
    assert mesh.statuses("/login", 5, via=mesh.ops) == [200] * 5


def test_a_denied_request_spends_no_token(mesh: RuleMesh) -> None:
    """The gateway's authorization runs first: five 403s leave the client's 3 tokens."""
    denied = [mesh.call("/login", source="127.0.0.5", headers={"x-blocked": "yes"})
              for _ in range(5)]
    assert all((s, h.get("x-ami-reason")) == (403, "not_authorized") for s, h in denied)
    assert mesh.statuses("/login", 3, source="127.0.0.5") == [200, 200, 200]
    assert limited(mesh.call("/login", source="127.0.0.5"))


def test_a_mesh_rule_is_limited_in_each_callers_sidecar(mesh: RuleMesh) -> None:
    """api's rule applies in web's sidecar and in ops' alike, each with its own bucket (the
    caller's sidecar is the one proxy its app's requests cross); api's own sidecar never
    sees the refused requests."""
    served = mesh.metric(mesh.api, "ami_requests_total", reporter="destination")
    assert mesh.statuses("/limited", 3, via=mesh.web, host="api") == [200, 200, 200]
    assert limited(mesh.call("/limited", via=mesh.web, host="api"))
    assert mesh.statuses("/limited", 3, via=mesh.ops, host="api") == [200, 200, 200]
    assert limited(mesh.call("/limited", via=mesh.ops, host="api"))
    assert mesh.statuses("/open", 3, via=mesh.web, host="api", method="GET") == [200] * 3
    assert mesh.metric(mesh.web, "ami_rate_limited_total", destination_service="api") == 1
    assert mesh.metric(mesh.ops, "ami_rate_limited_total", destination_service="api") == 1
    assert mesh.metric(mesh.api, "ami_requests_total", reporter="destination") == served + 9


def test_http2_requests_and_grpc_calls_spend_the_same_tokens(mesh: RuleMesh) -> None:
    """h2c at the gateway: the rule's 2 tokens, then 429 `rate_limited` with retry-after;
    a gRPC call gets the gRPC answer of every local 429 (UNAVAILABLE, trailers-only)."""
    async def run() -> None:
        async with H2Client(mesh.gateway_port) as client:
            first = [await client.request("web", "/h2/a") for _ in range(2)]
            assert [r.status for r in first] == [200, 200]
            refused = await client.request("web", "/h2/b")
            assert (refused.status, refused.get("x-ami-reason")) == (429, "rate_limited")
            assert int(refused.get("retry-after") or "0") >= 1
            call = await client.request("web", "/h2/grpc", method="POST", headers=GRPC,
                                        body=b"\x00\x00\x00\x00\x00")
            assert call.status == 200 and call.get("grpc-status") == "14"
            assert call.get("x-ami-reason") == "rate_limited"

    asyncio.run(run())
    assert limited(mesh.call("/h2/c", method="GET"))  # one bucket for HTTP/1.1 and HTTP/2


def test_buckets_outlive_unrelated_pushes_and_a_changed_limit_refills(
        mesh: RuleMesh) -> None:
    """A push changing another rule of the same Route (and another resource) keeps the
    drained buckets; a changed limit starts full ones, at the new size."""
    assert mesh.statuses("/login", 3, source="127.0.0.6") == [200, 200, 200]
    assert limited(mesh.call("/login", source="127.0.0.6"))
    mesh.drain("/limited", 3, via=mesh.web, host="api")
    versions = mesh.version(mesh.gateway_proc), mesh.version(mesh.web)
    mesh.apply_synced(web_route(rest="\n      timeout: 30s"))
    # both proxies applied a new snapshot, with the rule's other rules changed
    assert mesh.version(mesh.gateway_proc) != versions[0]
    assert mesh.version(mesh.web) != versions[1]
    assert limited(mesh.call("/login", source="127.0.0.6"))
    assert limited(mesh.call("/limited", via=mesh.web, host="api"))
    mesh.apply_synced(web_route({**LOGIN, "burst": 4}, rest="\n      timeout: 30s"))
    assert mesh.statuses("/login", 4, source="127.0.0.6") == [200] * 4
    assert limited(mesh.call("/login", source="127.0.0.6"))
    assert mesh.statuses("/login", 4, source="127.0.0.2") == [200] * 4  # every client's
    assert limited(mesh.call("/limited", via=mesh.web, host="api"))  # api's rule: unchanged


def test_describe_service_shows_the_limit_with_the_rule(mesh: RuleMesh) -> None:
    """`meshctl describe service` lists a rule's rateLimit as it lists its other policies."""
    out = mesh.meshctl("describe", "service", "api")
    assert out.returncode == 0, out.stderr
    assert ('[limited] path prefix=/limited -> (all) 100% rateLimit={"requestsPerSecond": 0.01, '
            '"burst": 3}') in out.stdout, out.stdout


LIMITED_GATEWAY = """\
apiVersion: ami.mesh/v1alpha1
kind: Gateway
metadata: {name: ab-limits}
spec:
  rules:
    - hosts: [limited.example.com]
      backends: [{service: web}]
      rateLimit: {requestsPerSecond: 0.01, burst: 2}
"""
EARLIER_GATEWAY = """\
apiVersion: ami.mesh/v1alpha1
kind: Gateway
metadata: {name: aa-earlier}
spec:
  rules: [{hosts: [earlier.example.com], destination: web}]
"""


def test_an_unnamed_gateway_rules_bucket_outlives_another_gateways_rules(
        mesh: RuleMesh) -> None:
    """An unnamed rule written in a Gateway is its place in that Gateway: another Gateway
    whose rules come before it at the gateway proxy leaves its drained bucket drained."""
    try:
        mesh.apply_synced(LIMITED_GATEWAY)
        mesh.drain("/", 2, method="GET", host="limited.example.com")
        mesh.apply_synced(EARLIER_GATEWAY)
        wait_for(lambda: mesh.call("/", method="GET", host="earlier.example.com")[0] == 200,
                 20, "the earlier Gateway's rule")
        assert limited(mesh.call("/", method="GET", host="limited.example.com"))
    finally:
        mesh.meshctl("delete", "gateway", "aa-earlier")
        mesh.meshctl("delete", "gateway", "ab-limits")
