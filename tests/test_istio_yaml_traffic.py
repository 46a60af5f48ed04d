"""Istio VirtualServices translated as Ami Routes, sent real requests through a real proxy:
what the upstream sees is what Istio's Envoy would send (rewrite of a rule without a uri
match, a withoutHeaders matcher of the empty value, retries of a POST, weights that do not
sum to 100)."""

from __future__ import annotations

import textwrap
from collections import Counter
from collections.abc import Iterator
from typing import Any

import pytest

from meshctl.api.resources import load_documents
from tests.proxyharness import Backends, get, roundtrip
from tests.traffic_backends import TrafficProxy, endpoints, start_backend, started


def route_of(http: str, host: str) -> dict[str, Any]:
    """The Route spec Ami stores for a VirtualService of ``host`` with these `http` rules."""
    text = (f"apiVersion: networking.istio.io/v1\nkind: VirtualService\n"
            f"metadata: {{name: {host}}}\nspec:\n  hosts: [{host}]\n  http:\n"
            + textwrap.indent(textwrap.dedent(http), "  "))
    (route,) = load_documents(text, "vs.yaml")
    spec: dict[str, Any] = route.to_dict()["spec"]
    return spec


@pytest.fixture(scope="module")
def env(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    hub = Backends()
    api = start_backend(hub)
    flaky = start_backend(hub, fail_first=1)  # its first request gets a 503
    v1, v2 = start_backend(hub, version="v1"), start_backend(hub, version="v2")
    services = {"api": {"endpoints": endpoints(api)}, "gate": {"endpoints": endpoints(api)},
                "flaky": {"endpoints": endpoints(flaky)},
                "split": {"endpoints": endpoints(v1, v2),
                          "subsets": [{"name": "v1", "labels": {"version": "v1"}},
                                      {"name": "v2", "labels": {"version": "v2"}}]}}
    routes = [
        route_of("""\
        - match: [{headers: {x-old: {exact: "1"}}}]
          rewrite: {uri: /v2}
          route: [{destination: {host: api}}]
        - rewrite: {uri: /api/}
          route: [{destination: {host: api}}]
        """, "api"),
        route_of("""\
        - match: [{withoutHeaders: {x-user: {exact: ""}}}]
          route: [{destination: {host: gate}}]
        - directResponse: {status: 418}
        """, "gate"),
        route_of("""\
        - route: [{destination: {host: flaky}}]
          retries: {attempts: 1, retryOn: 5xx}
        """, "flaky"),
        route_of("""\
        - route:
          - {destination: {host: split, subset: v1}, weight: 1}
          - {destination: {host: split, subset: v2}, weight: 3}
        """, "split"),
    ]
    proxy = TrafficProxy(tmp_path_factory.mktemp("istio-traffic"), services, routes)
    for p in started(proxy, hub):
        yield {"proxy": p, "api": api, "flaky": flaky}


@pytest.mark.parametrize(("sent", "extra", "upstream"), [
    # Istio: a block without uri is Envoy's prefix `/`, and rewrite.uri replaces that prefix
    ("/reviews/7?x=1", "x-old: 1\r\n", "/v2reviews/7?x=1"),
    ("/reviews/7", "", "/api/reviews/7"),  # a rule without match: the same
    ("/", "", "/api/"),
])
async def test_rewrite_of_a_rule_without_uri_match_replaces_the_slash(
        env: dict[str, Any], sent: str, extra: str, upstream: str) -> None:
    api = env["api"]
    before = len(api.requests)
    resp = await roundtrip(env["proxy"].outbound, get("api", sent, extra=extra))
    assert resp.status == 200
    (request,) = api.requests[before:]
    assert request.target == upstream


@pytest.mark.parametrize(("extra", "status"), [
    ("x-user: bob\r\n", 200), ("", 418), ("x-user: \r\n", 418)])
async def test_without_headers_of_the_empty_value_keeps_out_a_missing_header(
        env: dict[str, Any], extra: str, status: int) -> None:
    """withoutHeaders {x-user: {exact: ""}}: Envoy reads a missing x-user as empty, so a
    request without it does not match the block either."""
    resp = await roundtrip(env["proxy"].outbound, get("gate", "/", extra=extra))
    assert resp.status == status


async def test_a_post_is_retried_as_envoy_retries_it(env: dict[str, Any]) -> None:
    """Envoy retries a request whatever its method: the POST that got a 503 is sent again."""
    flaky = env["flaky"]
    resp = await roundtrip(env["proxy"].outbound,
                           get("flaky", "/orders", body=b"{}", method="POST"), "POST")
    assert resp.status == 200
    assert [r.first.split(" ")[0] for r in flaky.requests] == ["POST", "POST"]


async def test_relative_weights_split_as_in_istio(env: dict[str, Any]) -> None:
    """Weights 1 and 3: a quarter of the requests to v1 (Istio: weight / sum of weights)."""
    counts: Counter[str] = Counter()
    for _ in range(400):
        resp = await roundtrip(env["proxy"].outbound, get("split", "/"))
        assert resp.status == 200
        counts[resp.header("x-version") or ""] += 1
    assert set(counts) == {"v1", "v2"}, counts
    # binomial(400, 0.25): sd 8.7; 45 is over five of them
    assert abs(counts["v1"] - 100) <= 45, counts
