"""Route matching, weighted splits, load balancers and header edits through a real proxy process."""

from __future__ import annotations

import itertools
import math
from collections import Counter
from collections.abc import Iterator
from typing import Any

import aiohttp
import pytest

from tests.proxyharness import Backends, get, roundtrip
from tests.traffic_backends import (
    TrafficBackend,
    TrafficProxy,
    call,
    call_many,
    endpoints,
    header_values,
    start_backend,
    started,
)

MATCH_RULES: list[tuple[str, dict[str, Any]]] = [
    ("exact", {"path": {"exact": "/exact"}}),
    ("prefix", {"path": {"prefix": "/api/"}}),
    ("regex", {"path": {"regex": "/items/[0-9]+"}}),
    ("method", {"method": "DELETE"}),
    ("hexact", {"headers": {"x-user": {"exact": "alice"}}}),
    ("hprefix", {"headers": {"x-agent": {"prefix": "Mozilla"}}}),
    ("hregex", {"headers": {"x-id": {"regex": "[a-f]{4}"}}}),
    ("hpresent", {"headers": {"x-debug": {"present": True}}}),
    ("query", {"query": {"flag": {"exact": "on"}}}),
]


@pytest.fixture(scope="module")
def env(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    hub = Backends()
    shop = {name: start_backend(hub, version=name) for name, _ in MATCH_RULES}
    shop["default"] = start_backend(hub, version="default")
    split = [start_backend(hub, version="v1"), start_backend(hub, version="v2")]
    rr = [start_backend(hub, version="a"), start_backend(hub, version="b")]
    lr = [start_backend(hub, version="slow", delay=0.3), start_backend(hub, version="fast")]
    ewma = [start_backend(hub, version="slow", delay=0.1), start_backend(hub, version="fast")]
    ewma_hung = [start_backend(hub, version="hung", delay=5.0), start_backend(hub, version="ok")]
    hdr = start_backend(hub)
    services = {
        "shop": {"endpoints": endpoints(*shop.values())},
        "split": {"endpoints": endpoints(*split),
                  "subsets": [{"name": "v1", "labels": {"version": "v1"}},
                              {"name": "v2", "labels": {"version": "v2"}}]},
        "rr": {"endpoints": endpoints(*rr), "policy": {"loadBalancer": "ROUND_ROBIN"}},
        "lr": {"endpoints": endpoints(*lr), "policy": {"loadBalancer": "LEAST_REQUEST"}},
        "ewma": {"endpoints": endpoints(*ewma), "policy": {"loadBalancer": "PEAK_EWMA"}},
        "ewmahung": {"endpoints": endpoints(*ewma_hung),
                     "policy": {"loadBalancer": "PEAK_EWMA"}},
        "hdr": {"endpoints": endpoints(hdr)},
    }
    routes: list[dict[str, Any]] = [
        {"host": "shop", "rules": [
            *({"name": name, "matches": [match], "backends": [{"subset": name}]}
              for name, match in MATCH_RULES),
            {"backends": [{"subset": "default"}]},
        ]},
        {"host": "split", "rules": [{"backends": [{"subset": "v1", "weight": 90},
                                                  {"subset": "v2", "weight": 10}]}]},
        {"host": "ewmahung", "rules": [{"backends": [{}], "timeout": "3s",
                                        "retries": {"attempts": 1, "perTryTimeout": "200ms"}}]},
        {"host": "hdr", "rules": [{"backends": [{}], "headers": {
            "request": {"set": {"x-env": "demo"}, "add": {"x-trace": "1"},
                        "remove": ["x-debug"]},
            "response": {"set": {"x-resp": "yes"}, "add": {"x-added": "1"},
                         "remove": ["server"]}}}]},
    ]
    proxy = TrafficProxy(tmp_path_factory.mktemp("matching"), services, routes)
    for p in started(proxy, hub):
        yield {"proxy": p, "shop": shop, "split": split, "rr": rr, "lr": lr, "ewma": ewma,
               "hdr": hdr, "ewmahung": ewma_hung}


MATCH_CASES = [
    ("/exact", {}, "GET", "exact"),
    ("/exact/more", {}, "GET", "default"),  # exact is not a prefix
    ("/api/v1/things", {}, "GET", "prefix"),
    ("/items/42", {}, "GET", "regex"),
    ("/items/42x", {}, "GET", "default"),  # the regex must match the whole path
    ("/anything", {}, "DELETE", "method"),
    ("/anything", {"x-user": "alice"}, "GET", "hexact"),
    ("/anything", {"x-user": "alice2"}, "GET", "default"),
    ("/anything", {"x-agent": "Mozilla/5.0"}, "GET", "hprefix"),
    ("/anything", {"x-id": "beef"}, "GET", "hregex"),
    ("/anything", {"x-id": "beefy"}, "GET", "default"),
    ("/anything", {"x-debug": ""}, "GET", "hpresent"),
    ("/anything?flag=on", {}, "GET", "query"),
    ("/anything?flag=off", {}, "GET", "default"),
    # first matching rule wins: /exact also carries a header matched by a later rule
    ("/exact", {"x-user": "alice"}, "GET", "exact"),
    ("/items/7", {"x-debug": "1"}, "DELETE", "regex"),
]


@pytest.mark.parametrize(("path", "headers", "method", "expected"), MATCH_CASES)
async def test_match_kinds_and_first_rule_wins(env: dict[str, Any],
                                               session: aiohttp.ClientSession, path: str,
                                               headers: dict[str, str], method: str,
                                               expected: str) -> None:
    """Each matcher kind routes to its own subset; the first matching rule wins; it is counted."""
    proxy: TrafficProxy = env["proxy"]
    before = await proxy.metric("ami_requests_total", destination_service="shop",
                                destination_version=expected, response_code="200")
    reply = await call(session, proxy, "shop", path, method=method, headers=headers)
    assert (reply.status, reply.version) == (200, expected)
    after = await proxy.metric("ami_requests_total", destination_service="shop",
                               destination_version=expected, response_code="200")
    assert after == before + 1


@pytest.mark.parametrize(("target", "expected"), [
    ("/api/../exact", "exact"),
    ("/x/%2e%2e/exact", "exact"),
    ("//api//v1", "prefix"),
    ("/api/..%2Fitems/9", "regex"),
])
async def test_matching_uses_the_normalised_path(env: dict[str, Any], target: str,
                                                 expected: str) -> None:
    """Rules see the path after dot-segment removal, slash merging and %2e/%2f decoding."""
    proxy: TrafficProxy = env["proxy"]
    resp = await roundtrip(proxy.outbound, get("shop", target))
    assert resp.status == 200, resp.body
    assert resp.header("x-version") == expected


async def test_weighted_split_within_binomial_bounds(env: dict[str, Any],
                                                     session: aiohttp.ClientSession) -> None:
    """A 90/10 split over 2000 requests lands within 4 sigma of 10% and the metric agrees."""
    proxy: TrafficProxy = env["proxy"]
    n, p = 2000, 0.10
    replies = await call_many(session, proxy, "split", n, concurrency=32)
    seen = Counter(r.version for r in replies)
    assert sum(seen.values()) == n and set(seen) == {"v1", "v2"}
    sigma = math.sqrt(n * p * (1 - p))
    assert abs(seen["v2"] - n * p) <= 4 * sigma, seen
    metric_v2 = await proxy.metric("ami_requests_total", destination_service="split",
                                   destination_version="v2")
    assert metric_v2 == seen["v2"]


async def test_round_robin_alternates(env: dict[str, Any],
                                      session: aiohttp.ClientSession) -> None:
    """ROUND_ROBIN sends sequential requests to the two endpoints in strict alternation."""
    proxy: TrafficProxy = env["proxy"]
    versions = [(await call(session, proxy, "rr")).version for _ in range(10)]
    assert all(a != b for a, b in itertools.pairwise(versions)), versions
    assert Counter(versions) == {"a": 5, "b": 5}


async def test_least_request_prefers_the_idle_endpoint(env: dict[str, Any],
                                                       session: aiohttp.ClientSession) -> None:
    """LEAST_REQUEST sends most traffic to the fast endpoint while the slow one is busy."""
    proxy: TrafficProxy = env["proxy"]
    slow, fast = env["lr"]
    before_slow, before_fast = len(slow.requests), len(fast.requests)
    replies = await call_many(session, proxy, "lr", 60, concurrency=3)
    assert all(r.status == 200 for r in replies)
    to_slow = len(slow.requests) - before_slow
    to_fast = len(fast.requests) - before_fast
    assert to_slow + to_fast == 60
    # Round robin would give the slow endpoint 30; least-request only a handful.
    assert to_slow <= 12, (to_slow, to_fast)


async def test_peak_ewma_learns_the_slow_endpoint(env: dict[str, Any],
                                                  session: aiohttp.ClientSession) -> None:
    """PEAK_EWMA avoids an endpoint it measured as slow, even with one request at a time."""
    proxy: TrafficProxy = env["proxy"]
    slow, _fast = env["ewma"]
    replies = [await call(session, proxy, "ewma") for _ in range(30)]
    assert all(r.status == 200 for r in replies)
    # Least-request would split sequential traffic 50/50; EWMA tries the slow one rarely.
    assert len(slow.requests) <= 5, len(slow.requests)


async def test_peak_ewma_learns_from_each_try_not_from_the_whole_request(
        env: dict[str, Any], session: aiohttp.ClientSession) -> None:
    """A try cut by perTryTimeout teaches PEAK_EWMA that its endpoint is slow, and the retry's
    endpoint is measured by its own answer, not by the time the failed try took before it."""
    proxy: TrafficProxy = env["proxy"]
    hung, _ok = env["ewmahung"]
    replies = [await call(session, proxy, "ewmahung") for _ in range(10)]
    assert [(r.status, r.version) for r in replies] == [(200, "ok")] * 10
    assert len(hung.requests) <= 2, len(hung.requests)


async def test_header_edits_on_request_and_response(env: dict[str, Any],
                                                    session: aiohttp.ClientSession) -> None:
    """Request headers are edited before the upstream, response headers before the client."""
    proxy: TrafficProxy = env["proxy"]
    backend: TrafficBackend = env["hdr"]
    reply = await call(session, proxy, "hdr", "/h",
                       headers={"x-env": "prod", "x-debug": "1", "x-keep": "k"})
    assert reply.status == 200
    seen = backend.requests[-1]
    assert header_values(seen, "x-env") == ["demo"]  # set replaces the client's value
    assert seen.header("x-trace") == "1"
    assert seen.header("x-debug") is None
    assert seen.header("x-keep") == "k"
    assert reply.headers.get("x-resp") == "yes"
    assert reply.headers.get("x-added") == "1"
    assert "server" not in reply.headers
    assert reply.headers.get("x-version") == "v1"  # untouched headers pass through
    assert await proxy.metric("ami_requests_total", destination_service="hdr",
                              response_code="200") >= 1

