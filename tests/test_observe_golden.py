"""Aggregation math of meshctl.observe against hand-computed histograms and rates."""

from __future__ import annotations

import pytest
from prometheus_client import generate_latest

from meshctl.observe.checks import (
    all_checks,
    cert_checks,
    jwks_checks,
    protocol_check,
    tcp_route_checks,
)
from meshctl.observe.gatewaychecks import (
    gateway_certificate_check,
    gateway_trust_check,
    identity_sharing_check,
)
from meshctl.observe.golden import golden, histogram_quantile, one_reporter, rates
from meshctl.observe.samples import LABELS, Scrape, parse_scrape
from meshctl.observe.window import ScrapeWindow
from proxy.metrics import RequestStats, build_registry

INF = float("inf")


def key(code: str = "200", *, reporter: str = "source", src: str = "productpage",
        dst: str = "reviews", ver: str = "v1", security: str = "none",
        flags: str = "-", grpc: str = "") -> tuple[str, ...]:
    values = {"reporter": reporter, "source_workload": src, "source_version": "v1",
              "destination_service": dst, "destination_workload": dst,
              "destination_version": ver, "response_code": code, "response_flags": flags,
              "connection_security_policy": security, "grpc_response_status": grpc}
    return tuple(values[name] for name in LABELS)


def scrape(t: float, series: dict[tuple[str, ...], tuple[float, tuple[tuple[float, float], ...]]]
           ) -> Scrape:
    return Scrape(t, {k: c for k, (c, _) in series.items()},
                  {k: b for k, (_, b) in series.items()})


def test_quantile_interpolates_inside_the_bucket() -> None:
    """p50/p95/p99 follow Prometheus' linear interpolation within the bucket holding the rank."""
    buckets = [(1.0, 2.0), (5.0, 6.0), (10.0, 10.0), (INF, 10.0)]
    assert histogram_quantile(0.5, buckets) == pytest.approx(4.0)  # 1 + 4 * (5-2)/4
    assert histogram_quantile(0.95, buckets) == pytest.approx(9.375)  # 5 + 5 * (9.5-6)/4
    assert histogram_quantile(0.99, buckets) == pytest.approx(9.875)


def test_quantile_in_the_inf_bucket_is_the_highest_finite_bound() -> None:
    """A rank that lands in +Inf is reported as the largest finite bound, never infinity."""
    assert histogram_quantile(0.5, [(1.0, 1.0), (INF, 10.0)]) == 1.0
    assert histogram_quantile(0.5, [(1.0, 0.0), (INF, 0.0)]) is None


def test_a_failed_grpc_call_is_a_failure() -> None:
    """HTTP 200 with grpc-status 14 is a failure; grpc-status 0 and plain HTTP successes are
    not (Linkerd's classification)."""
    ok, grpc_ok, grpc_bad = key("200"), key("200", grpc="0"), key("200", grpc="14")
    empty = ((5.0, 0.0), (INF, 0.0))
    old = scrape(100.0, {ok: (0, empty), grpc_ok: (0, empty), grpc_bad: (0, empty)})
    new = scrape(110.0, {ok: (10, empty), grpc_ok: (20, empty), grpc_bad: (10, empty)})
    assert golden(rates(old, new)).success_rate == pytest.approx(30 / 40)


def test_rates_success_rate_and_mtls_share() -> None:
    """Counter deltas over 10 s give rps; 5xx count as failures; mTLS share is by rate."""
    ok, bad = key("200", security="mutual_tls"), key("503")
    old = scrape(100.0, {ok: (100, ((5.0, 100), (INF, 100))), bad: (0, ((5.0, 0), (INF, 0)))})
    new = scrape(110.0, {ok: (150, ((5.0, 140), (INF, 150))), bad: (10, ((5.0, 10), (INF, 10)))})
    g = golden(rates(old, new))
    assert g.rps == pytest.approx(6.0)
    assert g.success_rate == pytest.approx(5 / 6)
    assert g.mtls_share == pytest.approx(5 / 6)
    # merged buckets per second: le=5 -> 4+1=5 of 6 total; p50 rank 3 -> 0 + 5*3/5
    assert g.p50 == pytest.approx(3.0)
    assert g.p99 == pytest.approx(5.0)


