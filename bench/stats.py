"""Latency percentiles (nearest-rank over the sorted samples) shared by the load generators."""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence

DEFAULT_PERCENTILES = (50.0, 90.0, 99.0)


def percentile(sorted_samples: Sequence[float], pct: float) -> float:
    """Nearest-rank percentile: the smallest sample with at least pct% of samples <= it."""
    if not sorted_samples:
        raise ValueError("no samples")
    if not 0.0 < pct <= 100.0:
        raise ValueError(f"percentile must be in (0, 100], got {pct}")
    rank = math.ceil(pct / 100.0 * len(sorted_samples))
    return sorted_samples[rank - 1]


def summarize(
    samples: Iterable[float], pcts: Sequence[float] = DEFAULT_PERCENTILES
) -> dict[str, float]:
    """Map "p50"/"p90"/"p99" (and "max") to the samples' values; empty input gives {}."""
    ordered = sorted(samples)
    if not ordered:
        return {}
    out = {f"p{pct:g}": percentile(ordered, pct) for pct in pcts}
    out["max"] = ordered[-1]
    return out
