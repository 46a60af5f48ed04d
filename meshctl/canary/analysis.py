"""One analysis of a canary: its measured golden metrics against the thresholds."""

from __future__ import annotations

import enum
from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class Thresholds:
    """What a canary must show over one interval: ``min_success_rate`` as a fraction (0.99),
    ``max_p99_ms`` (None: latency not judged), and at least ``min_requests`` to judge at all."""

    min_success_rate: float = 0.99
    max_p99_ms: float | None = 500.0
    min_requests: int = 20


@dataclass(frozen=True, slots=True)
class Measurement:
    """The canary's requests (estimated over the window), success rate and p99 (ms)."""

    requests: float
    success_rate: float | None
    p99_ms: float | None


class Verdict(enum.Enum):
    PASS = "pass"
    FAIL = "fail"
    HOLD = "hold"  # too few requests to judge: neither a pass nor a failure


@dataclass(frozen=True, slots=True)
class Judgement:
    verdict: Verdict
    reason: str


def judge(m: Measurement, t: Thresholds) -> Judgement:
    """Hold below ``min_requests``; else fail on the first threshold missed, or pass."""
    # judged on the count as every output shows it (rounded), so a hold never reads
    # `only 5 requests (< 5)` for an estimate of 4.6
    shown = round(m.requests)
    if shown < t.min_requests or m.success_rate is None:
        return Judgement(Verdict.HOLD, f"only {shown} requests (< {t.min_requests})")
    if m.success_rate < t.min_success_rate:
        return Judgement(Verdict.FAIL, f"success rate {percent(m.success_rate)} "
                                       f"< {percent(t.min_success_rate)}")
    if t.max_p99_ms is not None and m.p99_ms is not None and m.p99_ms > t.max_p99_ms:
        return Judgement(Verdict.FAIL, f"p99 {m.p99_ms:.0f}ms > {t.max_p99_ms:.0f}ms")
    return Judgement(Verdict.PASS, "")


def percent(fraction: float) -> str:
    """0.995 -> '99.50%'."""
    return f"{100 * fraction:.2f}%"
