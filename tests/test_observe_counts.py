"""The numbers meshctl stat prints match the requests really sent through real proxies, also
when they were sent before the control plane first scraped a proxy, or around a restart."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from tests.observe_harness import ObservedMesh, send, start_observed_mesh, wait_until

pytestmark = pytest.mark.timeout(120)


def _stat(mesh: ObservedMesh, *args: str) -> dict[str, dict[str, Any]]:
    out = mesh.meshctl("stat", *args, "-o", "json")
    assert out.returncode == 0, out.stderr
    return {r["service"]: r for r in json.loads(out.stdout)["rows"]}


def _counted(mesh: ObservedMesh, service: str, window: float = 300.0) -> float:
    """How many requests to ``service`` the observer's window holds (rate x its span)."""
    w = mesh.observer.scraper.window
    now = mesh.observer.clock()
    total = 0.0
    for name in list(w._scrapes):  # one proxy at a time: its span is its own
        q = [s for s in w._scrapes[name] if s.time >= now - window]
        if len(q) > 1:
            from meshctl.observe.golden import rates_over
            total += sum(r.rps for r in rates_over(q) if r.key[3] == service) \
                * (q[-1].time - q[0].time)
    return total


def _mix(mesh: ObservedMesh, ok: int, failed: int) -> None:
    pp = mesh.proxies["productpage"]
    for _ in range(ok):
        assert send(pp, "reviews", "/reviews/1") == 200
    for _ in range(failed):
        assert send(pp, "reviews", "/status/503") == 503


def test_requests_before_the_first_scrape_are_counted(tmp_path: Path) -> None:
    """A proxy that served requests before the control plane's first scrape of it: stat shows
    them (the first scrape is not a silent baseline that swallows them)."""
    mesh = start_observed_mesh(tmp_path, observe=False)
    try:
        _mix(mesh, 8, 2)
        mesh.start_observer()
        mesh.wait_scraped(2)
        rows = _stat(mesh, "--window", "5m")
        assert "reviews" in rows, rows
        assert rows["reviews"]["successRate"] == pytest.approx(0.8)
        assert _counted(mesh, "reviews") == pytest.approx(10.0)
    finally:
        mesh.close()


def test_a_restart_inside_the_window_loses_nothing(tmp_path: Path) -> None:
    """8 OK + 2 failed, the caller's proxy restarts, 4 OK: the window holds all 14 requests
    (12/14 success), not just the 4 counted since the restart."""
    mesh = start_observed_mesh(tmp_path)
    try:
        mesh.wait_scraped()
        _mix(mesh, 8, 2)
        mesh.wait_scraped(2)
        pp = mesh.proxies["productpage"]
        pp.stop()
        wait_until(lambda: "productpage-v1" in mesh.observer.scraper.errors, 10,
                   "a scrape that finds productpage down")
        pp.start()
        _mix(mesh, 4, 0)
        mesh.wait_scraped(2)
        rows = _stat(mesh, "--window", "5m")
        assert rows["reviews"]["successRate"] == pytest.approx(12 / 14, abs=1e-4)
        assert _counted(mesh, "reviews") == pytest.approx(14.0)
    finally:
        mesh.close()


async def test_one_scrape_loop_when_serve_runs_the_observer() -> None:
    """`meshctl serve` runs observer.run() itself; a stat or dashboard request must not start a
    second scrape loop beside it (every sidecar scraped twice per interval)."""
    import asyncio

    from meshctl.observe.api import Observer

    observer = Observer(lambda: {"proxies": []}, interval=30.0)
    task = asyncio.create_task(observer.run(), name="observe")
    await asyncio.sleep(0)  # let it start, as in serve()'s TaskGroup
    try:
        observer.ensure_started()  # what every stat/edges/dashboard request does
        loops = [t for t in asyncio.all_tasks() if t.get_name() == "observe"]
        assert loops == [task]
    finally:
        await observer.close()
        task.cancel()


async def test_top_counts_each_request_once(tmp_path: Path) -> None:
    """productpage's sidecar -> reviews' sidecar -> app: each request is tapped twice (outbound
    and inbound); top's COUNT and SUCCESS must be per request: 6 OK + 2 failed = 8, 75%."""
    import asyncio

    from meshctl.observe.tapfanin import tap_many, top_rows
    from tests.observe_harness import sidecar
    from tests.proxyharness import Backends, echo_app

    backends = Backends()
    procs = []
    try:
        reviews, reviews_in = sidecar(tmp_path / "rv", "reviews",
                                      app=backends.aiohttp(echo_app()), services={})
        procs.append(reviews)
        front, _ = sidecar(tmp_path / "pp", "productpage", app=None,
                           services={"reviews": reviews_in})
        procs.append(front)
        listed = [{"name": n, "admin": f"127.0.0.1:{p.admin}"}
                  for n, p in (("productpage-v1", front), ("reviews-v1", reviews))]
        sent = [*(["/top/ok"] * 6), *(["/status/503"] * 2)]
        async with tap_many(listed, service="reviews") as events:  # both are tapping now
            codes = [await asyncio.to_thread(send, front, "reviews", path) for path in sent]
            assert codes == [200] * 6 + [503] * 2
            got = []
            async with asyncio.timeout(10):
                while len(got) < 2 * len(sent):  # every request, from both sidecars
                    got.append(await events.get())
        rows = {r["path"]: r for r in top_rows(got)}
        assert rows["/top/ok"]["count"] == 6 and rows["/status/503"]["count"] == 2
        assert rows["/status/503"]["successRate"] == 0.0
        assert sum(r["count"] for r in rows.values()) == len(sent)
    finally:
        for p in procs:
            p.stop()
        backends.close()


