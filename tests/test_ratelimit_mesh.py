"""The local rate limit across the mesh hop, with real sidecar processes: a caller's sidecar
(`productpage`, outbound, routes with retries) -> mTLS -> the destination's sidecar (its
inbound rateLimit) -> the app: `ratings` an HTTP echo app, `reviews` a gRPC one.

A rate-limited answer is never retried by the caller's sidecar, whatever the route's
`retryOn` (as Envoy does not retry an answer with `x-envoy-ratelimited`): the destination
asked for less traffic, and a retry would only add more."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import grpc
import pytest

from tests.grpcapp import EchoServer, channel, method, serving_in_thread
from tests.ports import free_port
from tests.proxyharness import Backends, ProxyProcess, echo_app, get, metric_value, roundtrip
from tests.test_mtls_static import mesh_ca, mint, sid, start_proxy

DEADLINE = 10.0
# Retried on everything a rate-limited answer could look like, and on the app's 503.
RETRIES = {"attempts": 3, "retryOn": ["unavailable", "resource-exhausted",
                                      "retriable-status-codes", "5xx"],
           "retriableStatusCodes": [429],
           "backoff": {"baseInterval": "5ms", "maxInterval": "10ms"}}


@dataclass
class Hop:
    caller: ProxyProcess
    ratings: ProxyProcess  # burst 5, one token per 1000 s: no run sees a refill
    reviews: ProxyProcess  # burst 1, the same refill


@pytest.fixture(scope="module")
def hop(tmp_path_factory: pytest.TempPathFactory, backends: Backends) -> Iterator[Hop]:
    tmp = tmp_path_factory.mktemp("rl-hop")
    ca = mesh_ca(tmp / "ca", backdate=60)
    grpc_app = EchoServer("reviews")
    http_app = backends.aiohttp(echo_app())
    procs: list[ProxyProcess] = []
    with serving_in_thread(grpc_app, deadline=DEADLINE):
        try:
            ports = {"ratings": free_port(), "reviews": free_port()}
            for name, app, burst in (("ratings", http_app, 5), ("reviews", grpc_app.port, 1)):
                procs.append(start_proxy(tmp / name, mint(ca, name), {
                    "node": {"service": name, "labels": {"version": "v1"}},
                    "app": f"127.0.0.1:{app}", "mesh": {"mtls": "STRICT"},
                    "inbound": {"rateLimit": {"requestsPerSecond": 0.001, "burst": burst}},
                }, inbound=ports[name]))
            caller = start_proxy(tmp / "productpage", mint(ca, "productpage"), {
                "node": {"service": "productpage", "labels": {"version": "v1"}},
                "mesh": {"mtls": "STRICT"},
                "services": {name: {"endpoints": [{
                    "address": f"127.0.0.1:{port}", "labels": {"version": "v1"},
                    "identity": sid(name)}]} for name, port in ports.items()},
                "routes": [{"host": name, "rules": [{"backends": [{"weight": 100}],
                                                     "retries": RETRIES}]}
                           for name in ports],
            })
            procs.append(caller)
            yield Hop(caller, procs[0], procs[1])
        finally:
            for proc in procs:
                proc.stop()


async def _count(proxy: ProxyProcess, name: str) -> float:
    return metric_value(await proxy.metrics(), name)


async def test_a_rate_limited_http_answer_is_not_retried(hop: Hop) -> None:
    """An app's 503 is retried (the route's retries work: 4 tokens spent); the 429 of the
    destination's sidecar, though `retriableStatusCodes` lists 429, is passed back at once:
    the destination refused one request, not four."""
    failing = await roundtrip(hop.caller.outbound, get("ratings", "/status/503"))
    assert failing.status == 503
    assert await _count(hop.caller, "ami_retries_total") == 3
    assert (await roundtrip(hop.caller.outbound, get("ratings", "/last-token"))).status == 200
    limited = await roundtrip(hop.caller.outbound, get("ratings", "/r"))
    assert (limited.status, limited.header("x-ami-reason")) == (429, "rate_limited")
    assert limited.header("retry-after") is not None
    assert await _count(hop.ratings, "ami_rate_limited_total") == 1
    assert await _count(hop.caller, "ami_retries_total") == 3


async def test_a_rate_limited_grpc_call_is_not_retried(hop: Hop) -> None:
    """The destination's sidecar answers a rate-limited gRPC call UNAVAILABLE (gRPC's
    mapping of 429, Envoy's default); a route retrying on `unavailable` does not retry it."""
    before = await _count(hop.caller, "ami_retries_total")
    async with channel(hop.caller.outbound, "reviews") as ch:
        await method(ch, "Unary")(b"first", timeout=DEADLINE)  # the bucket's one token
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await method(ch, "Unary")(b"second", timeout=DEADLINE)
    assert err.value.code() == grpc.StatusCode.UNAVAILABLE
    metadata = (*(err.value.initial_metadata() or ()), *(err.value.trailing_metadata() or ()))
    assert ("x-ami-reason", "rate_limited") in metadata
    assert await _count(hop.reviews, "ami_rate_limited_total") == 1
    assert await _count(hop.caller, "ami_retries_total") == before
