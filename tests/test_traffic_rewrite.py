"""Route rewrites (path prefix, Host) and redirects through a real proxy process."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest

from meshctl.commands.shift import ShiftRefused, Weights, plan_shift
from tests.proxyharness import Backends, get, roundtrip
from tests.traffic_backends import TrafficProxy, endpoints, start_backend, started


@pytest.fixture(scope="module")
def env(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    hub = Backends()
    api = start_backend(hub)
    services = {"api": {"endpoints": endpoints(api)}, "site": {"endpoints": endpoints(api)}}
    routes: list[dict[str, Any]] = [
        {"host": "api", "rules": [
            {"matches": [{"path": {"prefix": "/api/v1/reviews"}},
                         {"path": {"prefix": "/legacy"}}],
             "rewrite": {"uri": "/reviews"}, "backends": [{}]},
            {"matches": [{"path": {"prefix": "/strip"}}],
             "rewrite": {"uri": "/", "authority": "internal.example:9080"}, "backends": [{}]},
            {"matches": [{"path": {"exact": "/health"}}], "rewrite": {"uri": "/ready"},
             "backends": [{}]},
            # Blocks of several kinds: the block that matched decides what is replaced.
            {"matches": [{"path": {"prefix": "/v"}, "methods": ["POST"]},
                         {"path": {"exact": "/v/status"}},
                         {"path": {"regex": "/v/[0-9]+"}},
                         {"path": {"prefix": "/v/"}, "headers": {"x-beta": {"exact": "1"}}}],
             "rewrite": {"uri": "/w"}, "backends": [{}]},
            {"backends": [{}]},
        ]},
        {"host": "site", "rules": [
            {"matches": [{"path": {"prefix": "/old"}}],
             "redirect": {"uri": "/new", "redirectCode": 308}},
            {"matches": [{"path": {"prefix": "/secure"}}],
             "redirect": {"scheme": "https", "port": 8443}},
            {"matches": [{"path": {"prefix": "/moved"}}],
             "redirect": {"authority": "elsewhere.example", "scheme": "https"}},
            {"matches": [{"path": {"prefix": "/port-in-authority"}}],
             "redirect": {"authority": "secure.example:8443", "scheme": "https"}},
            {"backends": [{}]},
        ]},
    ]
    proxy = TrafficProxy(tmp_path_factory.mktemp("rewrite"), services, routes)
    for p in started(proxy, hub):
        yield {"proxy": p, "api": api}


@pytest.mark.parametrize(("sent", "upstream"), [
    ("/api/v1/reviews/7?lang=fr", "/reviews/7?lang=fr"),  # the matched prefix is replaced
    ("/api/v1/reviews", "/reviews"),
    ("/legacy/7", "/reviews/7"),  # whichever of the rule's prefixes matched
    ("/strip/x/y", "/x/y"),  # `uri: /` leaves no double slash
    ("/strip", "/"),
    ("/health?probe=1", "/ready?probe=1"),  # no prefix matched: the whole path
    ("/untouched/path", "/untouched/path"),  # a rule without rewrite
    ("/v/status?a=1", "/w?a=1"),  # an exact block matched (not the prefix block before it)
    ("/v/42", "/w"),  # a regex block matched: the whole path
])
async def test_rewrite_changes_the_path_sent_upstream(env: dict[str, Any], sent: str,
                                                      upstream: str) -> None:
    api = env["api"]
    before = len(api.requests)
    resp = await roundtrip(env["proxy"].outbound, get("api", sent))
    assert resp.status == 200
    (request,) = api.requests[before:]
    assert request.target == upstream


async def test_rewrite_replaces_the_prefix_of_the_block_that_matched(
        env: dict[str, Any]) -> None:
    api = env["api"]
    resp = await roundtrip(env["proxy"].outbound, get("api", "/v/x", method="POST"))
    assert resp.status == 200 and api.requests[-1].target == "/w/x"  # POST: prefix /v
    resp = await roundtrip(env["proxy"].outbound, get("api", "/v/x", extra="x-beta: 1\r\n"))
    assert resp.status == 200 and api.requests[-1].target == "/wx"  # prefix /v/, as Envoy


async def test_rewrite_authority_sets_the_host_header(env: dict[str, Any]) -> None:
    api = env["api"]
    before = len(api.requests)
    assert (await roundtrip(env["proxy"].outbound, get("api", "/strip/a"))).status == 200
    assert api.hosts()[before:] == ["internal.example:9080"]
    assert (await roundtrip(env["proxy"].outbound, get("api", "/legacy/1"))).status == 200
    assert api.hosts()[-1] == "api"  # other rules keep the caller's Host


@pytest.mark.parametrize(("host", "sent", "code", "location"), [
    ("site", "/old/page?x=1", 308, "http://site/new?x=1"),  # uri replaces the path; query kept
    ("site:8080", "/secure/a", 301, "https://site:8443/secure/a"),
    ("site:8080", "/moved/b", 301, "https://elsewhere.example/moved/b"),
    # the rule's own authority keeps its port when the scheme changes
    ("site:8080", "/port-in-authority/c?q", 301,
     "https://secure.example:8443/port-in-authority/c?q"),
])
async def test_redirect_answers_with_location(env: dict[str, Any], host: str, sent: str,
                                              code: int, location: str) -> None:
    api = env["api"]
    before = len(api.requests)
    resp = await roundtrip(env["proxy"].outbound, get(host, sent))
    assert (resp.status, resp.header("location")) == (code, location)
    assert resp.header("x-ami-reason") == "redirect"
    assert len(api.requests) == before  # nothing was forwarded
    resp = await roundtrip(env["proxy"].outbound, get(host, sent, method="HEAD"), method="HEAD")
    assert resp.status == code and resp.body == b""


async def test_redirects_are_counted_with_their_reason(env: dict[str, Any]) -> None:
    proxy: TrafficProxy = env["proxy"]
    before = await proxy.metric("ami_requests_total", response_flags="redirect",
                                response_code="308", destination_service="site")
    assert (await roundtrip(proxy.outbound, get("site", "/old"))).status == 308
    assert await proxy.metric("ami_requests_total", response_flags="redirect",
                              response_code="308", destination_service="site") == before + 1


def test_shift_refuses_a_rule_that_redirects() -> None:
    route = {"spec": {"host": "site", "rules": [{"redirect": {"uri": "/new"}}]}}
    with pytest.raises(ShiftRefused, match="answers with a redirect"):
        plan_shift(route, ["v1"], Weights(positional=(100,)))


def test_get_shows_a_redirect_default_rule() -> None:
    from meshctl.output import resource_table

    doc = {"kind": "Route", "metadata": {"name": "site", "resourceVersion": "3"},
           "spec": {"host": "site", "rules": [{"redirect": {"uri": "/new"}}]}}
    (header, row) = resource_table("Route", [doc]).splitlines()
    assert row.split()[:4] == ["site", "site", "1", "(redirect)"], (header, row)


async def test_source_labels_pick_rules_per_calling_proxy(
        tmp_path_factory: pytest.TempPathFactory) -> None:
    """The same Route in two sidecars: the gateway-labelled one redirects plain HTTP to HTTPS,
    the other forwards; a sourceNamespace rule applies to the proxy in that namespace only."""
    hub = Backends()
    site = start_backend(hub)
    routes: list[dict[str, Any]] = [{"host": "site", "rules": [
        {"matches": [{"sourceLabels": {"app": "gateway"}}], "redirect": {"scheme": "https"}},
        {"matches": [{"sourceNamespace": "batch", "path": {"prefix": "/jobs"}}],
         "rewrite": {"uri": "/batch-jobs"}, "backends": [{}]},
        {"backends": [{}]}]}]
    services = {"site": {"endpoints": endpoints(site)}}
    edge = TrafficProxy(tmp_path_factory.mktemp("edge"), services, routes, node={
        "service": "gateway", "namespace": "edge", "labels": {"app": "gateway"}})
    batch = TrafficProxy(tmp_path_factory.mktemp("batch"), services, routes, node={
        "service": "cron", "namespace": "batch", "labels": {"app": "cron"}})
    edge.start()
    try:
        for proxy in started(batch, hub):
            resp = await roundtrip(edge.outbound, get("site", "/jobs/1"))
            assert (resp.status, resp.header("location")) == (301, "https://site/jobs/1")
            assert (await roundtrip(proxy.outbound, get("site", "/jobs/1"))).status == 200
            assert site.requests[-1].target == "/batch-jobs/1"
            assert (await roundtrip(proxy.outbound, get("site", "/other"))).status == 200
            assert site.requests[-1].target == "/other"
    finally:
        edge.stop()
