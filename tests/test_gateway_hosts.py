"""Gateway rules by host name (`hosts`), as Istio's Gateway hosts: exact names and `*.suffix`."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Iterator
from pathlib import Path

import pytest
from aiohttp import web

from meshctl.api.errors import ValidationError
from meshctl.api.resources import load_documents
from proxy.config import ConfigError, Snapshot
from tests.proxyharness import Backends, ProxyProcess, get, metric_value, read_response


def named_app(name: str) -> web.Application:
    async def answer(request: web.Request) -> web.Response:
        return web.json_response({"app": name, "host": request.headers.get("Host")})

    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", answer)
    return app


@pytest.fixture(scope="module")
def gateway(tmp_path_factory: pytest.TempPathFactory,
            backends: Backends) -> Iterator[tuple[ProxyProcess, int]]:
    shop, blog, fallback = (backends.aiohttp(named_app(n)) for n in ("shop", "blog", "any"))
    proc = ProxyProcess(tmp_path_factory.mktemp("gwhosts"),
                        {"shop": [shop], "blog": [blog], "fallback": [fallback]},
                        args=("--mode", "gateway"))
    port = proc.listen_as_gateway([
        {"hosts": ["shop.example.com"], "destination": "shop"},
        {"hosts": ["*.blog.example.com", "blog.example.com"],
         "match": [{"path": {"prefix": "/posts"}}], "destination": "blog"},
        {"hosts": ["*.example.org"], "destination": "fallback"},
        {"hosts": ["*"], "match": [{"path": {"prefix": "/anyhost"}}], "destination": "fallback"},
    ])
    proc.start()
    yield proc, port
    proc.stop()


@pytest.fixture
def gateway_port(gateway: tuple[ProxyProcess, int]) -> int:
    return gateway[1]


@pytest.mark.parametrize(("host", "path", "expected"), [
    ("shop.example.com", "/", "shop"),
    ("shop.example.com:8080", "/cart", "shop"),  # the port is not part of the name
    ("SHOP.Example.com.", "/", "shop"),  # case and a final dot neither
    ("blog.example.com", "/posts/1", "blog"),
    ("eu.blog.example.com", "/posts/1", "blog"),  # *.suffix: any name ending in it
    ("a.b.example.org", "/", "any"),
    ("blog.example.com", "/about", 404),  # host matches, path does not
    ("example.org", "/", 404),  # *.example.org needs a label before the suffix
    ("shop.example.com.evil.net", "/", 404),
    ("other.example.com", "/", 404),
    ("other.example.com", "/anyhost/x", "any"),  # `*`, as in Istio: any host
    ("10.0.0.1:8080", "/anyhost", "any"),
])
async def test_requests_enter_by_host_name(gateway_port: int, host: str, path: str,
                                           expected: str | int) -> None:
    reader, writer = await asyncio.open_connection("127.0.0.1", gateway_port)
    writer.write(get(host, path))
    resp = await asyncio.wait_for(read_response(reader), 10)
    writer.close()
    if isinstance(expected, int):
        assert (resp.status, resp.header("x-ami-reason")) == (expected, "no_route")
    else:
        assert resp.status == 200 and json.loads(resp.body) == {"app": expected, "host": host}


@pytest.mark.parametrize(("raw_host", "expected"), [
    ("shop.example.com \t", "shop"),  # trailing whitespace is no part of the value
    ("shop.example.com:8080 ", "shop"),
    ("shop example.com ", 400),  # still no host once trimmed
])
async def test_whitespace_after_the_host_is_not_part_of_it(
        gateway_port: int, raw_host: str, expected: str | int) -> None:
    """RFC 9110 5.5: whitespace around a field value is not part of it. llhttp drops the
    leading one only, so `Host: shop.example.com ` was a 400 `bad_request` before."""
    reader, writer = await asyncio.open_connection("127.0.0.1", gateway_port)
    writer.write(f"GET / HTTP/1.1\r\nHost: {raw_host}\r\n\r\n".encode())
    resp = await asyncio.wait_for(read_response(reader), 10)
    writer.close()
    if isinstance(expected, int):
        assert (resp.status, resp.header("x-ami-reason")) == (expected, "bad_request")
    else:
        assert resp.status == 200 and json.loads(resp.body)["app"] == expected


def test_a_gateway_resource_refuses_a_host_that_is_not_a_name(tmp_path: Path) -> None:
    text = ("apiVersion: ami.mesh/v1alpha1\nkind: Gateway\nmetadata: {name: edge}\n"
            "spec:\n  listen: 0.0.0.0:8080\n  rules:\n"
            "    - {hosts: [shop.example.com, 'x*.example.com'], destination: shop}\n")
    with pytest.raises(ValidationError) as caught:
        load_documents(text, "gw.yaml")
    assert "spec.rules[0].hosts[1]" in str(caught.value)
    assert "*. and a DNS suffix, or * for any host" in str(caught.value)


def test_the_snapshot_parses_gateway_rules_like_the_resource() -> None:
    """One parser for both: the snapshot's gateway.rules get the same checks and fields."""
    rules = Snapshot.from_dict({"gateway": {"rules": [
        {"hosts": ["*.example.com"], "destination": "web"}]}}).gateway_rules
    assert rules[0].hosts == ("*.example.com",) and rules[0].destination == "web"
    assert Snapshot.from_dict({"gateway": {"rules": []}}).gateway_rules == ()
    with pytest.raises(ConfigError, match=r"gateway.rules\[0\].destination"):
        Snapshot.from_dict({"gateway": {"rules": [{"hosts": ["a.example"]}]}})


