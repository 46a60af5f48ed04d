"""Locality load balancing in a real static-mode proxy (node.locality r1/a): traffic stays in
the caller's zone, fails over zone, then region, as outlier detection ejects endpoints, comes
back after baseEjectionTime; distribute, subsets and consistent hashing with localities; what
/config_dump and meshctl proxy-config show of it."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Iterator
from typing import Any

import aiohttp
import pytest

from meshctl.commands.proxyconfig import render
from proxy.policy.sticky import endpoint_token
from tests.proxyharness import Backends
from tests.traffic_backends import (
    TrafficBackend,
    TrafficProxy,
    call,
    start_backend,
    started,
    versions,
)

# One 5xx ejects; an ejection lasts 1 s (the first time); every endpoint may be ejected.
OUTLIERS = {"consecutive5xxErrors": 1, "interval": "1s", "baseEjectionTime": "1s",
            "maxEjectionPercent": 100}
# For the view: an ejection that outlasts the test (the dump must see it still in force).
LASTING = {**OUTLIERS, "baseEjectionTime": "300s"}


def _endpoint(backend: TrafficBackend, locality: str, version: str = "v1") -> dict[str, Any]:
    return {"address": backend.address, "labels": {"version": version}, "locality": locality}


@pytest.fixture(scope="module")
def env(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    hub = Backends()
    b = {name: start_backend(hub, version=name) for name in (
        "a1", "b1", "c1",  # api: zone r1/a, zone r1/b, region r2
        "d-a", "d-b", "d-c",  # dist
        "v1-a", "v2-a", "v2-b",  # canary
        "h-a1", "h-a2", "h-b1",  # sticky
        "k-a1", "k-a2", "k-b1",  # cookie
        "s-a", "s-b", "p-a", "p-b")}  # shown, plain
    services = {
        "api": {"endpoints": [_endpoint(b["c1"], "r2/c"), _endpoint(b["b1"], "r1/b"),
                              _endpoint(b["a1"], "r1/a")],
                "policy": {"loadBalancer": "ROUND_ROBIN", "outlierDetection": OUTLIERS}},
        # no outlier detection: the weights alone decide; r2 is covered by no pattern
        "dist": {"endpoints": [_endpoint(b["d-a"], "r1/a"), _endpoint(b["d-b"], "r1/b"),
                               _endpoint(b["d-c"], "r2/c")],
                 "policy": {"localityLbSetting": {"distribute": [
                     {"from": "r1/a/*", "to": {"r1/a/*": 50, "r1/b/*": 50}}]}}},
        "canary": {"endpoints": [_endpoint(b["v1-a"], "r1/a", "v1"),
                                 _endpoint(b["v2-b"], "r1/b", "v2"),
                                 _endpoint(b["v2-a"], "r1/a", "v2")],
                   "policy": {"outlierDetection": OUTLIERS}},
        "sticky": {"endpoints": [_endpoint(b["h-a1"], "r1/a"), _endpoint(b["h-a2"], "r1/a"),
                                 _endpoint(b["h-b1"], "r1/b")],
                   "policy": {"loadBalancer": "CONSISTENT_HASH",
                              "consistentHash": {"header": "x-user"},
                              "outlierDetection": OUTLIERS}},
        "cookie": {"endpoints": [_endpoint(b["k-a1"], "r1/a"), _endpoint(b["k-a2"], "r1/a"),
                                 _endpoint(b["k-b1"], "r1/b")],
                   "policy": {"loadBalancer": "CONSISTENT_HASH",
                              "consistentHash": {"httpCookie": {"name": "sticky", "ttl": "1h"}},
                              "outlierDetection": OUTLIERS}},
        "shown": {"endpoints": [_endpoint(b["s-b"], "r1/b"), _endpoint(b["s-a"], "r1/a")],
                  "policy": {"outlierDetection": LASTING}},
        # localities, but no outlier detection nor distribute: not balanced by locality
        "plain": {"endpoints": [_endpoint(b["p-a"], "r1/a"), _endpoint(b["p-b"], "r1/b")]},
    }
    routes = [{"host": "canary", "rules": [{"backends": [{"subset": "v2"}]}]}]
    proxy = TrafficProxy(tmp_path_factory.mktemp("locality"), services, routes,
                         node={"service": "client", "labels": {"version": "v1"},
                               "locality": "r1/a"})
    for p in started(proxy, hub):
        yield {"proxy": p, **b}


async def test_traffic_fails_over_zone_then_region_and_comes_back(
        env: dict[str, Any], session: aiohttp.ClientSession) -> None:
    """All to zone a (round robin over three endpoints would spread it); a's 5xx ejects it:
    all to zone b of the same region; b ejected too: all to region r2; once a answers again
    and its ejection time is over, all back to zone a."""
    proxy: TrafficProxy = env["proxy"]
    a1, b1 = env["a1"], env["b1"]
    assert await versions(session, proxy, "api", 20) == {"a1": 20}
    a1.status = 500
    assert (await call(session, proxy, "api")).version == "a1"  # the 5xx that ejects a1
    assert await versions(session, proxy, "api", 20) == {"b1": 20}
    b1.status = 500
    assert (await call(session, proxy, "api")).version == "b1"
    assert await versions(session, proxy, "api", 10) == {"c1": 10}
    a1.status = b1.status = 200
    seen = await _until(session, proxy, "api", "a1", timeout=10)
    assert set(seen) <= {"c1", "b1", "a1"}
    assert await versions(session, proxy, "api", 20) == {"a1": 20}
    assert await proxy.metric("ami_outlier_ejections_total", destination_service="api") == 2


async def _until(session: aiohttp.ClientSession, proxy: TrafficProxy, host: str, version: str,
                 timeout: float) -> list[str | None]:
    """Requests until one is answered by ``version`` (a deadline-bounded wait); the versions
    that answered."""
    loop = asyncio.get_running_loop()
    end = loop.time() + timeout
    seen: list[str | None] = []
    while not seen or seen[-1] != version:
        assert loop.time() < end, f"no answer from {version} within {timeout}s: {seen[-5:]}"
        if seen:
            await asyncio.sleep(0.05)  # poll interval of a deadline-bounded wait
        seen.append((await call(session, proxy, host)).version)
    return seen


async def test_distribute_sends_each_locality_its_share(
        env: dict[str, Any], session: aiohttp.ClientSession) -> None:
    """distribute r1/a -> 50% r1/a, 50% r1/b: both zones get traffic, region r2 none."""
    spread = await versions(session, env["proxy"], "dist", 200)
    assert set(spread) == {"d-a", "d-b"} and 60 < spread["d-a"] < 140


async def test_a_subset_is_ordered_by_its_own_endpoints(
        env: dict[str, Any], session: aiohttp.ClientSession) -> None:
    """The route's subset v2 goes to v2 in zone a, never to v1 though v1 is in zone a too."""
    assert await versions(session, env["proxy"], "canary", 20) == {"v2-a": 20}