def test_dashboard_policy_events_are_the_destination_services(tmp_path: Path) -> None:
    """The caller's sidecar retries reviews twice (2 x 500, then 200): the dashboard's policy
    events show 2 retries for reviews - the service they were about - not for the caller."""
    import urllib.request

    from tests.observe_harness import observe_proxies
    from tests.proxyharness import Backends
    from tests.traffic_backends import TrafficProxy, endpoints, start_backend

    hub = Backends()
    flaky = start_backend(hub, fail_first=2, fail_status=500)
    proxy = TrafficProxy(tmp_path, {"reviews": {"endpoints": endpoints(flaky)}},
                         [{"host": "reviews", "rules": [{"backends": [{}], "retries": {
                             "attempts": 3, "retryOn": ["5xx"]}}]}]).start()
    mesh = observe_proxies(hub, {"client": proxy})
    try:
        assert send(proxy, "reviews", "/") == 200
        mesh.wait_scraped(2)
        with urllib.request.urlopen(mesh.url + "/api/v1/dashboard/state", timeout=10) as resp:
            counters = json.loads(resp.read())["counters"]
        assert counters["reviews"]["ami_retries"] == 2
        assert counters["client"]["ami_retries"] == 0
    finally:
        mesh.close()


def test_dashboard_counts_outlier_panics_for_the_destination(tmp_path: Path) -> None:
    """ratings' only endpoint answers 500: its first 5xx ejects it (consecutive5xxErrors 1),
    which leaves no healthy endpoint (below minHealthPercent 50), so the next request finds
    ratings in panic. The dashboard's policy events show 1 ejection and 1 panic for ratings,
    none for the caller."""
    import urllib.request

    from tests.observe_harness import observe_proxies
    from tests.proxyharness import Backends
    from tests.traffic_backends import TrafficProxy, endpoints, start_backend

    hub = Backends()
    broken = start_backend(hub, status=500)
    panic = {"consecutive5xxErrors": 1, "interval": "1s", "baseEjectionTime": "300s",
             "maxEjectionPercent": 100, "minHealthPercent": 50}
    proxy = TrafficProxy(tmp_path, {"ratings": {"endpoints": endpoints(broken),
                                                "policy": {"outlierDetection": panic}}},
                         []).start()
    mesh = observe_proxies(hub, {"client": proxy})
    try:
        assert [send(proxy, "ratings", "/") for _ in range(2)] == [500, 500]  # panic: sent on
        mesh.wait_scraped(2)
        with urllib.request.urlopen(mesh.url + "/api/v1/dashboard/state", timeout=10) as resp:
            counters = json.loads(resp.read())["counters"]
        assert (counters["ratings"]["ami_outlier_ejections"],
                counters["ratings"]["ami_outlier_panics"]) == (1, 1)
        assert counters["client"]["ami_outlier_panics"] == 0
    finally:
        mesh.close()


def test_dashboard_counts_authorization_denials_for_the_service(tmp_path: Path) -> None:
    """ratings' sidecar allows only GET /public/*: two other requests are denied (403), which
    the dashboard's policy events count for ratings."""
    import urllib.error
    import urllib.request

    from tests.observe_harness import observe_proxies
    from tests.proxyharness import Backends
    from tests.traffic_backends import TrafficProxy, start_backend

    hub = Backends()
    app = start_backend(hub)
    allow = [{"action": "ALLOW", "rules": [{"to": [{"paths": ["/public/*"]}]}]}]
    proxy = TrafficProxy(tmp_path, {}, [], app=app.address,
                         node={"service": "ratings", "labels": {"version": "v1"}},
                         inbound={"authorization": allow}).start()
    mesh = observe_proxies(hub, {"ratings": proxy})

    def inbound(path: str) -> int:
        req = urllib.request.Request(proxy.url(path, "inbound"), headers={"Host": "ratings"})
        try:
            with urllib.request.urlopen(req, timeout=5) as resp:
                return int(resp.status)
        except urllib.error.HTTPError as exc:
            return int(exc.code)

    try:
        assert [inbound(p) for p in ("/private", "/admin", "/public/a")] == [403, 403, 200]
        mesh.wait_scraped(2)
        with urllib.request.urlopen(mesh.url + "/api/v1/dashboard/state", timeout=10) as resp:
            counters = json.loads(resp.read())["counters"]
        assert counters["ratings"]["ami_authorization_denied"] == 2
    finally:
        mesh.close()
