"""Route cors policies (as Istio's CorsPolicy) through a real proxy process."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest

from tests.proxyharness import Backends, get, roundtrip
from tests.traffic_backends import TrafficProxy, endpoints, start_backend, started


@pytest.fixture(scope="module")
def env(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    hub = Backends()
    api = start_backend(hub)
    cors = {"allowOrigins": [{"exact": "https://shop.example"},
                             {"regex": "https://[a-z]+[.]preview[.]example"}],
            "allowMethods": ["GET", "POST", "DELETE"], "allowHeaders": ["X-Token"],
            "exposeHeaders": ["x-version"], "maxAge": "10m", "allowCredentials": True}
    routes: list[dict[str, Any]] = [
        {"host": "api", "rules": [
            {"matches": [{"path": {"prefix": "/v1"}}], "cors": cors,
             "rewrite": {"uri": "/"}, "backends": [{}],
             "headers": {"response": {"set": {"x-edge": "1"}}}},
            {"matches": [{"path": {"prefix": "/broken"}}], "cors": cors, "backends": [{}],
             "fault": {"abort": {"httpStatus": 503, "percent": 100}}},
            {"backends": [{}]}]},
        {"host": "open", "rules": [{"cors": {"allowOrigins": [{"exact": "*"}]},
                                    "backends": [{}]}]},
    ]
    services = {"api": {"endpoints": endpoints(api)}, "open": {"endpoints": endpoints(api)}}
    for proxy in started(TrafficProxy(tmp_path_factory.mktemp("cors"), services, routes), hub):
        yield {"proxy": proxy, "api": api}


def preflight(host: str, path: str, origin: str) -> bytes:
    return get(host, path, method="OPTIONS",
               extra=f"Origin: {origin}\r\nAccess-Control-Request-Method: DELETE\r\n"
                     "Access-Control-Request-Headers: x-token\r\n")


async def test_preflight_from_an_allowed_origin_is_answered_by_the_sidecar(
        env: dict[str, Any]) -> None:
    before = len(env["api"].requests)
    resp = await roundtrip(env["proxy"].outbound,
                           preflight("api", "/v1/items", "https://eu.preview.example"))
    assert resp.status == 200 and resp.header("x-ami-reason") == "cors_preflight"
    assert resp.header("access-control-allow-origin") == "https://eu.preview.example"
    assert resp.header("access-control-allow-methods") == "GET, POST, DELETE"
    assert resp.header("access-control-allow-headers") == "x-token"
    assert resp.header("access-control-max-age") == "600"
    assert resp.header("access-control-allow-credentials") == "true"
    assert resp.header("vary") == "origin"
    assert len(env["api"].requests) == before  # never forwarded


async def test_request_from_an_allowed_origin_gets_the_allow_headers(
        env: dict[str, Any]) -> None:
    resp = await roundtrip(env["proxy"].outbound,
                           get("api", "/v1/items", extra="Origin: https://shop.example\r\n"))
    assert resp.status == 200
    assert resp.header("access-control-allow-origin") == "https://shop.example"
    assert resp.header("access-control-expose-headers") == "x-version"
    assert resp.header("access-control-allow-credentials") == "true"
    assert resp.header("x-edge") == "1"  # the rule's own response edits still apply
    assert env["api"].requests[-1].target == "/items"  # and its rewrite


@pytest.mark.parametrize("origin", ["https://evil.example", "https://shop.example.evil",
                                    "http://shop.example"])
async def test_other_origins_get_no_cors_headers(env: dict[str, Any], origin: str) -> None:
    resp = await roundtrip(env["proxy"].outbound,
                           get("api", "/v1/items", extra=f"Origin: {origin}\r\n"))
    assert resp.status == 200 and resp.header("access-control-allow-origin") is None
    assert resp.header("vary") == "origin"  # a cache must not give it to an allowed origin
    before = len(env["api"].requests)
    resp = await roundtrip(env["proxy"].outbound, preflight("api", "/v1/items", origin))
    assert resp.header("x-ami-reason") is None  # passed on, as if there were no policy
    assert len(env["api"].requests) == before + 1


async def test_a_wildcard_answers_star_and_other_rules_have_no_cors(
        env: dict[str, Any]) -> None:
    resp = await roundtrip(env["proxy"].outbound,
                           get("open", "/", extra="Origin: https://any.example\r\n"))
    assert resp.header("access-control-allow-origin") == "*"
    assert resp.header("access-control-allow-credentials") is None
    resp = await roundtrip(env["proxy"].outbound,
                           get("api", "/other", extra="Origin: https://shop.example\r\n"))
    assert resp.header("access-control-allow-origin") is None


async def test_answers_without_allow_headers_vary_by_origin(env: dict[str, Any]) -> None:
    """A response without allow headers (no Origin sent) stored by a cache must not be given
    to a browser from an allowed origin, which would then be refused: `vary: origin`. A
    wildcard policy answers every origin alike, so its responses do not vary."""
    resp = await roundtrip(env["proxy"].outbound, get("api", "/v1/items"))
    assert resp.status == 200 and resp.header("access-control-allow-origin") is None
    assert resp.header("vary") == "origin"
    assert resp.header("x-edge") == "1"  # the rule's own response edits still apply
    resp = await roundtrip(env["proxy"].outbound, get("open", "/"))
    assert resp.status == 200 and resp.header("vary") is None
    resp = await roundtrip(env["proxy"].outbound, get("api", "/other"))  # rule without cors
    assert resp.header("vary") is None


async def test_local_replies_carry_the_allow_headers(env: dict[str, Any]) -> None:
    """An answer the sidecar makes itself (here an injected 503) is readable by the browser
    code of an allowed origin, as with Envoy's CORS filter, instead of a network error."""
    resp = await roundtrip(env["proxy"].outbound,
                           get("api", "/broken", extra="Origin: https://shop.example\r\n"))
    assert (resp.status, resp.header("x-ami-reason")) == (503, "fault_injected")
    assert resp.header("access-control-allow-origin") == "https://shop.example"
    assert resp.header("access-control-allow-credentials") == "true"
    assert resp.header("vary") == "origin"
    resp = await roundtrip(env["proxy"].outbound, get("api", "/broken"))
    assert resp.status == 503 and resp.header("access-control-allow-origin") is None
    assert resp.header("vary") == "origin"
