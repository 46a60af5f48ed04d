"""Golden metrics from counter rates: success rate, requests/s, latency quantiles, mTLS share.

Quantiles follow Prometheus' ``histogram_quantile``: find the bucket holding the rank and
interpolate linearly inside it, so ``meshctl stat`` and the Grafana panels agree.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass

from meshctl.observe.samples import (
    CODE,
    DST,
    DST_VER,
    FLAGS,
    GRPC,
    REPORTER,
    SECURITY,
    SRC,
    SRC_VER,
    Key,
    Scrape,
)


@dataclass(frozen=True, slots=True)
class Rate:
    """Per-second rates of one series between two scrapes: requests and cumulative buckets."""

    key: Key
    rps: float
    buckets: tuple[tuple[float, float], ...]


@dataclass(frozen=True, slots=True)
class Golden:
    """The golden signals of a group of series over a window."""

    rps: float
    success_rate: float | None
    p50: float | None
    p95: float | None
    p99: float | None
    mtls_share: float | None

    def as_json(self) -> dict[str, float | None]:
        return {"rps": round(self.rps, 3), "successRate": _r(self.success_rate),
                "p50": _r(self.p50), "p95": _r(self.p95), "p99": _r(self.p99),
                "mtlsShare": _r(self.mtls_share)}


def _r(value: float | None) -> float | None:
    return None if value is None else round(value, 4)


def rates(old: Scrape | None, new: Scrape) -> list[Rate]:
    """Rates between two scrapes of one proxy; a counter that went down restarted from 0."""
    if old is None:
        return []
    return rates_over([old, new])


def rates_over(scrapes: Sequence[Scrape]) -> list[Rate]:
    """Rates over consecutive scrapes of one proxy, first to last (like Prometheus' ``rate``):
    the increase is summed pair by pair, so a restart in between (a counter that went down,
    or a new process start time) loses nothing before it and counts from 0 after it."""
    if len(scrapes) < 2 or scrapes[-1].time <= scrapes[0].time:
        return []
    span = scrapes[-1].time - scrapes[0].time
    counts: dict[Key, float] = {}
    buckets: dict[Key, dict[float, float]] = {}
    for old, new in itertools.pairwise(scrapes):
        restarted = (old.start_time is not None and new.start_time is not None
                     and new.start_time != old.start_time)
        for key, count in new.requests.items():
            before = 0.0 if restarted else old.requests.get(key, 0.0)
            reset = count < before
            delta = count if reset else count - before
            if delta <= 0:
                continue
            counts[key] = counts.get(key, 0.0) + delta
            old_b = {} if restarted or reset else dict(old.buckets.get(key, ()))
            acc = buckets.setdefault(key, {})
            for le, c in new.buckets.get(key, ()):
                acc[le] = acc.get(le, 0.0) + c - old_b.get(le, 0.0)
    return [Rate(key, delta / span, tuple((le, c / span) for le, c in sorted(buckets[key].items())))
            for key, delta in counts.items()]


def histogram_quantile(q: float, buckets: Iterable[tuple[float, float]]) -> float | None:
    """Prometheus' estimate of quantile ``q`` from cumulative ``(le, count)`` buckets."""
    ordered = sorted(buckets)
    if not ordered or ordered[-1][1] <= 0:
        return None
    total = ordered[-1][1]
    rank = q * total
    prev_le, prev_count = 0.0, 0.0
    for le, count in ordered:
        if count >= rank:
            if math.isinf(le):
                return prev_le  # the estimate cannot exceed the highest finite bound
            in_bucket = count - prev_count
            if in_bucket <= 0:
                return le
            return prev_le + (le - prev_le) * (rank - prev_count) / in_bucket
        prev_le, prev_count = le, count
    return prev_le


# Replies a caller's sidecar makes without sending anything to the destination: only the
# source reporter sees these requests, so a service's destination-side view must add them.
SOURCE_ONLY_FLAGS = frozenset({"fault_injected", "upstream_connect_failure",
                               "no_healthy_upstream", "overflow"})


def is_success(code: str, grpc: str = "") -> bool:
    """5xx and "no response" (0) are failures, as in linkerd's success rate, and so is a gRPC
    call whose grpc-status is not 0 (OK), whatever its HTTP status (Linkerd's gRPC class)."""
    return code.isdigit() and 0 < int(code) < 500 and grpc in ("", "0")


def golden(group: Iterable[Rate], code: int = CODE, grpc: int = GRPC,
           security: int | None = SECURITY) -> Golden:
    """Combine rates of many series (and proxies) into one set of golden signals; ``code``,
    ``grpc`` and ``security``: where their keys hold those labels (other series than
    ami_requests', such as the named rules', have no security label: no mTLS share)."""
    total = ok = secure = known = 0.0
    merged: dict[float, float] = {}
    for r in group:
        total += r.rps
        if is_success(r.key[code], r.key[grpc]):
            ok += r.rps
        policy = r.key[security] if security is not None else "unknown"
        if policy != "unknown":  # answered by the caller's sidecar: no connection to judge
            known += r.rps
            if policy == "mutual_tls":
                secure += r.rps
        for le, c in r.buckets:
            merged[le] = merged.get(le, 0.0) + c
    if total <= 0:
        return Golden(0.0, None, None, None, None, None)
    pairs = list(merged.items())
    return Golden(total, ok / total, histogram_quantile(0.5, pairs),
                  histogram_quantile(0.95, pairs), histogram_quantile(0.99, pairs),
                  secure / known if known > 0 else None)


def one_reporter(all_rates: list[Rate], prefer: str = "destination") -> list[Rate]:
    """Count each request once: per destination service, the ``prefer`` reporter's series win
    when both the caller's outbound ("source") and the callee's inbound ("destination") exist.
    Per service the inbound view is complete but for the requests the caller's sidecar answered
    itself (SOURCE_ONLY_FLAGS), which are added from the source side; per edge the caller
    knows best who it is."""
    other = "source" if prefer == "destination" else "destination"
    has_preferred = {r.key[DST] for r in all_rates if r.key[REPORTER] == prefer}
    return [r for r in all_rates
            if r.key[REPORTER] == (prefer if r.key[DST] in has_preferred else other)
            or (r.key[REPORTER] == "source" and r.key[FLAGS] in SOURCE_ONLY_FLAGS)]


def group_by(all_rates: Iterable[Rate], key: Callable[[Key], tuple[str, ...]]
             ) -> dict[tuple[str, ...], Golden]:
    groups: dict[tuple[str, ...], list[Rate]] = {}
    for r in all_rates:
        groups.setdefault(key(r.key), []).append(r)
    return {k: golden(v) for k, v in sorted(groups.items())}


def service_key(k: Key) -> tuple[str, str]:
    return (k[DST], k[DST_VER])


def edge_key(k: Key) -> tuple[str, str, str, str]:
    return (k[SRC], k[SRC_VER], k[DST], k[DST_VER])
