"""`meshctl routes` arithmetic: the named rules' series read from a real exposition, and the
`[unnamed]` rest as the caller-side service series less the named rules', per code and
bucket, over the scrape window."""

from __future__ import annotations

import pytest
from prometheus_client import generate_latest

from meshctl.observe.routestats import DeclaredRoute, route_rows
from meshctl.observe.samples import parse_scrape
from meshctl.observe.window import ScrapeWindow
from proxy.metrics import RequestStats, build_registry

PREFIX = ("source", "productpage", "v1", "reviews", "reviews")


def exposition(stats: RequestStats) -> str:
    return generate_latest(build_registry(stats)).decode()


def record(stats: RequestStats, counter: object, status: int, ms: float, n: int = 1) -> None:
    """``n`` requests as the listener records them: the service series, then the rule's
    (None: an unnamed rule's request), with one duration."""
    from types import SimpleNamespace

    for _ in range(n):
        stats.record(PREFIX, "v1", status, "-", "none", ms, 0, 0)
        if counter is not None:
            ex = SimpleNamespace(backend=SimpleNamespace(metric_prefix=PREFIX), status=status,
                                 http2=False)
            counter.record(ex, ms)  # type: ignore[attr-defined]


def test_rows_split_the_service_exactly() -> None:
    """Between two scrapes: 4 requests of rule jason (one 503), 6 of unnamed rules (two 503)
    and one of a rule of another Route sending to reviews. The rows: jason, the other rule
    (it sent requests here), and [unnamed] with exactly the 6, their failures and latencies;
    the shares add up to 1."""
    stats = RequestStats()
    jason = stats.rules.counter("source", "default/reviews", "jason", "reviews")
    other = stats.rules.counter("source", "default/mirror", "tee", "reviews")
    window = ScrapeWindow()
    record(stats, jason, 200, 3.0)  # before the window's first scrape: not in any rate
    window.add("pp", parse_scrape(exposition(stats), 100.0))
    record(stats, jason, 200, 3.0, 3)
    record(stats, jason, 503, 3.0)
    record(stats, None, 200, 40.0, 4)
    record(stats, None, 503, 40.0, 2)
    record(stats, other, 200, 3.0)
    window.add("pp", parse_scrape(exposition(stats), 110.0))
    rules, callers = window.rule_rates(110.0, 30.0)
    declared = [DeclaredRoute("default/reviews", (("jason", "v2=100"), ("idle", "v1=100")), 1)]
    rows = {(r.route, r.rule): r for r in route_rows("reviews", declared, rules, callers)}
    assert list(rows) == [("default/mirror", "tee"), ("default/reviews", "idle"),
                          ("default/reviews", "jason"), (None, "[unnamed]")]
    named, rest = rows[("default/reviews", "jason")], rows[(None, "[unnamed]")]
    assert named.golden.rps == pytest.approx(0.4)
    assert named.golden.success_rate == pytest.approx(0.75)
    assert rest.golden.rps == pytest.approx(0.6)
    assert rest.golden.success_rate == pytest.approx(4 / 6)
    # the rest's latencies are the unnamed requests' own (all in the 25-50 ms bucket)
    assert rest.golden.p50 is not None and 25.0 < rest.golden.p50 <= 50.0
    assert named.golden.p99 is not None and named.golden.p99 <= 5.0
    assert rows[("default/reviews", "idle")].golden.rps == 0
    assert rows[("default/reviews", "idle")].backends == "v1=100"
    assert sum(r.share or 0.0 for r in rows.values()) == pytest.approx(1.0)
    assert rows[("default/mirror", "tee")].golden.rps == pytest.approx(0.1)


def test_route_series_parsed_apart_from_the_counters() -> None:
    """ami_route_* are read as a scrape of their own, not summed into the policy counters;
    a proxy without them has none."""
    stats = RequestStats()
    assert parse_scrape(exposition(stats), 1.0).routes is None
    record(stats, stats.rules.counter("source", "default/reviews", "jason", "reviews"), 200, 1.0)
    scrape = parse_scrape(exposition(stats), 1.0)
    assert scrape.routes is not None
    assert scrape.routes.requests == {("source", "reviews", "default/reviews", "jason", "200",
                                       ""): 1.0}
    assert not any(name.startswith("ami_route") for name in scrape.counters)
