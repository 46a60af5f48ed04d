"""Cookie affinity (consistentHash.httpCookie) with real processes: `meshctl serve`, a gateway,
a caller sidecar `shop` (no app) and apps behind their sidecars, each answering its own name.

- `web` (w1, w2, w3; w2 and w3 labelled track=canary): `sticky` cookie, Path=/, ttl 1h. Its
  subset `canary` has a cookie of its own, `canary` with ttl 0s (a session cookie); the Route
  sends requests with `x-canary: 1` there.
- `cart` (c1, c2): `pinned` cookie without a ttl, so the proxy never sets it.
- `flaky` (f1 answering 503, f2): `sticky` cookie with a ttl, requests retried on 5xx.

The test that adds and removes an endpoint of web (w4) runs last in the module.
"""

from __future__ import annotations

import asyncio
import http.client
from collections.abc import Iterator
from typing import Any

import pytest

from tests import meshbuilder
from tests.h2app import H2Client
from tests.helpers_mesh import MeshProcess, http_json, wait_for

pytestmark = pytest.mark.timeout(300)

RESOURCES = """\
apiVersion: ami.mesh/v1alpha1
kind: Gateway
metadata: {name: edge}
spec:
  listen: 127.0.0.1:8080
  rules: [{destination: web}]
---
apiVersion: ami.mesh/v1alpha1
kind: DestinationPolicy
metadata: {name: web}
spec:
  host: web
  loadBalancer: CONSISTENT_HASH
  consistentHash: {httpCookie: {name: sticky, path: /, ttl: 1h}}
  subsets:
    - name: canary
      labels: {track: canary}
      loadBalancer: CONSISTENT_HASH
      consistentHash: {httpCookie: {name: canary, ttl: 0s}}
---
apiVersion: ami.mesh/v1alpha1
kind: Route
metadata: {name: web}
spec:
  host: web
  rules:
    - matches: [{headers: {x-canary: {exact: "1"}}}]
      backends: [{subset: canary}]
    - backends: [{}]
---
apiVersion: ami.mesh/v1alpha1
kind: DestinationPolicy
metadata: {name: cart}
spec:
  host: cart
  loadBalancer: CONSISTENT_HASH
  consistentHash: {httpCookie: {name: pinned}}
---
apiVersion: ami.mesh/v1alpha1
kind: DestinationPolicy
metadata: {name: flaky}
spec:
  host: flaky
  loadBalancer: CONSISTENT_HASH
  consistentHash: {httpCookie: {name: sticky, ttl: 60s}}
---
apiVersion: ami.mesh/v1alpha1
kind: Route
metadata: {name: flaky}
spec:
  host: flaky
  rules:
    - backends: [{}]
      retries: {attempts: 3, retryOn: [5xx]}
"""

WEB = {"w1", "w2", "w3"}


class AffinityMesh(meshbuilder.Mesh):
    gateway_proc: MeshProcess
    shop: MeshProcess
    apps: dict[str, MeshProcess]  # the sidecars, by their app's name

    def endpoint(self, service: str, name: str, version: str, labels: str = "",
                 status: int = 200) -> MeshProcess:
        """App ``name`` (answering ``status``) behind a sidecar of ``service`` labelled
        version=``version`` (and ``labels``)."""
        app = self.backend(name, status)
        proc = self.sidecar(service, version, app=app.info["address"],
                            extra=["--labels", f"version={version}{labels}",
                                   "--app-protocol", "http1"])  # (http.server: no h2c)
        self.apps[name] = proc
        return proc

    def call(self, path: str = "/", *, cookie: str | None = None, via: MeshProcess | None = None,
             host: str = "web", headers: dict[str, str] | None = None
             ) -> tuple[str, tuple[str, ...]]:
        """A GET on a connection of its own, to the gateway (or ``via``'s outbound): the app
        that answered and the response's Set-Cookie values."""
        target = self.gateway_proc.info["gateway"] if via is None else via.info["outbound"]
        host_name, _, port = target.rpartition(":")
        conn = http.client.HTTPConnection(host_name, int(port), timeout=10)
        try:
            conn.request("GET", path, headers={"Host": host, **(headers or {}),
                                               **({"Cookie": cookie} if cookie else {})})
            resp = conn.getresponse()
            body = resp.read().decode()
            assert resp.status == 200, (resp.status, body)
            return body, tuple(resp.headers.get_all("set-cookie") or ())
        finally:
            conn.close()

    def gateway_endpoints(self, service: str) -> set[str]:
        """The endpoint addresses of ``service`` in the gateway's running config."""
        status, dump = http_json(f"http://{self.gateway_proc.info['admin']}/config_dump")
        assert status == 200, dump
        found = (dump["snapshot"]["services"].get(service) or {}).get("endpoints", [])
        return {f"{e['address']['host']}:{e['address']['port']}" for e in found}


