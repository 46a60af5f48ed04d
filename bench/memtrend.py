"""Whether a memory series grows: baseline vs end level and a least-squares slope."""

from __future__ import annotations

from dataclasses import dataclass
from statistics import median


@dataclass(frozen=True, slots=True)
class Trend:
    """RSS after warm-up vs at the end of a soak (MiB), and the fitted slope (MiB/min)."""

    baseline_mb: float
    end_mb: float
    peak_mb: float
    slope_mb_per_min: float
    samples: int

    @property
    def growth_mb(self) -> float:
        """End level minus baseline level."""
        return self.end_mb - self.baseline_mb


def trend(samples: list[tuple[float, float]], warmup_s: float) -> Trend:
    """Fit (seconds, MiB) samples taken after `warmup_s`.

    Levels are medians of the first and last tenth of the samples (at least three each), so one
    sample caught mid-allocation does not read as growth.
    """
    kept = [(t, mb) for t, mb in samples if t >= warmup_s]
    if len(kept) < 2:
        raise ValueError(f"need at least two samples after the {warmup_s:g} s warm-up")
    edge = min(len(kept), max(3, len(kept) // 10))
    baseline = median(mb for _, mb in kept[:edge])
    end = median(mb for _, mb in kept[-edge:])
    mean_t = sum(t for t, _ in kept) / len(kept)
    mean_mb = sum(mb for _, mb in kept) / len(kept)
    var_t = sum((t - mean_t) ** 2 for t, _ in kept)
    cov = sum((t - mean_t) * (mb - mean_mb) for t, mb in kept)
    slope = cov / var_t * 60.0 if var_t > 0 else 0.0
    return Trend(baseline, end, max(mb for _, mb in kept), slope, len(kept))