def test_counter_reset_counts_from_zero() -> None:
    """A proxy restart (counter went down) counts the new value as the delta."""
    k = key()
    old = scrape(0.0, {k: (100, ((INF, 100),))})
    new = scrape(4.0, {k: (20, ((INF, 20),))})
    (r,) = rates(old, new)
    assert r.rps == pytest.approx(5.0)
    assert r.buckets == ((INF, 5.0),)


def test_destination_reports_win_over_source_reports() -> None:
    """A request seen by both the caller's outbound and the callee's inbound is counted once,
    from the inbound side for services and from the caller's side for edges."""
    src, dst, other = key(reporter="source"), key(reporter="destination"), key(dst="ratings")
    old = scrape(0.0, {src: (0, ((INF, 0),)), dst: (0, ((INF, 0),)), other: (0, ((INF, 0),))})
    new = scrape(1.0, {src: (3, ((INF, 3),)), dst: (3, ((INF, 3),)), other: (2, ((INF, 2),))})
    kept = one_reporter(rates(old, new))
    assert sorted((r.key[0], r.key[3]) for r in kept) == [("destination", "reviews"),
                                                          ("source", "ratings")]
    by_caller = one_reporter(rates(old, new), prefer="source")  # edges: the caller's view
    assert sorted((r.key[0], r.key[3]) for r in by_caller) == [("source", "ratings"),
                                                               ("source", "reviews")]


def test_replies_the_callers_sidecar_made_count_for_the_service() -> None:
    """An injected abort never reaches the destination's sidecar: the service's view adds the
    caller's series for it (else stat shows 100% while callers get 503), and only for such
    reasons, so forwarded requests are still counted once. Their security is unknown, not
    plaintext: no connection was made."""
    forwarded_src = key("200", reporter="source", security="mutual_tls")
    forwarded_dst = key("200", reporter="destination", security="mutual_tls")
    aborted = key("503", reporter="source", security="unknown", flags="fault_injected")
    timed_out = key("504", reporter="source", security="mutual_tls", flags="timeout")
    series = (forwarded_src, forwarded_dst, aborted, timed_out)
    old = scrape(0.0, {k: (0, ((INF, 0),)) for k in series})
    new = scrape(1.0, {forwarded_src: (8, ((INF, 8),)), forwarded_dst: (9, ((INF, 9),)),
                       aborted: (1, ((INF, 1),)), timed_out: (1, ((INF, 1),))})
    kept = one_reporter(rates(old, new))
    assert sorted((r.key[0], r.key[7]) for r in kept) == [("destination", "-"),
                                                          ("source", "fault_injected")]
    g = golden(kept)
    assert g.rps == pytest.approx(10.0)
    assert g.success_rate == pytest.approx(0.9)
    assert g.mtls_share == pytest.approx(1.0)  # the abort's "unknown" is left out
    only_local = golden([r for r in kept if r.key[7] == "fault_injected"])
    assert only_local.mtls_share is None


def test_window_uses_scrapes_inside_the_window_and_drops_old_ones() -> None:
    """stat over 10 s reads only the scrapes of the last 10 s; ``keep`` prunes older ones."""
    w = ScrapeWindow(keep=30.0)
    k, k2 = key(ver="v1"), key(ver="v2")
    for t, c in ((0.0, 0), (10.0, 1000), (20.0, 1010), (30.0, 1030)):
        w.add("p", scrape(t, {k: (c, ((INF, c),)), k2: (c / 10, ((INF, c / 10),))}))
    rows = {r.version: r.golden.rps for r in w.stat(30.0, 10.0)}
    assert rows == {"v1": pytest.approx(2.0), "v2": pytest.approx(0.2)}
    w.add("p", scrape(50.0, {k: (1040, ((INF, 1040),))}))
    assert w.stat(10.0, 10.0) == []  # the 0 s and 10 s scrapes were pruned
    assert w.edges(50.0, 30.0)[0].golden.rps == pytest.approx(1.0)  # (1040-1010)/30 s