@pytest.fixture(scope="module")
def mesh(tmp_path_factory: pytest.TempPathFactory) -> Iterator[AffinityMesh]:
    with AffinityMesh(tmp_path_factory.mktemp("cookie")) as mesh:
        mesh.apps = {}
        mesh.control_plane(RESOURCES, warmup=0.0)
        mesh.endpoint("web", "w1", "v1")
        mesh.endpoint("web", "w2", "v2", ",track=canary")
        mesh.endpoint("web", "w3", "v3", ",track=canary")
        mesh.endpoint("cart", "c1", "v1")
        mesh.endpoint("cart", "c2", "v2")
        mesh.endpoint("flaky", "f1", "v1", status=503)
        mesh.endpoint("flaky", "f2", "v2")
        mesh.shop = mesh.sidecar("shop")
        mesh.gateway_proc = mesh.gateway("edge-gw", extra=["--labels", "app=gateway,version=v1"])
        mesh.wait_synced()
        wait_for(lambda: len(mesh.gateway_endpoints("web")) == 3, 30, "web's 3 endpoints")
        wait_for(lambda: len({mesh.call()[0] for _ in range(12)}) == 3, 30,
                 "every web endpoint answering through the gateway")
        yield mesh


def _cookie(set_cookies: tuple[str, ...], name: str = "sticky") -> str:
    """`name=value` of the one Set-Cookie for ``name``."""
    mine = [c for c in set_cookies if c.startswith(f"{name}=")]
    assert len(mine) == 1, set_cookies
    return mine[0].split(";")[0]


def _cookies_of_each(mesh: AffinityMesh, want: set[str], name: str = "sticky",
                     **kw: Any) -> dict[str, str]:
    """Requests without the cookie, each on a new connection, until every endpoint in
    ``want`` has answered one: the cookie ``name`` each answer set, by endpoint."""
    found: dict[str, str] = {}
    for _ in range(200):
        body, set_cookies = mesh.call(**kw)
        found.setdefault(body, _cookie(set_cookies, name))
        if want <= set(found):
            return found
    raise AssertionError(f"only {sorted(found)} answered")


def test_the_first_answer_sets_the_cookie_and_it_keeps_the_client_there(
        mesh: AffinityMesh) -> None:
    """At the gateway: a request without the cookie gets `Set-Cookie: sticky=...; Path=/;
    Max-Age=3600; HttpOnly`; every later request carrying it lands on the endpoint that set
    it, and is not told again. Each endpoint sets a cookie of its own."""
    body, set_cookies = mesh.call()
    assert len(set_cookies) == 1
    value, *attributes = set_cookies[0].split("; ")
    assert value.startswith("sticky=") and len(value) > len("sticky=")
    assert attributes == ["Path=/", "Max-Age=3600", "HttpOnly"]
    for _ in range(20):
        assert mesh.call(cookie=value) == (body, ())
    cookies = _cookies_of_each(mesh, WEB)
    assert len(set(cookies.values())) == 3
    for endpoint, cookie in cookies.items():
        assert {mesh.call(cookie=f"theme=dark; {cookie}; lang=en")[0] for _ in range(10)} \
            == {endpoint}


def test_a_caller_sidecar_sets_and_honours_the_cookie_too(mesh: AffinityMesh) -> None:
    """Outbound, from shop's sidecar, the same cookie works: each of the gateway's cookies
    leads to the same endpoint from the sidecar (every proxy reads a cookie alike)."""
    through_gateway = _cookies_of_each(mesh, WEB)
    for endpoint, cookie in through_gateway.items():
        assert {mesh.call(cookie=cookie, via=mesh.shop)[0] for _ in range(10)} == {endpoint}
    body, set_cookies = mesh.call(via=mesh.shop)
    assert mesh.call(cookie=_cookie(set_cookies), via=mesh.shop) == (body, ())