async def test_consistent_hash_keeps_keys_in_the_zone(
        env: dict[str, Any], session: aiohttp.ClientSession) -> None:
    """Each user sticks to one endpoint, all in zone a."""
    proxy: TrafficProxy = env["proxy"]
    owners = {}
    for user in range(24):  # two owners for 24 keys: all on one would be a 1e-7 chance
        seen = await versions(session, proxy, "sticky", 3, headers={"x-user": f"u{user}"})
        assert len(seen) == 1
        owners[user] = next(iter(seen))
    assert set(owners.values()) <= {"h-a1", "h-a2"} and len(set(owners.values())) == 2


async def test_a_cookie_keeps_its_endpoint_in_any_zone_and_new_clients_stay_in_theirs(
        env: dict[str, Any], session: aiohttp.ClientSession) -> None:
    """consistentHash.httpCookie over locality: clients without the cookie get zone a's
    endpoints, and a cookie naming theirs; a cookie naming zone b's endpoint (set while zone a
    was out, say) keeps its client there. The dump shows the destination's priorities as for
    any balancer."""
    proxy: TrafficProxy = env["proxy"]
    seen = set()
    for _ in range(20):
        async with aiohttp.ClientSession() as fresh:  # a new client connection each time
            reply = await call(fresh, proxy, "cookie")
        assert reply.status == 200 and reply.version in {"k-a1", "k-a2"}
        cookie = reply.headers["set-cookie"].split(";")[0]
        assert cookie == f"sticky={endpoint_token(env[reply.version].address)}"
        seen.add(reply.version)
        again = await versions(session, proxy, "cookie", 3, headers={"cookie": cookie})
        assert again == {reply.version: 3}
    assert seen == {"k-a1", "k-a2"}
    far = f"sticky={endpoint_token(env['k-b1'].address)}"
    assert await versions(session, proxy, "cookie", 5, headers={"cookie": far}) == {"k-b1": 5}
    groups = (await _dump(proxy))["locality"]["cookie"]["groups"]
    assert [g["share"] for g in groups] == [100, 0]