def test_parse_reads_the_proxy_exposition() -> None:
    """The proxy's own /metrics text parses back to the counts and buckets it recorded."""
    stats = RequestStats()
    prefix = ("source", "productpage", "v1", "reviews", "reviews")
    for ms in (0.7, 3.0, 3.0, 80.0):
        stats.record(prefix, "v2", 200, "-", "mutual_tls", ms, 10, 100)
    stats.record(prefix, "v2", 503, "UF", "mutual_tls", 2.0, 10, 0)
    stats.record_grpc(prefix, "v2", 200, "-", "mutual_tls", 1.0, 10, 0, "14")  # a failed call
    stats.inc("ami_outlier_ejections", (("destination_service", "reviews"),), 2)
    s = parse_scrape(generate_latest(build_registry(stats)).decode(), 5.0)
    ok = ("source", "productpage", "v1", "reviews", "reviews", "v2", "200", "-", "mutual_tls",
          "")
    assert s.requests[ok] == 4
    assert dict(s.buckets[ok])[5.0] == 3 and dict(s.buckets[ok])[INF] == 4
    assert s.requests[(*ok[:-1], "14")] == 1
    assert s.counters["ami_outlier_ejections"] == 2


def test_certificate_checks_warn_near_expiry_and_fail_when_expired() -> None:
    """< 20% of its own lifetime left (renewal overdue) warns, whatever the TTL; past expiry
    fails; a proxy that does not report the issue time is judged as a 24 h certificate."""
    now = 1_800_000_000.0

    def at(ts: float) -> str:
        from datetime import UTC, datetime
        return datetime.fromtimestamp(ts, UTC).isoformat().replace("+00:00", "Z")

    proxies = [
        {"name": "day", "certIssued": at(now - 4 * 3600), "certExpiry": at(now + 20 * 3600)},
        {"name": "hour-fresh", "certIssued": at(now - 600), "certExpiry": at(now + 3000)},
        {"name": "hour-overdue", "certIssued": at(now - 3300), "certExpiry": at(now + 300)},
        {"name": "week-6h-left", "certIssued": at(now - 162 * 3600),
         "certExpiry": at(now + 6 * 3600)},
        {"name": "unknown-issue", "certExpiry": at(now + 1800)},
        {"name": "expired", "certIssued": at(now - 3601), "certExpiry": at(now - 1)}]
    states = {c.name.split()[0]: c.state for c in cert_checks(proxies, now).checks}
    assert states == {"day": "ok", "hour-fresh": "ok", "hour-overdue": "warn",
                      "week-6h-left": "warn", "unknown-issue": "warn", "expired": "fail"}


def test_checks_flag_unsynced_nacked_and_invalid_config() -> None:
    """An unsynced or NACKing proxy and a store error each fail with a hint."""
    proxies = [{"name": "r1", "synced": False, "nack": "bad regex"},
               {"name": "r2", "synced": True, "nack": None}]
    groups = all_checks(proxies, [{"source": "mesh/x.yaml", "message": "bad"}], 0.0)
    failed = [c for g in groups for c in g.checks if c.state == "fail"]
    assert [c.name for c in failed] == ["every proxy synced", "no NACKs", "configuration valid"]
    assert all(c.hint for c in failed)
    assert "r1" in failed[0].detail and "mesh/x.yaml" in failed[2].detail