def test_a_stale_cookie_is_served_and_replaced(mesh: AffinityMesh) -> None:
    """A value naming no endpoint (from another mesh, or made up) is hashed like any key:
    always the same endpoint, whose answer sets a cookie naming it."""
    answers = [mesh.call(cookie="sticky=0123456789abcdef") for _ in range(10)]
    assert len(set(answers)) == 1
    body, set_cookies = answers[0]
    assert mesh.call(cookie=_cookie(set_cookies)) == (body, ())


@pytest.mark.parametrize("cookie", [
    'sticky="', "sticky==;;; ;=", "sticky=\xfe\xff\t", "sticky=" + "x" * 4000,
    'a=1; sticky; sticky="q\\"uote"', "sticky=%00%0d%0a; Path=/evil"])
def test_a_hostile_cookie_is_only_a_key(mesh: AffinityMesh, cookie: str) -> None:
    """Odd bytes, quotes, empty pairs, a long value: answered by the app, always by the same
    endpoint, and the cookie set back is the proxy's own token, never the value sent. (Control
    characters are refused before any of this: 400 `invalid_header`.)"""
    answers = {mesh.call(cookie=cookie) for _ in range(3)}
    assert len(answers) == 1, answers
    body, set_cookies = answers.pop()
    assert body in WEB
    assert mesh.call(cookie=_cookie(set_cookies)) == (body, ())


def test_over_http2_the_streams_of_one_connection_share_an_endpoint(
        mesh: AffinityMesh) -> None:
    """HTTP/2 at the gateway: concurrent requests without the cookie on one connection go to
    one endpoint and get the same cookie (as Envoy keys them by the connection), which then
    keeps requests on that endpoint over any connection."""
    port = int(mesh.gateway_proc.info["gateway"].rpartition(":")[2])

    async def run() -> None:
        async with H2Client(port) as client:
            first = await asyncio.gather(*(client.request("web", f"/h2/{i}") for i in range(6)))
        assert {r.status for r in first} == {200}
        assert len({r.body for r in first}) == 1
        cookies = {r.get("set-cookie") for r in first}
        assert len(cookies) == 1
        cookie = _cookie((str(cookies.pop()),))
        async with H2Client(port) as client:
            again = await asyncio.gather(*(client.request("web", f"/h2/again/{i}",
                                                          headers=[("cookie", cookie)])
                                           for i in range(6)))
        assert {(r.status, r.body, r.get("set-cookie")) for r in again} \
            == {(200, first[0].body, None)}
        # an HTTP/1.1 client with that cookie goes there too
        assert mesh.call(cookie=cookie) == (first[0].body.decode(), ())
        # split cookie fields (RFC 9113 8.2.3) are read as one header
        async with H2Client(port) as client:
            split = await client.request("web", "/h2/split", headers=[
                ("cookie", "a=1"), ("cookie", cookie), ("cookie", "b=2")])
        assert (split.status, split.body, split.get("set-cookie")) == (200, first[0].body, None)

    asyncio.run(run())


def test_a_subsets_own_cookie_is_a_session_cookie(mesh: AffinityMesh) -> None:
    """The Route sends `x-canary: 1` to subset canary (w2, w3), whose own policy sets its own
    cookie, `canary`, with ttl 0s: no Max-Age (gone with the browser session), no Path."""
    canary = {"x-canary": "1"}
    cookies = _cookies_of_each(mesh, {"w2", "w3"}, headers=canary, name="canary")
    assert set(cookies) == {"w2", "w3"}
    body, set_cookies = mesh.call(headers=canary)
    assert body in {"w2", "w3"} and len(set_cookies) == 1
    assert set_cookies[0].split("; ")[1:] == ["HttpOnly"]
    for endpoint, cookie in cookies.items():
        assert {mesh.call(cookie=cookie, headers=canary) for _ in range(10)} == {(endpoint, ())}


