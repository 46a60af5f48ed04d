"""Per-rule metrics (ami_route_*) from a real static proxy and real backends: a request decided
by a named rule is counted with the Route's and the rule's names, over HTTP/1.1 and h2c, once
however often it was retried; unnamed rules and hosts without a Route are not, and a proxy
without any named rule exports no ami_route_* family at all."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml
from aiohttp import web

from tests.h2app import GRPC, GRPC_MESSAGE, H2Client, H2Server, h2_request
from tests.proxyharness import (
    Backends,
    ProxyProcess,
    echo_app,
    get,
    metric_value,
    roundtrip,
)


def fail_once_app() -> tuple[web.Application, list[str]]:
    """503 the first time a path is asked for, then 200; the paths it was asked for."""
    seen: list[str] = []

    async def handle(request: web.Request) -> web.Response:
        seen.append(request.path)
        return web.Response(status=503 if seen.count(request.path) == 1 else 200, text="ok")

    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", handle)
    return app, seen


def _ep(port: int) -> dict[str, Any]:
    return {"endpoints": [{"address": f"127.0.0.1:{port}", "labels": {"version": "v1"}}]}


JASON = {"headers": {"end-user": {"exact": "jason"}}}
ROUTES = [
    # a Route the snapshot names: route="default/reviews-route"
    {"host": "reviews", "name": "reviews-route", "rules": [
        {"name": "jason", "matches": [JASON], "backends": [{}]},
        {"backends": [{}]}]},
    {"host": "details", "rules": [{"matches": [JASON], "backends": [{}]},
                                  {"backends": [{}]}]},  # no rule named
    {"host": "flaky", "name": "flaky", "rules": [
        {"name": "retried", "backends": [{}],
         "retries": {"attempts": 2, "retryOn": ["5xx"]}}]},
    # no Route name in the snapshot (a hand-written one): the host stands for it
    {"host": "h2svc", "rules": [
        {"name": "grpc", "matches": [{"path": {"prefix": "/late-grpc"}}], "backends": [{}]},
        {"name": "rest", "backends": [{}], "retries": {"attempts": 2, "retryOn": ["5xx"]}}]},
    {"host": "moved", "name": "moved", "rules": [{"name": "gone", "redirect": {"uri": "/new"}}]},
]


@dataclass
class Env:
    proxy: ProxyProcess
    flaky_seen: list[str]
    h2: H2Server

    async def metrics(self) -> str:
        return await self.proxy.metrics()


@pytest.fixture(scope="module")
def env(tmp_path_factory: pytest.TempPathFactory, backends: Backends,
        echo: int) -> Iterator[Env]:
    flaky_app, flaky_seen = fail_once_app()
    flaky = backends.aiohttp(flaky_app)
    h2 = backends.call(H2Server("h2").start())
    tmp = Path(tmp_path_factory.mktemp("routemetrics"))
    proxy = ProxyProcess(tmp, {})
    proxy.config.write_text(yaml.safe_dump({
        "version": "rm-1", "node": {"service": "client", "labels": {"version": "v1"}},
        "listeners": {"outbound": f"127.0.0.1:{proxy.outbound}",
                      "admin": f"127.0.0.1:{proxy.admin}"},
        "services": {"reviews": _ep(echo), "details": _ep(echo), "ratings": _ep(echo),
                     "flaky": _ep(flaky), "h2svc": _ep(h2.port)},
        "routes": ROUTES,
    }))
    proxy.start()
    try:
        yield Env(proxy, flaky_seen, h2)
    finally:
        proxy.stop()
        backends.call(h2.stop())


async def test_named_rule_counted_with_the_route_and_rule_names(env: Env) -> None:
    """Three requests of jason's (the named rule) and two others (the unnamed default rule):
    the rule's series count the three, labelled with the Route's namespace/name and the
    rule's name; the service's series count all five."""
    for user in ("jason", "jason", "bob", "jason", ""):
        header = f"end-user: {user}\r\n" if user else ""
        assert (await roundtrip(env.proxy.outbound, get("reviews", "/r", header))).status == 200
    text = await env.metrics()
    labels = {"reporter": "source", "destination_service": "reviews",
              "route": "default/reviews-route", "rule": "jason", "response_code": "200"}
    assert metric_value(text, "ami_route_requests_total", **labels) == 3
    assert metric_value(text, "ami_route_request_duration_seconds_count", **labels) == 3
    assert metric_value(text, "ami_route_request_duration_seconds_bucket", le="+Inf",
                        **labels) == 3
    assert metric_value(text, "ami_route_requests_total", destination_service="reviews") == 3
    assert metric_value(text, "ami_requests_total", reporter="source",
                        destination_service="reviews") == 5


async def test_unnamed_rules_and_hosts_without_route_are_not_counted(env: Env) -> None:
    """details' Route names no rule and ratings has none: their requests are in the service
    metrics only."""
    for host in ("details", "ratings"):
        assert (await roundtrip(env.proxy.outbound,
                                get(host, "/d", "end-user: jason\r\n"))).status == 200
    text = await env.metrics()
    for host in ("details", "ratings"):
        assert metric_value(text, "ami_requests_total", destination_service=host) == 1
        assert f'destination_service="{host}"' not in "\n".join(
            line for line in text.splitlines() if line.startswith("ami_route_"))


async def test_h2c_requests_and_grpc_status(env: Env) -> None:
    """h2c requests are counted per rule alike; a gRPC call's grpc-status is a label (its HTTP
    status is 200), so its failure is one. A Route the snapshot does not name is labelled
    with its host."""
    async with H2Client(env.proxy.outbound) as client:
        for i in range(2):
            assert (await client.request("h2svc", f"/plain/{i}")).status == 200
        call = await client.request("h2svc", "/late-grpc/14", method="POST", headers=GRPC,
                                    body=GRPC_MESSAGE)
        assert call.status == 200
    text = await env.metrics()
    assert metric_value(text, "ami_route_requests_total", route="default/h2svc", rule="rest",
                        response_code="200", grpc_response_status="") == 2
    assert metric_value(text, "ami_route_requests_total", route="default/h2svc", rule="grpc",
                        response_code="200", grpc_response_status="14") == 1


async def test_retried_request_counted_once(env: Env) -> None:
    """A request answered 503 then retried to a 200 is one request of its rule (as in the
    service metrics), with the final answer's code, over HTTP/1.1 and h2c."""
    resp = await roundtrip(env.proxy.outbound, get("flaky", "/once"))
    assert resp.status == 200 and env.flaky_seen.count("/once") == 2
    assert (await h2_request(env.proxy.outbound, "h2svc", "/fail-once/k")).status == 200
    assert env.h2.paths().count("/fail-once/k") == 2
    text = await env.metrics()
    assert metric_value(text, "ami_retries_total") >= 2
    assert metric_value(text, "ami_route_requests_total", route="default/flaky",
                        rule="retried") == 1
    assert metric_value(text, "ami_route_requests_total", route="default/flaky",
                        rule="retried", response_code="200") == 1
    assert metric_value(text, "ami_requests_total", destination_service="flaky") == 1
    # (the 503 that was retried is no request of its own)
    assert metric_value(text, "ami_route_requests_total", route="default/h2svc", rule="rest",
                        response_code="503") == 0


