"""A short in-memory window of scrapes per proxy, and golden (and TCP) metrics over any part of
it."""

from __future__ import annotations

from bisect import bisect_left, bisect_right
from collections.abc import Iterator
from dataclasses import dataclass

from meshctl.observe.golden import (
    Golden,
    Rate,
    edge_key,
    group_by,
    one_reporter,
    rates_over,
    service_key,
)
from meshctl.observe.samples import DST, REPORTER, SRC, Scrape
from meshctl.observe.tcpstats import (
    NO_TCP_JSON,
    TcpFigures,
    TcpSeries,
    one_tcp_reporter,
    tcp_group_by,
    tcp_over,
)

IDLE = Golden(0.0, None, None, None, None, None)  # the HTTP figures of a TCP-only row


@dataclass(frozen=True, slots=True)
class StatRow:
    """One service version's golden metrics, and its TCP figures when it has TCP traffic."""

    service: str
    version: str
    golden: Golden
    tcp: TcpFigures | None = None

    def as_json(self) -> dict[str, object]:
        return {"service": self.service, "version": self.version, **self.golden.as_json(),
                **_tcp_json(self.tcp)}


@dataclass(frozen=True, slots=True)
class EdgeRow:
    """Traffic from one workload version to one service version."""

    source: str
    source_version: str
    destination: str
    destination_version: str
    golden: Golden
    tcp: TcpFigures | None = None

    def as_json(self) -> dict[str, object]:
        share = self.golden.mtls_share
        # secured: every request that made a connection, and every TCP connection, was mTLS
        secured = ((share is not None or self.tcp is not None)
                   and (share is None or share >= 0.999)
                   and (self.tcp is None or self.tcp.mtls))
        return {"source": self.source, "sourceVersion": self.source_version,
                "destination": self.destination, "destinationVersion": self.destination_version,
                "secured": secured, **self.golden.as_json(), **_tcp_json(self.tcp)}


def _tcp_json(tcp: TcpFigures | None) -> dict[str, float | int | None]:
    return NO_TCP_JSON if tcp is None else tcp.as_json()