def test_without_a_ttl_the_cookie_is_a_key_the_proxy_never_sets(mesh: AffinityMesh) -> None:
    """cart's `pinned` has no ttl: no Set-Cookie, requests without it go anywhere, and a
    client's own value keeps its endpoint, the same one from every proxy."""
    seen = set()
    for _ in range(30):
        body, set_cookies = mesh.call(via=mesh.shop, host="cart")
        assert set_cookies == ()
        seen.add(body)
    assert seen == {"c1", "c2"}
    owners = {}
    for user in range(12):
        cookie = f"pinned=user-{user}"
        answers = {mesh.call(via=mesh.shop, host="cart", cookie=cookie) for _ in range(5)}
        assert len(answers) == 1 and answers.pop()[1] == (), cookie
        owners[cookie] = mesh.call(via=mesh.shop, host="cart", cookie=cookie)[0]
    assert set(owners.values()) == {"c1", "c2"}


def test_after_a_retry_the_cookie_names_the_endpoint_that_answered(
        mesh: AffinityMesh) -> None:
    """flaky's f1 answers 503 and the Route retries: a client first sent to f1 is answered by
    f2 on the retry, and its cookie names f2 (not the endpoint picked first), so its next
    requests go straight to f2, from the gateway's caller sidecar as from any."""
    answers = {mesh.call(via=mesh.shop, host="flaky") for _ in range(20)}
    assert len(answers) == 1, answers
    body, set_cookies = answers.pop()
    assert body == "f2"
    cookie = _cookie(set_cookies)
    assert {mesh.call(via=mesh.shop, host="flaky", cookie=cookie) for _ in range(10)} \
        == {("f2", ())}
    retries = mesh.metric(mesh.shop, "ami_retries_total", destination_service="flaky")
    assert retries >= 1  # (some first picks were f1: 20 connections, ~1/2 each)


def test_proxy_config_and_describe_show_the_cookie(mesh: AffinityMesh) -> None:
    """`meshctl proxy-config` names the hash key as for a header; `meshctl describe` shows
    the policy as declared."""
    table = mesh.meshctl("proxy-config", "clusters", "edge-gw")
    assert table.returncode == 0, table.stderr
    rows = {line.split()[0]: line for line in table.stdout.splitlines()[1:]}
    assert "CONSISTENT_HASH httpCookie sticky path / ttl 1h" in rows["web"], table.stdout
    assert "CONSISTENT_HASH httpCookie canary ttl 0s" in rows["web/canary"], table.stdout
    assert "CONSISTENT_HASH httpCookie pinned " in rows["cart"], table.stdout
    described = mesh.meshctl("describe", "service", "web")
    assert described.returncode == 0, described.stderr
    assert '{"httpCookie": {"name": "sticky", "path": "/", "ttl": "1h"}}' in described.stdout


def test_endpoints_joining_and_leaving(mesh: AffinityMesh) -> None:
    """A new endpoint (w4) takes no client with a cookie from the others (a token, not a hash
    that would move about a quarter of them). When w4 goes, its clients go to one other
    endpoint, the same for each of their requests, and that answer sets a cookie naming it."""
    before = _cookies_of_each(mesh, WEB)
    w4 = mesh.endpoint("web", "w4", "v4")
    mesh.wait_synced()
    wait_for(lambda: len(mesh.gateway_endpoints("web")) == 4, 30, "w4 in the gateway's config")
    for endpoint, cookie in before.items():
        assert {mesh.call(cookie=cookie)[0] for _ in range(5)} == {endpoint}
    w4_cookie = _cookies_of_each(mesh, {"w4"})["w4"]
    assert mesh.call(cookie=w4_cookie) == ("w4", ())

    w4.stop()
    wait_for(lambda: w4.info["inbound"] not in mesh.gateway_endpoints("web"), 30,
             "w4 gone from the gateway's config")
    answers = {mesh.call(cookie=w4_cookie) for _ in range(10)}
    assert len(answers) == 1, answers
    body, set_cookies = answers.pop()
    assert body in WEB
    renewed = _cookie(set_cookies)
    assert renewed == before[body]
    assert mesh.call(cookie=renewed) == (body, ())
    for endpoint, cookie in before.items():
        assert mesh.call(cookie=cookie) == (endpoint, ())
