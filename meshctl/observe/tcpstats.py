"""TCP figures from the ``ami_tcp_*`` counters: connections open now and bytes/s each way.

Open connections are ``opened - closed`` at the last scrape of the window (a gauge made of two
counters, as in Istio's dashboards); bytes/s are counter increases over the window, summed
scrape to scrape as ``golden.rates_over`` does, so a restart loses nothing.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass

from meshctl.observe.samples import (
    CLOSED,
    DST,
    NO_TCP,
    OPENED,
    RECEIVED,
    REPORTER,
    SENT,
    TCP_SECURITY,
    Key,
    Scrape,
)


@dataclass(frozen=True, slots=True)
class TcpSeries:
    """One TCP series of one proxy over a window."""

    key: Key  # see samples.TCP_LABELS
    open: float  # connections open at the last scrape
    read: float  # bytes/s from the callers (ami_tcp_received_bytes)
    write: float  # bytes/s to the callers (ami_tcp_sent_bytes)


@dataclass(frozen=True, slots=True)
class TcpFigures:
    """The TCP figures of a group of series: Linkerd's TCP_CONN, READ_BYTES/SEC and
    WRITE_BYTES/SEC."""

    connections: int
    read: float
    write: float
    mtls: bool  # every series counted was mutual_tls

    def as_json(self) -> dict[str, float | int | None]:
        return {"tcpConnections": self.connections, "tcpReadBytesPerSec": round(self.read, 1),
                "tcpWriteBytesPerSec": round(self.write, 1)}


# The keys of a row without TCP traffic: present, so every row has the same shape.
NO_TCP_JSON: dict[str, float | int | None] = {
    "tcpConnections": None, "tcpReadBytesPerSec": None, "tcpWriteBytesPerSec": None}


def tcp_over(scrapes: Sequence[Scrape]) -> list[TcpSeries]:
    """The TCP series of one proxy over consecutive scrapes, first to last; a series with no
    connection open at the end and no counter moving in between is left out (idle)."""
    if not scrapes:
        return []
    increase: dict[Key, list[float]] = {}
    for old, new in itertools.pairwise(scrapes):
        restarted = (old.start_time is not None and new.start_time is not None
                     and new.start_time != old.start_time)
        for key, counts in new.tcp.items():
            before = NO_TCP if restarted else old.tcp.get(key, NO_TCP)
            acc = increase.setdefault(key, [0.0, 0.0, 0.0, 0.0])
            for i, (now, then) in enumerate(zip(counts, before, strict=True)):
                acc[i] += now if now < then else now - then  # went down: counts from 0
    last = scrapes[-1]
    span = last.time - scrapes[0].time
    out: list[TcpSeries] = []
    for key in sorted(increase.keys() | last.tcp.keys()):
        counts = last.tcp.get(key, NO_TCP)
        moved = increase.get(key, NO_TCP)
        open_now = max(counts[OPENED] - counts[CLOSED], 0.0)
        if open_now <= 0 and not any(moved):
            continue
        out.append(TcpSeries(key, open_now, moved[RECEIVED] / span if span > 0 else 0.0,
                             moved[SENT] / span if span > 0 else 0.0))
    return out


def one_tcp_reporter(series: list[TcpSeries], prefer: str = "destination") -> list[TcpSeries]:
    """Count each connection once: per destination service, the ``prefer`` reporter's series
    when it has any, else the other's. Both sidecars of a connection count it; one the
    caller's sidecar refused never reached the destination, but it is closed at once and
    moves no byte, so the destination's view of a service's connections and bytes is whole."""
    other = "source" if prefer == "destination" else "destination"
    has_preferred = {s.key[DST] for s in series if s.key[REPORTER] == prefer}
    return [s for s in series
            if s.key[REPORTER] == (prefer if s.key[DST] in has_preferred else other)]


def tcp_group_by(series: Iterable[TcpSeries], key: Callable[[Key], tuple[str, ...]]
                 ) -> dict[tuple[str, ...], TcpFigures]:
    groups: dict[tuple[str, ...], list[TcpSeries]] = {}
    for s in series:
        groups.setdefault(key(s.key), []).append(s)
    return {k: TcpFigures(round(sum(s.open for s in v)), sum(s.read for s in v),
                          sum(s.write for s in v),
                          all(s.key[TCP_SECURITY] == "mutual_tls" for s in v))
            for k, v in sorted(groups.items())}
