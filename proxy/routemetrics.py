"""Per-rule request metrics: a request decided by a named rule of a Route is counted again.

Opt-in by naming rules: only a `Decision` compiled from a named rule (caller's side) carries a
`RuleCounter`, and only a listener whose router has one records through it (Listener.use), so a
mesh without named rules runs not one instruction of this per request. When a rule applies,
recording is a 3-tuple key, one dict lookup and three increments, as proxy.metrics does.
"""

from __future__ import annotations

from bisect import bisect_left
from collections.abc import Iterator
from typing import TYPE_CHECKING

from prometheus_client.core import CounterMetricFamily, HistogramMetricFamily

from proxy.buckets import DURATION_BUCKETS_MS, DURATION_BUCKETS_S, cumulative

if TYPE_CHECKING:
    from proxy.exchange import Exchange

# `route` is the Route's namespace/name, `rule` the rule's name (Linkerd's route_name and
# route_namespace, as one label); the others mean what they mean on ami_requests_total.
ROUTE_LABELS = ("reporter", "destination_service", "route", "rule", "response_code",
                "grpc_response_status")
# (destination_service, response_code, grpc_response_status) -> its series
RuleSeries = dict[tuple[str, int, str], "Series"]


class Series:
    """A count and a duration histogram (ms, Istio's bounds: those of ami_requests)."""

    __slots__ = ("buckets", "count", "sum")

    def __init__(self) -> None:
        self.count = 0
        self.sum = 0.0
        self.buckets = [0] * (len(DURATION_BUCKETS_MS) + 1)


class RuleCounter:
    """One named rule as one snapshot compiled it: the rule's series (shared by every snapshot
    naming the same rule, so pushes do not reset them) and the destination label of requests
    answered before a backend was chosen (a redirect rule's)."""

    __slots__ = ("series", "unrouted")

    def __init__(self, series: RuleSeries, unrouted: str) -> None:
        self.series = series
        self.unrouted = unrouted

    def record(self, ex: Exchange, duration_ms: float) -> None:
        backend = ex.backend
        # destination_service: where the request went, as on its ami_requests series
        key = (backend.metric_prefix[3] if backend is not None else self.unrouted, ex.status,
               (ex.grpc_status or "") if ex.http2 and ex.grpc else "")  # type: ignore[attr-defined]
        s = self.series.get(key)
        if s is None:
            s = self.series[key] = Series()
        s.count += 1
        s.sum += duration_ms
        s.buckets[bisect_left(DURATION_BUCKETS_MS, duration_ms)] += 1


class RuleTable:
    """Every named rule's series seen by this proxy, keyed (reporter, route, rule)."""

    __slots__ = ("compiled", "rules")

    def __init__(self) -> None:
        self.rules: dict[tuple[str, str, str], RuleSeries] = {}
        self.compiled: set[tuple[str, str, str]] = set()  # named by the snapshot being built

    def begin(self) -> None:
        """A snapshot is about to be compiled: note afresh which rules it names."""
        self.compiled = set()

    def counter(self, reporter: str, route: str, rule: str, unrouted: str) -> RuleCounter:
        """The rule's counter for a new snapshot (called when it is compiled, not per
        request)."""
        key = (reporter, route, rule)
        self.compiled.add(key)
        return RuleCounter(self.rules.setdefault(key, {}), unrouted)

    def retire_unused(self) -> None:
        """The snapshot is in use: stop exporting the series of rules it no longer names
        (renamed or removed), as a Prometheus client drops a series that no longer exists.
        A request still finishing on the old snapshot counts into the dropped dict, unseen."""
        for key in self.rules.keys() - self.compiled:
            del self.rules[key]

    def families(self) -> Iterator[CounterMetricFamily | HistogramMetricFamily]:
        """The two families, at scrape time; nothing at all while no named rule counted."""
        if not any(self.rules.values()):
            return
        requests = CounterMetricFamily(
            "ami_route_requests", "Requests decided by a named rule of a Route "
            "(caller's side).", labels=ROUTE_LABELS)
        duration = HistogramMetricFamily(
            "ami_route_request_duration_seconds", "Duration in seconds of requests decided "
            "by a named rule of a Route (caller's side).", labels=ROUTE_LABELS)
        for (reporter, route, rule), series in self.rules.items():
            for (dst, status, grpc), s in series.items():
                labels = (reporter, dst, route, rule, str(status), grpc)
                requests.add_metric(labels, s.count)
                duration.add_metric(labels, cumulative(DURATION_BUCKETS_S, s.buckets),
                                    s.sum / 1000.0)
        yield requests
        yield duration