async def test_answered_without_backend_labelled_with_the_route_host(env: Env) -> None:
    """A named redirect rule answers without choosing a backend: its destination_service is
    the Route's host."""
    assert (await roundtrip(env.proxy.outbound, get("moved", "/x"))).status == 301
    text = await env.metrics()
    assert metric_value(text, "ami_route_requests_total", destination_service="moved",
                        route="default/moved", rule="gone", response_code="301") == 1


def test_no_named_rule_no_route_family(tmp_path: Path) -> None:
    """A proxy whose Routes name no rule exports no ami_route_* family (and counts its
    requests in ami_requests_total as ever)."""
    backends = Backends()
    try:
        echo = backends.aiohttp(echo_app())
        proxy = ProxyProcess(tmp_path, {"reviews": [echo]},
                             routes=[{"host": "reviews", "rules": [{"backends": [{}]}]}]).start()
        try:
            assert backends.call(roundtrip(proxy.outbound, get("reviews", "/"))).status == 200
            text = proxy.get("/metrics")[1].decode()
            assert metric_value(text, "ami_requests_total", destination_service="reviews") == 1
            assert "ami_route_" not in text
        finally:
            proxy.stop()
    finally:
        backends.close()


def test_gateway_counts_named_rules_as_the_caller(tmp_path: Path) -> None:
    """A gateway applies the Routes of the services it sends to: a named rule's requests are
    counted there too (reporter source)."""
    backends = Backends()
    try:
        echo = backends.aiohttp(echo_app())
        proxy = ProxyProcess(tmp_path, {"reviews": [echo]}, args=("--mode", "gateway"),
                             routes=[ROUTES[0]])
        port = proxy.listen_as_gateway([{"destination": "reviews"}])
        proxy.start()
        try:
            jason = get("example.com", "/g", "end-user: jason\r\n")
            assert backends.call(roundtrip(port, jason)).status == 200
            assert backends.call(roundtrip(port, get("example.com", "/g"))).status == 200
            text = proxy.get("/metrics")[1].decode()
            assert metric_value(text, "ami_route_requests_total", reporter="source",
                                route="default/reviews-route", rule="jason",
                                destination_service="reviews", response_code="200") == 1
            assert metric_value(text, "ami_route_requests_total") == 1
            assert metric_value(text, "ami_requests_total", destination_service="reviews") == 2
        finally:
            proxy.stop()
    finally:
        backends.close()