def test_check_warns_about_a_service_whose_sidecars_disagree_on_tcp() -> None:
    """Some of db's sidecars declare tcp, others not: a warning naming the service and the
    proxies on each side; services that agree (whatever their HTTP flavour) and gateways do
    not count."""
    proxies = [
        {"name": "db-a", "service": "db", "mode": "sidecar", "appProtocol": "tcp"},
        {"name": "db-b", "service": "db", "mode": "sidecar", "appProtocol": "auto"},
        {"name": "db-c", "service": "db", "mode": "sidecar", "appProtocol": "tcp"},
        {"name": "cache-a", "service": "cache", "mode": "sidecar", "appProtocol": "tcp"},
        {"name": "web-a", "service": "web", "mode": "sidecar", "appProtocol": "http1"},
        {"name": "web-b", "service": "web", "mode": "sidecar", "appProtocol": "http2"},
        {"name": "gw", "service": "web", "mode": "gateway", "appProtocol": None}]
    check = protocol_check(proxies)
    assert (check.state, check.detail) == ("warn", "db: tcp on db-a, db-c, http on db-b")
    assert "--app-protocol" in check.hint
    assert protocol_check(proxies[3:]).state == "ok"
    assert check in all_checks(proxies, [], 0.0)[0].checks


def test_check_warns_of_gateways_registered_with_a_service_token() -> None:
    """An untrusted gateway is named with the command that makes its gateway token; trusted
    gateways, sidecars and proxies of an older control plane (no field) are not."""
    proxies = [
        {"name": "gw", "service": "ingress", "namespace": "edge", "mode": "gateway",
         "trustedGateway": True},
        {"name": "old-gw", "service": "web", "namespace": "shop", "mode": "gateway",
         "trustedGateway": False},
        {"name": "legacy", "service": "legacy", "mode": "gateway"},
        {"name": "echo-a", "service": "echo", "mode": "sidecar", "trustedGateway": None}]
    check = gateway_trust_check(proxies)
    assert check.state == "warn"
    assert check.detail.endswith("the x-forwarded-client-cert they send: old-gw (shop/web)")
    assert "meshctl certs token --gateway --service web --namespace shop > FILE" in check.hint
    assert check in all_checks(proxies, [], 0.0)[0].checks
    assert gateway_trust_check([proxies[0], *proxies[2:]]).state == "ok"
    assert identity_sharing_check(proxies).state == "ok"


def test_check_warns_of_trusted_gateways_whose_certificate_is_not_marked() -> None:
    """A trusted gateway with a certificate but no gateway marker (a proxy from before it) is
    named with its proxy version and told to upgrade; one not yet with a certificate, a marked
    one, an untrusted one (gateway_trust_check's) and an older control plane's (no field) not."""
    proxies = [
        {"name": "gw", "service": "ingress", "namespace": "edge", "mode": "gateway",
         "trustedGateway": True, "certExpiry": "2026-11-28T00:00:00Z",
         "gatewayCertificate": True},
        {"name": "old-gw", "service": "web", "namespace": "shop", "mode": "gateway",
         "trustedGateway": True, "certExpiry": "2026-11-28T00:00:00Z",
         "gatewayCertificate": False, "proxyVersion": "unknown"},
        {"name": "new-gw", "service": "api", "mode": "gateway", "trustedGateway": True,
         "certExpiry": None, "gatewayCertificate": False},
        {"name": "plain-gw", "service": "b2b", "mode": "gateway", "trustedGateway": False,
         "certExpiry": "2026-11-28T00:00:00Z", "gatewayCertificate": False},
        {"name": "older-cp", "service": "edge", "mode": "gateway", "trustedGateway": True,
         "certExpiry": "2026-11-28T00:00:00Z"}]
    check = gateway_certificate_check(proxies)
    assert check.state == "warn"
    assert check.detail == ("registered with their gateway token, but their certificate has no "
                            "gateway marker, so sidecars drop the x-forwarded-client-cert they "
                            "send: old-gw (shop/web, proxy unknown)")
    assert check.hint.startswith("upgrade each to a proxy of this control plane's version")
    assert check in all_checks(proxies, [], 0.0)[0].checks
    assert gateway_certificate_check([proxies[0], *proxies[2:]]).state == "ok"


