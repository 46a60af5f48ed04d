"""CONSISTENT_HASH load balancing (sticky by header, query parameter) through real proxies."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest

from tests.proxyharness import Backends, get, roundtrip
from tests.traffic_backends import TrafficBackend, TrafficProxy, endpoints, start_backend, started


@pytest.fixture(scope="module")
def backends() -> Iterator[tuple[Backends, list[TrafficBackend]]]:
    hub = Backends()
    yield hub, [start_backend(hub, version=f"v{i}") for i in range(3)]


def _proxy(tmp: Any, eps: list[TrafficBackend]) -> TrafficProxy:
    services = {
        "byuser": {"endpoints": endpoints(*eps), "policy": {
            "loadBalancer": "CONSISTENT_HASH", "consistentHash": {"header": "x-user"}}},
        "bysession": {"endpoints": endpoints(*eps), "policy": {
            "loadBalancer": "CONSISTENT_HASH", "consistentHash": {"queryParameter": "s"}}},
    }
    return TrafficProxy(tmp, services, [])


@pytest.fixture(scope="module")
def two_proxies(tmp_path_factory: pytest.TempPathFactory,
                backends: tuple[Backends, list[TrafficBackend]]) -> Iterator[list[TrafficProxy]]:
    """Two independent sidecars (two processes) in front of the same three endpoints."""
    hub, eps = backends
    first = _proxy(tmp_path_factory.mktemp("hash1"), eps).start()
    try:
        for second in started(_proxy(tmp_path_factory.mktemp("hash2"), eps), hub):
            yield [first, second]
    finally:
        first.stop()


async def _version(proxy: TrafficProxy, host: str, path: str, user: str | None = None) -> str:
    extra = f"x-user: {user}\r\n" if user is not None else ""
    resp = await roundtrip(proxy.outbound, get(host, path, extra=extra))
    assert resp.status == 200
    return str(resp.header("x-version"))


async def test_a_user_sticks_to_one_endpoint_in_every_sidecar(
        two_proxies: list[TrafficProxy]) -> None:
    """Each user always reaches the same endpoint, and both sidecars agree on which (the hash
    is not salted per process); many users spread over all three."""
    owner: dict[str, str] = {}
    for i in range(40):
        user = f"user-{i}"
        seen = {await _version(p, "byuser", "/", user) for p in two_proxies for _ in range(3)}
        assert len(seen) == 1, (user, seen)
        owner[user] = seen.pop()
    assert set(owner.values()) == {"v0", "v1", "v2"}


async def test_a_header_sent_twice_is_keyed_by_all_its_values_in_any_order(
        two_proxies: list[TrafficProxy]) -> None:
    """`x-user` sent twice keys the request by both values, whatever their order, as Envoy's
    header hash (each value, sorted): `a` then `b` and `b` then `a` reach the same endpoint
    (keyed by the first value alone, most pairs would not)."""
    proxy = two_proxies[0]
    for i in range(20):
        first, second = f"pair-{i}-a", f"pair-{i}-b"
        ab = await _version(proxy, "byuser", "/", f"{first}\r\nx-user: {second}")
        ba = await _version(proxy, "byuser", "/", f"{second}\r\nx-user: {first}")
        assert ab == ba, (i, ab, ba)


async def test_a_query_parameter_can_be_the_key(two_proxies: list[TrafficProxy]) -> None:
    for session in ("a1", "b2", "c3", "d4"):
        seen = {await _version(p, "bysession", f"/cart?x=1&s={session}")
                for p in two_proxies for _ in range(3)}
        assert len(seen) == 1, (session, seen)


async def test_requests_without_the_key_are_spread(two_proxies: list[TrafficProxy]) -> None:
    seen = {await _version(two_proxies[0], "byuser", "/") for _ in range(60)}
    assert len(seen) > 1