async def test_unrouted_hosts_at_the_gateway_are_not_metric_labels(
        gateway: tuple[ProxyProcess, int]) -> None:
    """Anyone can send the gateway any Host: its 404s are counted under
    `destination_service="unknown"`, never one series (and one `meshctl stat` row) per name."""
    proc, port = gateway
    for i in range(3):
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(get(f"a-{i}.evil.example", "/nosuch"))
        resp = await asyncio.wait_for(read_response(reader), 10)
        writer.close()
        assert (resp.status, resp.header("x-ami-reason")) == (404, "no_route")
    exposition = await proc.metrics()
    assert "evil.example" not in exposition
    assert metric_value(exposition, "ami_requests_total", destination_service="unknown",
                        response_flags="no_route") >= 3


async def test_a_gateway_policy_on_ports_names_the_gateway_port(
        tmp_path: Path, backends: Backends) -> None:
    """At the gateway, `to: ports` is its listening port (as at Istio's ingress): a DENY on
    that port applies there, one on another port does not."""
    import yaml

    shop = backends.aiohttp(named_app("shop"))
    proc = ProxyProcess(tmp_path, {"shop": [shop]}, args=("--mode", "gateway"))
    port = proc.listen_as_gateway([{"destination": "shop"}])
    config = yaml.safe_load(proc.config.read_text())
    config["inbound"] = {"authorization": [
        {"selector": {"service": "client"}, "action": "DENY",
         "rules": [{"to": [{"ports": [port], "paths": ["/blocked/*"]}]},
                   {"to": [{"ports": [port + 1], "paths": ["/other/*"]}]}]}]}
    proc.config.write_text(yaml.safe_dump(config))
    proc.start()
    try:
        answers = {}
        for path in ("/blocked/x", "/other/x", "/open"):
            reader, writer = await asyncio.open_connection("127.0.0.1", port)
            writer.write(get("shop.example.com", path))
            resp = await asyncio.wait_for(read_response(reader), 10)
            writer.close()
            answers[path] = (resp.status, resp.header("x-ami-reason"))
    finally:
        proc.stop()
    assert answers == {"/blocked/x": (403, "not_authorized"), "/other/x": (200, None),
                       "/open": (200, None)}


async def test_a_gateway_counts_its_policies_under_its_metrics_name(
        tmp_path: Path, backends: Backends) -> None:
    """A gateway whose name another namespace has too (`metricsName: client.edge`) counts its
    policies' decisions and refusals under that name, as its sidecar-side policy does and as
    `meshctl authz` looks them up: under its bare name they would add up with the other
    namespace's gateway."""
    import urllib.request

    import yaml

    shop = backends.aiohttp(named_app("shop"))
    proc = ProxyProcess(tmp_path, {"shop": [shop]}, args=("--mode", "gateway"))
    port = proc.listen_as_gateway([{"destination": "shop"}])
    config = yaml.safe_load(proc.config.read_text())
    config.setdefault("node", {}).update({"service": "client", "metricsName": "client.edge"})
    config["inbound"] = {"authorization": [
        {"name": "edge/deny-blocked", "selector": {"service": "client"}, "action": "DENY",
         "rules": [{"to": [{"paths": ["/blocked/*"]}]}]}]}
    proc.config.write_text(yaml.safe_dump(config))
    proc.start()
    try:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(get("shop.example.com", "/blocked/x"))
        resp = await asyncio.wait_for(read_response(reader), 10)
        writer.close()
        assert resp.status == 403
        with urllib.request.urlopen(f"http://127.0.0.1:{proc.admin}/metrics",
                                    timeout=5) as r:
            exposition = r.read().decode()
    finally:
        proc.stop()
    assert metric_value(exposition, "ami_authz_decisions_total", policy="edge/deny-blocked",
                        destination_service="client.edge") == 1
    assert metric_value(exposition, "ami_authorization_denied_total",
                        destination_service="client.edge") == 1
    assert 'destination_service="client"' not in exposition