def test_check_warns_of_proxies_sharing_a_trusted_gateways_identity() -> None:
    """A sidecar, or a gateway with the service token, of a trusted gateway's service has
    its id (sidecars from before the marker keep its XFCC, policies allowing the gateway allow
    it): warned (not as an untrusted gateway); another namespace's proxy of that name is not."""
    proxies = [
        {"name": "gw", "service": "ingress", "namespace": "edge", "mode": "gateway",
         "trustedGateway": True},
        {"name": "gw-2", "service": "ingress", "namespace": "edge", "mode": "gateway",
         "trustedGateway": False},
        {"name": "ingress-a", "service": "ingress", "namespace": "edge", "mode": "sidecar"},
        {"name": "ingress-b", "service": "ingress", "mode": "sidecar"}]
    check = identity_sharing_check(proxies)
    assert check.state == "warn"
    assert check.detail.endswith(": gw-2 (gateway, edge/ingress), ingress-a (sidecar, "
                                 "edge/ingress)")
    assert gateway_trust_check(proxies).state == "ok"
    assert check in all_checks(proxies, [], 0.0)[0].checks


async def test_scraper_refuses_an_endless_exposition() -> None:
    """A peer answering /metrics with more than any sidecar would send is an error, not a
    memory spike in the control plane; a normal exposition next to it is read."""
    import aiohttp
    from aiohttp import web

    from meshctl.observe.scraper import MAX_EXPOSITION, Scraper

    stats = RequestStats()
    stats.record(("source", "productpage", "v1", "reviews", "reviews"), "v1", 200, "-",
                 "mutual_tls", 3.0, 0, 10)
    normal = generate_latest(build_registry(stats))

    async def huge(_: web.Request) -> web.StreamResponse:
        return web.Response(body=b"#" * (MAX_EXPOSITION + 1024))

    async def fine(_: web.Request) -> web.StreamResponse:
        return web.Response(body=normal)

    app = web.Application()
    app.router.add_get("/metrics", huge)
    app.router.add_get("/fine/metrics", fine)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = runner.addresses[0][1]
    try:
        scraper = Scraper(lambda: {"proxies": [
            {"name": "liar", "admin": f"127.0.0.1:{port}"},
            {"name": "ok", "admin": f"127.0.0.1:{port}/fine"}]})
        async with aiohttp.ClientSession() as session:
            await scraper.scrape_once(session)
    finally:
        await runner.cleanup()
    assert "larger than" in scraper.errors["liar"]
    assert "ok" not in scraper.errors


def test_a_restart_between_scrapes_is_seen_by_the_process_start_time() -> None:
    """A proxy that restarted and already counted more than before (the counter did not go
    down): its new process start time marks the reset, and nothing before it is lost."""
    k = key()
    w = ScrapeWindow(keep=600.0)
    w.add("p", Scrape(100.0, {k: 10}, {k: ((INF, 10),)}, start_time=50.0))
    w.add("p", Scrape(102.0, {k: 30}, {k: ((INF, 30),)}, start_time=50.0))
    w.add("p", Scrape(104.0, {k: 45}, {k: ((INF, 45),)}, start_time=103.0))
    (r,) = w.rates(104.0, 600.0)
    # 10 before the first scrape (started at 50 s), 20 more, then 45 after the restart
    assert r.rps * (104.0 - 50.0) == pytest.approx(75.0)
    assert r.buckets == ((INF, pytest.approx(75.0 / 54.0)),)


def test_jwks_checks_fail_only_without_any_keys() -> None:
    """A jwksUri never fetched refuses every token of its issuer: fail; a failed refetch with
    keys held is a warning; no RequestAuthentication with jwksUri: no group at all."""
    assert jwks_checks({}) == []
    (group,) = jwks_checks({"https://a/jwks": (True, None), "https://b/jwks": (True, "HTTP 500"),
                            "https://c/jwks": (False, "timeout"), "https://d/jwks": (False, None)})
    assert [(c.name, c.state) for c in group.checks] == [
        ("https://a/jwks", "ok"), ("https://b/jwks", "warn"), ("https://c/jwks", "fail"),
        ("https://d/jwks", "warn")]
    assert "never fetched: timeout" in group.checks[2].detail