class ScrapeWindow:
    """Scrapes per proxy in time order, kept for ``keep`` seconds (older ones dropped on add)."""

    def __init__(self, keep: float = 600.0) -> None:
        self.keep = keep
        self._scrapes: dict[str, list[Scrape]] = {}

    def add(self, proxy: str, scrape: Scrape) -> None:
        q = self._scrapes.setdefault(proxy, [])
        start = scrape.start_time
        if (start is not None and scrape.time - self.keep < start < scrape.time
                and (not q or (q[-1].start_time != start and q[-1].time < start))):
            # The process started inside the window (first seen, or restarted since the last
            # scrape): every request it counted so far happened since then, so begin from an
            # all-zero scrape at its start instead of losing them to the first scrape.
            q.append(Scrape(start, start_time=start))
        q.append(scrape)
        if q[0].time < scrape.time - self.keep:
            del q[:bisect_left(q, scrape.time - self.keep, key=_time)]

    def forget(self, keep_only: set[str]) -> None:
        """Drop proxies that are no longer registered."""
        for name in [n for n in self._scrapes if n not in keep_only]:
            del self._scrapes[name]

    def services(self, end: float) -> set[str]:
        """Every service named as a caller or a callee in what the window keeps (HTTP and TCP):
        names the mesh knows from its traffic, e.g. one with no sidecar left."""
        keys = [*(r.key for r in self.rates(end, self.keep)),
                *(s.key for s in self.tcp(end, self.keep))]
        return {k[i] for k in keys for i in (SRC, DST) if k[i]}

    def latest(self, proxy: str) -> Scrape | None:
        q = self._scrapes.get(proxy)
        return q[-1] if q else None

    def _spans(self, end: float, window: float, least: int = 2) -> Iterator[list[Scrape]]:
        """Per proxy, its scrapes from the first at or after ``end - window`` to the last at
        or before ``end`` (when there are at least ``least``)."""
        for q in self._scrapes.values():
            lo = bisect_left(q, end - window, key=_time)
            hi = bisect_right(q, end, key=_time) - 1
            if hi - lo + 1 >= least:
                yield q[lo:hi + 1]

    def rates(self, end: float, window: float, prefer: str = "destination") -> list[Rate]:
        """Rates per proxy over its scrapes in the window, each request counted once (see
        ``one_reporter``)."""
        return one_reporter([r for span in self._spans(end, window) for r in rates_over(span)],
                            prefer)

    def rule_rates(self, end: float, window: float) -> tuple[list[Rate], list[Rate]]:
        """Over the same scrapes as ``rates``: the rates of the named rules' series (keys of
        samples.ROUTE_LABELS), and of the request series the callers reported (``source``),
        which the rules' are a part of."""
        rules: list[Rate] = []
        callers: list[Rate] = []
        for span in self._spans(end, window):
            rules.extend(rates_over([s.rules() for s in span]))
            callers.extend(r for r in rates_over(span) if r.key[REPORTER] == "source")
        return rules, callers

    def decision_counts(self, end: float, window: float) -> list[tuple[Rate, float]]:
        """Over the same scrapes as ``rates``: per proxy, the rate of each of its policies'
        decision series (keys of samples.AUTHZ_LABELS) and its increase (the rate times the
        time between the proxy's first and last scrape there)."""
        out: list[tuple[Rate, float]] = []
        for span in self._spans(end, window):
            elapsed = span[-1].time - span[0].time
            out.extend((r, r.rps * elapsed) for r in rates_over([s.decisions() for s in span]))
        return out

    def tcp(self, end: float, window: float, prefer: str = "destination") -> list[TcpSeries]:
        """TCP series per proxy over the same scrapes as ``rates`` (open connections need only
        the last one), each connection counted once (see ``one_tcp_reporter``)."""
        out = [s for span in self._spans(end, window, least=1) for s in tcp_over(span)]
        return one_tcp_reporter(out, prefer)

    def stat(self, end: float, window: float, service: str | None = None,
             source: str | None = None) -> list[StatRow]:
        def wanted(key: tuple[str, ...]) -> bool:
            return ((service is None or key[DST] == service)
                    and (source is None or key[SRC] == source))

        http = group_by([r for r in self.rates(end, window) if wanted(r.key)], service_key)
        tcp = tcp_group_by([s for s in self.tcp(end, window) if wanted(s.key)], service_key)
        return [StatRow(k[0], k[1], http.get(k, IDLE), tcp.get(k))
                for k in sorted(http.keys() | tcp.keys())]

    def edges(self, end: float, window: float) -> list[EdgeRow]:
        http = group_by(self.rates(end, window, "source"), edge_key)
        tcp = tcp_group_by(self.tcp(end, window, "source"), edge_key)
        return [EdgeRow(k[0], k[1], k[2], k[3], http.get(k, IDLE), tcp.get(k))
                for k in sorted(http.keys() | tcp.keys())]

    def timelines(self, end: float, span: float, step: float
                  ) -> dict[str, list[dict[str, object]]]:
        """Per service, a point every ``step`` seconds over the last ``span`` seconds."""
        out: dict[str, list[dict[str, object]]] = {}
        count = int(span // step)
        for i in range(count + 1):
            t = end - (count - i) * step
            http = group_by(self.rates(t, step * 2), _service_only)
            tcp = tcp_group_by(self.tcp(t, step * 2), _service_only)
            for k in sorted(http.keys() | tcp.keys()):
                out.setdefault(k[0], []).append({"t": round(t, 3),
                                                 **http.get(k, IDLE).as_json(),
                                                 **_tcp_json(tcp.get(k))})
        return out


def _service_only(k: tuple[str, ...]) -> tuple[str]:
    return (k[DST],)


def _time(s: Scrape) -> float:
    return s.time
