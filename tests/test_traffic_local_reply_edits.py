"""A rule's response header edits on the proxy's own replies for its requests, with a real proxy.

As Envoy applies a route's response_headers_to_add to the router's local replies, a reply the
proxy makes for a routed request (a timeout, an overflow, no healthy upstream, a fault's abort)
gets the rule's `response: {set, add, remove}` edits, over HTTP/1.1 and HTTP/2 (gRPC too),
while its framing, its `x-ami-reason` header and the reason in metrics stay as they are.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from typing import Any

import pytest

from tests.h2app import GRPC, h2_request
from tests.proxyharness import Backends, get, roundtrip
from tests.traffic_backends import TrafficProxy, endpoints, start_backend, started

EDITS = {"set": {"cache-control": "no-store"}, "add": {"x-added": "a"},
         "remove": ["server", "content-type", "x-ami-reason"]}


@pytest.fixture(scope="module")
def env(tmp_path_factory: pytest.TempPathFactory) -> Iterator[TrafficProxy]:
    hub = Backends()
    slow = start_backend(hub, delay=1.0)
    busy = start_backend(hub, delay=0.5)
    fast = start_backend(hub)
    services: dict[str, Any] = {
        "slow": {"endpoints": endpoints(slow)},
        "api": {"endpoints": endpoints(fast)},
        "cb": {"endpoints": endpoints(busy), "policy": {"connectionPool": {
            "maxConnections": 1, "maxPendingRequests": 0}}},
        "empty": {"endpoints": []},
    }
    routes: list[dict[str, Any]] = [
        {"host": "slow", "rules": [{"backends": [{}], "timeout": "200ms",
                                    "headers": {"response": EDITS}}]},
        {"host": "abort", "rules": [
            {"backends": [{"service": "api"}], "fault": {"abort": {"httpStatus": 503}},
             "headers": {"response": {"set": {"x-edit": "1"},
                                      "remove": ["grpc-status", "grpc-message"]}}}]},
        {"host": "cb", "rules": [{"backends": [{}],
                                  "headers": {"response": {"set": {"x-edit": "cb"}}}}]},
        {"host": "empty", "rules": [{"backends": [{}],
                                     "headers": {"response": {"set": {"x-edit": "empty"}}}}]},
        {"host": "plain", "rules": [{"backends": [{"service": "empty"}]}]},
    ]
    yield from started(TrafficProxy(tmp_path_factory.mktemp("local-edits"), services, routes),
                       hub)


async def test_a_timeout_carries_the_rules_response_edits(env: TrafficProxy) -> None:
    """`set`, `add` and `remove` apply to the 504; its reason header and length stay."""
    resp = await roundtrip(env.outbound, get("slow"))
    assert (resp.status, resp.header("x-ami-reason")) == (504, "timeout")
    assert resp.header("cache-control") == "no-store"
    assert resp.header("x-added") == "a"
    assert resp.header("content-type") is None  # removed, as the rule says
    assert resp.header("content-length") == str(len(resp.body))
    assert resp.body.startswith(b"timeout: ")
    assert await env.metric("ami_requests_total", destination_service="slow",
                            response_code="504", response_flags="timeout") >= 1


@pytest.mark.parametrize(("host", "status", "reason"), [
    ("abort", 503, "fault_injected"),
    ("empty", 503, "no_healthy_upstream"),
])
async def test_other_local_replies_carry_them_too(env: TrafficProxy, host: str, status: int,
                                                  reason: str) -> None:
    resp = await roundtrip(env.outbound, get(host))
    assert (resp.status, resp.header("x-ami-reason")) == (status, reason)
    assert resp.header("x-edit") == ("1" if host == "abort" else host)
    assert resp.header("content-type") == "text/plain; charset=utf-8"


async def test_an_overflow_carries_them(env: TrafficProxy) -> None:
    replies = await asyncio.gather(*(roundtrip(env.outbound, get("cb")) for _ in range(2)))
    assert sorted((r.status, r.header("x-ami-reason")) for r in replies) == [
        (200, None), (503, "overflow")]
    assert [r.header("x-edit") for r in replies] == ["cb", "cb"]  # the upstream's answer too


async def test_a_rule_without_edits_changes_nothing(env: TrafficProxy) -> None:
    resp = await roundtrip(env.outbound, get("plain"))
    assert (resp.status, resp.header("x-ami-reason")) == (503, "no_healthy_upstream")
    assert [n.lower() for n, _ in resp.headers] == [
        "content-type", "content-length", "x-ami-reason"]


async def test_http2_local_replies_carry_them(env: TrafficProxy) -> None:
    timeout = await h2_request(env.outbound, "slow")
    assert (timeout.status, timeout.get("x-ami-reason")) == (504, "timeout")
    assert (timeout.get("cache-control"), timeout.get("x-added")) == ("no-store", "a")
    assert timeout.get("content-type") is None
    assert timeout.get("content-length") == str(len(timeout.body))
    abort = await h2_request(env.outbound, "abort")
    assert (abort.status, abort.get("x-ami-reason"), abort.get("x-edit")) == (
        503, "fault_injected", "1")
    assert abort.get("content-type") == "text/plain; charset=utf-8"


async def test_a_grpc_local_reply_keeps_its_status_fields(env: TrafficProxy) -> None:
    """A trailers-only gRPC answer gets the edits, but keeps its content-type, grpc-status and
    grpc-message whatever the rule removes (they say how the call ended)."""
    resp = await h2_request(env.outbound, "abort", "/echo.Echo/Unary", method="POST",
                            headers=GRPC, body=b"\x00\x00\x00\x00\x00")
    assert (resp.status, resp.get("x-ami-reason"), resp.get("x-edit")) == (
        200, "fault_injected", "1")
    assert resp.get("content-type") == "application/grpc"
    assert resp.get("grpc-status") == "14"  # 503: UNAVAILABLE
    assert (resp.get("grpc-message") or "").startswith("fault_injected")
