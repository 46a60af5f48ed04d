"""A short in-memory window of scrapes per proxy, and golden metrics over any part of it."""

from __future__ import annotations

from bisect import bisect_left, bisect_right
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
from meshctl.observe.samples import DST, SRC, Scrape


@dataclass(frozen=True, slots=True)
class StatRow:
    """One service version's golden metrics."""

    service: str
    version: str
    golden: Golden

    def as_json(self) -> dict[str, object]:
        return {"service": self.service, "version": self.version, **self.golden.as_json()}


@dataclass(frozen=True, slots=True)
class EdgeRow:
    """Traffic from one workload version to one service version."""

    source: str
    source_version: str
    destination: str
    destination_version: str
    golden: Golden

    def as_json(self) -> dict[str, object]:
        share = self.golden.mtls_share
        return {"source": self.source, "sourceVersion": self.source_version,
                "destination": self.destination, "destinationVersion": self.destination_version,
                "secured": share is not None and share >= 0.999, **self.golden.as_json()}


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

    def latest(self, proxy: str) -> Scrape | None:
        q = self._scrapes.get(proxy)
        return q[-1] if q else None

    def rates(self, end: float, window: float, prefer: str = "destination") -> list[Rate]:
        """Rates per proxy over its scrapes from the first at or after ``end - window`` to the
        last at or before ``end``, each request counted once (see ``one_reporter``)."""
        out: list[Rate] = []
        for q in self._scrapes.values():
            lo = bisect_left(q, end - window, key=_time)
            hi = bisect_right(q, end, key=_time) - 1
            if hi > lo:
                out.extend(rates_over(q[lo:hi + 1]))
        return one_reporter(out, prefer)

    def stat(self, end: float, window: float, service: str | None = None,
             source: str | None = None) -> list[StatRow]:
        selected = [r for r in self.rates(end, window)
                    if (service is None or r.key[DST] == service)
                    and (source is None or r.key[SRC] == source)]
        return [StatRow(svc, ver, g) for (svc, ver), g in group_by(selected, service_key).items()]

    def edges(self, end: float, window: float) -> list[EdgeRow]:
        return [EdgeRow(k[0], k[1], k[2], k[3], g)
                for k, g in group_by(self.rates(end, window, "source"), edge_key).items()]

    def timelines(self, end: float, span: float, step: float
                  ) -> dict[str, list[dict[str, object]]]:
        """Per service, a point every ``step`` seconds over the last ``span`` seconds."""
        out: dict[str, list[dict[str, object]]] = {}
        count = int(span // step)
        for i in range(count + 1):
            t = end - (count - i) * step
            for (svc,), g in group_by(self.rates(t, step * 2), lambda k: (k[DST],)).items():
                out.setdefault(svc, []).append({"t": round(t, 3), **g.as_json()})
        return out


def _time(s: Scrape) -> float:
    return s.time
