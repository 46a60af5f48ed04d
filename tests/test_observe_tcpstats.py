"""TCP figures of meshctl stat/edges (open connections, bytes/s) against hand-computed counts."""

from __future__ import annotations

import pytest
from prometheus_client import generate_latest

from meshctl.observe.samples import TCP_LABELS, Scrape, TcpCounts, parse_scrape
from meshctl.observe.tcpstats import tcp_over
from meshctl.observe.window import ScrapeWindow
from proxy.metrics import RequestStats, build_registry
from proxy.tcprelay import TCP_LABELS as PROXY_TCP_LABELS


def tkey(reporter: str = "destination", *, src: str = "web", dst: str = "db",
         ver: str = "v1", security: str = "mutual_tls") -> tuple[str, ...]:
    values = {"reporter": reporter, "source_workload": src, "source_version": "v1",
              "destination_service": dst, "destination_workload": dst,
              "destination_version": ver, "connection_security_policy": security}
    return tuple(values[name] for name in TCP_LABELS)


def scrape(t: float, tcp: dict[tuple[str, ...], TcpCounts], start: float | None = None
           ) -> Scrape:
    return Scrape(t, tcp=tcp, start_time=start)


def test_parse_sums_the_flags_away() -> None:
    """The proxy's own ami_tcp_* exposition parses back per series; a connection counted
    opened under `-` and closed under a reason word is one series, opened and closed."""
    stats = RequestStats()
    labels = ("destination", "web", "v1", "db", "db", "v1", "mutual_tls")

    def pairs(flags: str) -> tuple[tuple[str, str], ...]:
        return tuple(zip(PROXY_TCP_LABELS, (*labels, flags), strict=True))

    stats.inc("ami_tcp_connections_opened", pairs("-"), 3)
    stats.inc("ami_tcp_connections_closed", pairs("-"), 1)
    stats.inc("ami_tcp_connections_closed", pairs("upstream_connect_failure"), 1)
    stats.inc("ami_tcp_received_bytes", pairs("-"), 100)
    stats.inc("ami_tcp_sent_bytes", pairs("-"), 250)
    s = parse_scrape(generate_latest(build_registry(stats)).decode(), 5.0)
    assert s.tcp == {labels: (3.0, 2.0, 100.0, 250.0)}


def test_open_connections_at_the_end_and_bytes_per_second_over_the_window() -> None:
    """opened - closed at the last scrape; bytes moved between the first and the last scrape
    over the time between them; a series idle all along (all closed, nothing moved) is out."""
    busy, idle = tkey(ver="v1"), tkey(ver="v2")
    (series,) = tcp_over([
        scrape(100.0, {busy: (5, 1, 1000, 4000), idle: (2, 2, 10, 10)}),
        scrape(102.0, {busy: (7, 2, 1600, 4000), idle: (2, 2, 10, 10)}),
        scrape(110.0, {busy: (8, 4, 3000, 8000), idle: (2, 2, 10, 10)})])
    assert series.key == busy
    assert series.open == 4
    assert series.read == pytest.approx(2000 / 10)
    assert series.write == pytest.approx(4000 / 10)


def test_a_restart_counts_from_zero_and_forgets_the_old_connections() -> None:
    """After a restart (new process start time) the dead process' open connections are gone
    and the new counters count from 0, even when they are already above the old ones."""
    k = tkey()
    (series,) = tcp_over([scrape(100.0, {k: (3, 0, 100, 100)}, start=50.0),
                          scrape(104.0, {k: (4, 3, 500, 300)}, start=103.0)])
    assert series.open == 1
    assert series.read == pytest.approx(500 / 4)
    assert series.write == pytest.approx(300 / 4)


def test_stat_takes_the_destination_view_and_edges_the_callers() -> None:
    """Both sidecars count a connection: stat counts db's own series, edges the caller's; a
    TCP-only row has no HTTP figures (rps 0, the rest null); an HTTP-only row has null TCP
    figures; both rows have every key."""
    w = ScrapeWindow()
    dst, src = tkey("destination"), tkey("source")
    w.add("db-v1", scrape(100.0, {dst: (0, 0, 0, 0)}))
    w.add("web-v1", scrape(100.0, {src: (0, 0, 0, 0)}))
    w.add("db-v1", scrape(110.0, {dst: (3, 1, 500, 2000)}))
    w.add("web-v1", scrape(110.0, {src: (4, 1, 600, 2000)}))  # one still connecting
    (row,) = w.stat(110.0, 30.0)
    assert (row.service, row.version) == ("db", "v1")
    assert row.as_json() == {
        "service": "db", "version": "v1", "rps": 0.0, "successRate": None, "p50": None,
        "p95": None, "p99": None, "mtlsShare": None,
        "tcpConnections": 2, "tcpReadBytesPerSec": 50.0, "tcpWriteBytesPerSec": 200.0}
    (edge,) = w.edges(110.0, 30.0)
    assert edge.as_json()["tcpConnections"] == 3
    assert edge.as_json()["secured"] is True
    assert w.stat(110.0, 30.0, source="other") == []
    assert [r.service for r in w.stat(110.0, 30.0, "db", source="web")] == ["db"]


def test_a_plaintext_tcp_series_makes_the_edge_unsecured() -> None:
    """An edge is secured only when every TCP connection on it was mTLS."""
    w = ScrapeWindow()
    k = tkey("source", security="none")
    w.add("web-v1", scrape(100.0, {k: (1, 0, 0, 0)}))
    (edge,) = w.edges(100.0, 30.0)
    assert edge.as_json()["secured"] is False
