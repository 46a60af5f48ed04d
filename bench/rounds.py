"""Combining repeated rounds of a path: the median of each figure damps a noisy shared machine."""

from __future__ import annotations

import dataclasses
import statistics
from collections.abc import Sequence

from bench.runner import PathResult


def _median(values: Sequence[float | None]) -> float | None:
    present = [v for v in values if v is not None]
    return statistics.median(present) if present else None


def _median_map(maps: Sequence[dict[str, float]]) -> dict[str, float]:
    keys = [k for k in maps[0] if all(k in m for m in maps)]
    return {k: statistics.median(m[k] for m in maps) for k in keys}


def median_result(rounds: Sequence[PathResult]) -> PathResult:
    """Per-figure median over the rounds that measured; the first failure if none did."""
    if not rounds:
        raise ValueError("no rounds")
    ok = [r for r in rounds if r.skipped is None and r.error is None]
    if not ok:
        return rounds[0]
    return dataclasses.replace(
        ok[0],
        rps=_median([r.rps for r in ok]),
        latency_ms=_median_map([r.latency_ms for r in ok]),
        wrk_latency_ms=_median_map([r.wrk_latency_ms for r in ok]),
        h2load_latency_ms=_median_map([r.h2load_latency_ms for r in ok]),
        cpu_s_per_1000=_median([r.cpu_s_per_1000 for r in ok]),
        cpu_s_per_1000_saturated=_median([r.cpu_s_per_1000_saturated for r in ok]),
        rss_mb=_median([r.rss_mb for r in ok]),
        neighbour_cpu=_median([r.neighbour_cpu for r in ok]),
        errors=sum(r.errors for r in ok),
        rounds=len(ok),
        spread={
            "rps": [r.rps for r in ok if r.rps is not None],
            "p99_ms": [r.latency_ms["p99"] for r in ok if "p99" in r.latency_ms],
            "neighbour_cpu": [r.neighbour_cpu for r in ok if r.neighbour_cpu is not None],
        },
    )