async def _dump(proxy: TrafficProxy) -> dict[str, Any]:
    status, body = await proxy.aget("/config_dump")
    assert status == 200
    dump: dict[str, Any] = json.loads(body)
    return dump


def _rows(dump: dict[str, Any], service: str) -> list[list[str]]:
    """proxy-config's ENDPOINTS rows of ``service``, split into cells, up to STATUS and
    ACTIVE (the live columns: tests/test_traffic_panic.py)."""
    lines = render(dump).splitlines()
    table = lines[lines.index("ENDPOINTS") + 1:]
    return [[c.strip() for c in line.split("  ") if c.strip()][:-2] for line in table
            if line.startswith(f"{service} ")]


async def test_the_dump_and_proxy_config_show_priorities_and_shares(
        env: dict[str, Any], session: aiohttp.ClientSession) -> None:
    """`shown` from r1/a: P0 its zone-a endpoint with 100% of the traffic, P1 zone b with 0%;
    once zone a's endpoint is ejected, 0% and 100%, in /config_dump and in proxy-config's
    ENDPOINTS table (`plain`, not balanced by locality, has no such state: '-')."""
    proxy: TrafficProxy = env["proxy"]
    a, b = env["s-a"].address, env["s-b"].address
    dump = await _dump(proxy)
    assert dump["locality"]["shown"] == {"mode": "failover", "groups": [
        {"endpoints": [a], "ejected": [], "share": 100},
        {"endpoints": [b], "ejected": [], "share": 0}]}
    assert "plain" not in dump["locality"]
    assert dump["locality"]["dist"]["mode"] == "distribute"
    assert [g["share"] for g in dump["locality"]["dist"]["groups"]] == [50, 50]
    assert "canary/v2" in dump["locality"]  # the route's subset: its own priorities
    assert _rows(dump, "shown") == [[ "shown", b, "v1", "-", "r1/b", "P1", "0%"],
                                    ["shown", a, "v1", "-", "r1/a", "P0", "100%"]]
    assert [row[-2:] for row in _rows(dump, "plain")] == [["-", "-"], ["-", "-"]]

    env["s-a"].status = 500
    assert (await call(session, proxy, "shown")).version == "s-a"  # the 5xx that ejects it
    dump = await _dump(proxy)
    assert dump["locality"]["shown"] == {"mode": "failover", "groups": [
        {"endpoints": [a], "ejected": [a], "share": 0},
        {"endpoints": [b], "ejected": [], "share": 100}]}
    assert _rows(dump, "shown") == [["shown", b, "v1", "-", "r1/b", "P1", "100%"],
                                    ["shown", a, "v1", "-", "r1/a", "P0 (ejected)", "0%"]]
    assert await versions(session, proxy, "shown", 10) == {"s-b": 10}  # as the dump says
