"""The panic threshold (outlierDetection.minHealthPercent) in a real static-mode proxy: as
outlier detection ejects most endpoints, traffic spreads over all of them again instead of
piling onto the survivors; with locality priorities, each priority panics by Envoy's rules.
What /config_dump, proxy-config and the metrics show of it."""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import aiohttp
import pytest

from meshctl.commands.proxyconfig import render
from tests.proxyharness import Backends
from tests.traffic_backends import (
    TrafficBackend,
    TrafficProxy,
    call,
    start_backend,
    started,
    versions,
)

# One 5xx ejects for longer than the test; every endpoint may be ejected; panic below 50%.
PANIC = {"consecutive5xxErrors": 1, "interval": "1s", "baseEjectionTime": "300s",
         "maxEjectionPercent": 100, "minHealthPercent": 50}


def _endpoint(backend: TrafficBackend, locality: str | None = None) -> dict[str, Any]:
    return {"address": backend.address, "labels": {"version": "v1"},
            **({"locality": locality} if locality else {})}


@pytest.fixture(scope="module")
def env(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    hub = Backends()
    b = {name: start_backend(hub, version=name) for name in (
        "e0", "e1", "e2", "e3", "a1", "a2", "b1", "b2", "s0", "s1")}
    services = {
        # no endpoint locality: one priority, the whole service
        "api": {"endpoints": [_endpoint(b[n]) for n in ("e0", "e1", "e2", "e3")],
                "policy": {"loadBalancer": "ROUND_ROBIN", "outlierDetection": PANIC}},
        # P0 zone r1/a (the caller's), P1 zone r1/b
        "zoned": {"endpoints": [_endpoint(b["a1"], "r1/a"), _endpoint(b["a2"], "r1/a"),
                                _endpoint(b["b1"], "r1/b"), _endpoint(b["b2"], "r1/b")],
                  "policy": {"loadBalancer": "ROUND_ROBIN", "outlierDetection": PANIC}},
        # the same without a threshold: the survivor takes everything
        "solo": {"endpoints": [_endpoint(b["s0"]), _endpoint(b["s1"])],
                 "policy": {"loadBalancer": "ROUND_ROBIN", "outlierDetection": {
                     **PANIC, "minHealthPercent": 0}}},
    }
    proxy = TrafficProxy(tmp_path_factory.mktemp("panic"), services, [],
                         node={"service": "client", "labels": {"version": "v1"},
                               "locality": "r1/a"})
    for p in started(proxy, hub):
        yield {"proxy": p, **b}


async def _until_answered(session: aiohttp.ClientSession, proxy: TrafficProxy, host: str,
                          names: set[str], limit: int = 200) -> None:
    """Calls until each of ``names`` answered one (its 5xx ejects it), at most ``limit``."""
    left = set(names)
    for _ in range(limit):
        left.discard(str((await call(session, proxy, host)).version))
        if not left:
            return
    raise AssertionError(f"{sorted(left)} not called in {limit} requests")


async def _dump(proxy: TrafficProxy) -> dict[str, Any]:
    status, body = await proxy.aget("/config_dump")
    assert status == 200
    dump: dict[str, Any] = json.loads(body)
    return dump


async def test_most_endpoints_ejected_spreads_traffic_over_all_again(
        env: dict[str, Any], session: aiohttp.ClientSession) -> None:
    """e0, e1, e2 answer 5xx: two ejected (50% healthy, not below 50%) leave e2 and e3 the
    traffic; the third (25%) puts `api` in panic: round robin over all four again, once
    counted, shown in /config_dump and proxy-config."""
    proxy: TrafficProxy = env["proxy"]
    assert set(await versions(session, proxy, "api", 8)) == {"e0", "e1", "e2", "e3"}
    assert (await _dump(proxy))["outlier"]["api"] == {
        "minHealthPercent": 50, "panic": False,
        "levels": [{"healthy": 4, "endpoints": 4, "panic": False}]}
    for name in ("e0", "e1"):
        env[name].status = 500
    seen = await versions(session, proxy, "api", 8)  # ejects e0 and e1 on their first 5xx
    assert seen["e0"] == seen["e1"] == 1
    assert set(await versions(session, proxy, "api", 8)) == {"e2", "e3"}  # not yet panic
    assert await proxy.metric("ami_outlier_panics_total", destination_service="api") == 0
    env["e2"].status = 500
    await versions(session, proxy, "api", 2)  # e2's 5xx ejects it: 1 of 4 healthy
    assert await versions(session, proxy, "api", 40) == {"e0": 10, "e1": 10, "e2": 10,
                                                          "e3": 10}
    assert await proxy.metric("ami_outlier_ejections_total", destination_service="api") == 3
    assert await proxy.metric("ami_outlier_panics_total", destination_service="api") == 1
    dump = await _dump(proxy)
    assert dump["outlier"]["api"] == {
        "minHealthPercent": 50, "panic": True,
        "levels": [{"healthy": 1, "endpoints": 4, "panic": True}]}
    lines = render(dump).splitlines()
    table = lines[lines.index("PANIC THRESHOLDS (outlierDetection.minHealthPercent)") + 1:]
    assert [c.strip() for c in table[1].split("  ") if c.strip()] == [
        "api", "50%", "1/4 (panic)", "yes: ejections ignored"]
    # each endpoint's live state: the three ejected ones take traffic all the same (panic)
    names = {env[n].address: n for n in ("e0", "e1", "e2", "e3")}
    health = {names[e["address"]]: e for e in dump["endpointHealth"]["api"]["endpoints"]}
    assert {n: (e["status"], e.get("panic")) for n, e in health.items()} == {
        "e0": ("EJECTED", True), "e1": ("EJECTED", True), "e2": ("EJECTED", True),
        "e3": ("HEALTHY", None)}
    assert all(0 < health[n]["ejectedSeconds"] <= 300 for n in ("e0", "e1", "e2"))
    statuses = {names[row[1]]: row[-2] for row in _endpoint_rows(lines) if row[0] == "api"}
    assert statuses["e3"] == "HEALTHY"
    assert all(statuses[n].startswith("EJECTED (") and statuses[n].endswith(" left) (panic)")
               for n in ("e0", "e1", "e2")), statuses
    assert dump["certificate"] is None  # a static proxy without --identity-dir


async def test_without_a_threshold_the_survivor_takes_everything(
        env: dict[str, Any], session: aiohttp.ClientSession) -> None:
    """minHealthPercent 0 (the default): s0 ejected, all to s1; no panic view for it."""
    proxy: TrafficProxy = env["proxy"]
    env["s0"].status = 500
    await versions(session, proxy, "solo", 2)
    assert await versions(session, proxy, "solo", 20) == {"s1": 20}
    assert "solo" not in (await _dump(proxy)).get("outlier", {})


async def test_each_priority_panics_by_envoys_rules(
        env: dict[str, Any], session: aiohttp.ClientSession) -> None:
    """Zone a (P0) ejected: zone b takes it all, no panic (it can: availability 100%); b1
    ejected too: P0 is in panic but gets no load, P1 (50%, not below) only its healthy b2;
    b2 ejected: every priority in panic, the traffic over all four by size (Envoy's total
    panic)."""
    proxy: TrafficProxy = env["proxy"]
    assert set(await versions(session, proxy, "zoned", 8)) == {"a1", "a2"}
    env["a1"].status = env["a2"].status = 500
    # (a1 ejected, zone a keeps only 70%: a2 is not necessarily next)
    await _until_answered(session, proxy, "zoned", {"a1", "a2"})
    assert set(await versions(session, proxy, "zoned", 8)) == {"b1", "b2"}
    env["b1"].status = 500
    await _until_answered(session, proxy, "zoned", {"b1"})
    assert await versions(session, proxy, "zoned", 10) == {"b2": 10}
    view = (await _dump(proxy))["locality"]["zoned"]
    assert [(g["share"], g["panic"]) for g in view["groups"]] == [(0, True), (100, False)]
    env["b2"].status = 500
    await _until_answered(session, proxy, "zoned", {"b2"})
    spread = await versions(session, proxy, "zoned", 80)
    assert set(spread) == {"a1", "a2", "b1", "b2"}
    assert 20 <= spread["a1"] + spread["a2"] <= 60  # half, by size (2:2)
    dump = await _dump(proxy)
    assert [(g["share"], g["panic"]) for g in dump["locality"]["zoned"]["groups"]] == [
        (50, True), (50, True)]
    assert dump["outlier"]["zoned"]["panic"] is True
    lines = render(dump).splitlines()
    table = lines[lines.index("ENDPOINTS") + 1:]
    table = table[:table.index("")]  # up to the PANIC THRESHOLDS table
    rows = [[c.strip() for c in line.split("  ") if c.strip()]
            for line in table if line.startswith("zoned ")]
    assert [row[-4:-2] for row in rows] == [["P0 (ejected) (panic)", "50%"]] * 2 + [
        ["P1 (ejected) (panic)", "50%"]] * 2
    assert await proxy.metric("ami_outlier_panics_total", destination_service="zoned") == 1


def _endpoint_rows(lines: list[str]) -> list[list[str]]:
    """The ENDPOINTS table's rows, split into cells (a cell may hold single spaces)."""
    table = lines[lines.index("ENDPOINTS") + 2:]
    return [[c.strip() for c in line.split("  ") if c.strip()]
            for line in table[:table.index("")]]