def test_tcp_route_checks_warn_of_http_only_fields_on_tcp_services_only() -> None:
    """A Route of a service whose every sidecar is `tcp` is checked: HTTP-only fields warn,
    with their paths; a clean one is ok; an HTTP service's Route, or one of a service still
    changing protocol (some sidecars tcp, some not), gives no check at all."""
    from meshctl.api.resources import load_documents

    routes = load_documents("""\
apiVersion: ami.mesh/v1alpha1
kind: Route
metadata: {name: db}
spec:
  host: db
  rules: [{backends: [{subset: v1}], timeout: 1s}]
---
apiVersion: ami.mesh/v1alpha1
kind: Route
metadata: {name: cache}
spec:
  host: cache
  rules: [{backends: [{subset: v1}]}]
---
apiVersion: ami.mesh/v1alpha1
kind: Route
metadata: {name: reviews}
spec:
  host: reviews
  rules: [{backends: [{subset: v1}], timeout: 1s}]
---
apiVersion: ami.mesh/v1alpha1
kind: Route
metadata: {name: queue}
spec:
  host: queue
  rules: [{backends: [{subset: v1}], timeout: 1s}]
""", "routes.yaml")
    proxies = [{"service": "db", "appProtocol": "tcp"}, {"service": "cache", "appProtocol": "tcp"},
               {"service": "reviews", "appProtocol": "auto"},
               {"service": "queue", "appProtocol": "tcp"}, {"service": "queue"},
               {"service": "gw", "mode": "gateway"}]
    (group,) = tcp_route_checks(routes, proxies)
    assert [(c.name, c.state) for c in group.checks] == [
        ("Route default/cache (TCP service cache)", "ok"),
        ("Route default/db (TCP service db)", "warn")]
    assert "spec.rules[0].timeout" in group.checks[1].detail and group.checks[1].hint
    assert tcp_route_checks(routes, proxies[2:]) == []


@pytest.mark.parametrize(("listen", "tls", "state"), [
    ("127.0.0.1:15080", False, "ok"), ("[::1]:15080", False, "ok"),
    ("0.0.0.0:15080", True, "ok"), ("0.0.0.0:15080", False, "warn"),
    ("10.0.0.5:15080", False, "warn")])
def test_api_transport_check(listen: str, tls: bool, state: str) -> None:
    """Plain HTTP is fine on loopback; reachable from a network it is a warning with the fix."""
    from meshctl.observe.checks import api_transport_check

    [check] = api_transport_check(listen, tls).checks
    assert check.state == state
    if state == "warn":
        assert "--api-tls" in check.hint and listen in check.detail


def test_tcp_route_checks_find_a_tcp_service_however_its_route_spells_it() -> None:
    """`db.data` and the FQDN are the TCP service db of namespace data, wherever the Route
    is; namespace web's HTTP `db` is not checked, nor a bare `db` from a namespace that has
    none while two others do (it is about neither)."""
    from meshctl.api.resources import load_documents

    def route(name: str, namespace: str, host: str) -> str:
        return (f"apiVersion: ami.mesh/v1alpha1\nkind: Route\nmetadata: {{name: {name}, "
                f"namespace: {namespace}}}\nspec:\n  host: {host}\n"
                "  rules: [{backends: [{subset: v1}], timeout: 1s}]\n")

    routes = load_documents("---\n".join([
        route("short", "ops", "db.data"), route("fqdn", "data", "db.data.svc.cluster.local"),
        route("bare", "jobs", "db"), route("http", "web", "db")]), "routes.yaml")
    proxies = [{"service": "db", "namespace": "data", "appProtocol": "tcp"},
               {"service": "db", "namespace": "web", "appProtocol": "auto"},
               {"service": "cron", "namespace": "jobs"}]
    (group,) = tcp_route_checks(routes, proxies)
    assert [c.name for c in group.checks] == [
        "Route data/fqdn (TCP service db.data.svc.cluster.local)",
        "Route ops/short (TCP service db.data)"]
    assert all(c.state == "warn" for c in group.checks)
