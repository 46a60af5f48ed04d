"""The canary loop: wait an interval, judge the canary, then advance, hold, promote or roll back.

Time and the mesh are injected (``sleep``, ``clock``, a ``CanaryTarget``), so the stepping
logic is tested without waiting and without a control plane.
"""

from __future__ import annotations

import enum
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Protocol

from meshctl.canary.analysis import Measurement, Thresholds, percent
from meshctl.canary.decide import Action, Progress, decide


class CanaryError(Exception):
    """A step could not be applied or measured (e.g. the proxies did not ACK); the message says
    why. The weights are left as the last successful step set them."""


class CanaryTarget(Protocol):
    """The mesh as the loop sees it."""

    def set_weight(self, weight: int) -> str:
        """Send ``weight`` % to the canary (the rest to the stable version) and wait for every
        proxy to ACK; a few words on how that went. Raises CanaryError."""

    def measure(self, window: float) -> Measurement:
        """The canary's golden metrics over the last ``window`` seconds. Raises CanaryError."""


@dataclass(frozen=True, slots=True)
class CanaryPlan:
    """``meshctl canary``'s arguments: from ``source`` to ``target`` of ``service``."""

    service: str
    source: str
    target: str
    step: int = 10
    interval: float = 30.0
    max_weight: int = 100
    failures: int = 2
    thresholds: Thresholds = field(default_factory=Thresholds)
    max_holds: int = 0  # analyses in a row with too little traffic before a rollback; 0: any

    def __post_init__(self) -> None:
        if not 1 <= self.step <= 100:
            raise ValueError(f"--step must be between 1 and 100, not {self.step}")
        if not self.step <= self.max_weight <= 100:
            raise ValueError(f"--max-weight must be between --step ({self.step}) and 100, "
                             f"not {self.max_weight}")
        if self.failures < 1:
            raise ValueError(f"--failures must be at least 1, not {self.failures}")
        if self.max_holds < 0:
            raise ValueError(f"--max-holds must be 0 (no limit) or more, not {self.max_holds}")
        if self.source == self.target:
            raise ValueError(f"--from and --to are both {self.source}")

    def start_weight(self, current: int) -> int:
        """Where a run starts: one step, or the canary's current weight (a run interrupted
        earlier resumes there), at most ``max_weight``."""
        return min(self.max_weight, max(self.step, current))

    def weights(self, current: int = 0) -> list[int]:
        """The canary weights analysed in turn, before promotion (e.g. 10, 20, ..., 100)."""
        out = [self.start_weight(current)]
        while out[-1] < self.max_weight:
            out.append(min(out[-1] + self.step, self.max_weight))
        return out


class Result(enum.Enum):
    PROMOTED = "promoted"
    ROLLED_BACK = "rolled back"
    INTERRUPTED = "interrupted"


@dataclass(frozen=True, slots=True)
class Outcome:
    """How a run ended; ``weight``: the canary weight last asked for."""

    result: Result
    weight: int
    reason: str = ""


HEADER = f"{'TIME':<9} {'WEIGHT':>6}  {'SUCCESS':>8}  {'P99':>7}  {'REQUESTS':>8}  DECISION"


class CanaryRun:
    """Runs one plan against one target; ``out`` gets one line per step."""

    def __init__(self, plan: CanaryPlan, target: CanaryTarget, *, window: float | None = None,
                 sleep: Callable[[float], None] = time.sleep,
                 clock: Callable[[], float] = time.time,
                 out: Callable[[str], None] = print) -> None:
        self.plan = plan
        self.target = target
        self.window = window or plan.interval  # the metrics window: by default the interval
        self._sleep = sleep
        self._clock = clock
        self._out = out
        self.weight = 0  # the canary weight last asked for

    def run(self, current: int = 0) -> Outcome:
        """From the canary's ``current`` weight to promotion or rollback; Ctrl-C (a
        KeyboardInterrupt) ends it where it is, without touching the weights."""
        self.weight = self.plan.start_weight(current)
        try:
            self._out(HEADER)
            self._line(self.weight, None, f"start: {self._split(self.weight)} "
                                          f"({self.target.set_weight(self.weight)})")
            return self._loop()
        except KeyboardInterrupt:
            return Outcome(Result.INTERRUPTED, self.weight)

    def _loop(self) -> Outcome:
        progress = Progress(self.weight)
        while True:
            self._sleep(self.plan.interval)
            m = self.target.measure(self.window)
            weight = progress.weight
            step = decide(self.plan, progress, m)
            progress = step.progress
            if step.action is Action.ROLL_BACK:
                return self._roll_back(weight, m, step.reason, step.said)
            if step.action in (Action.HOLD, Action.FAIL):
                self._line(weight, m, step.summary(self.plan, weight))
                continue
            self.weight = progress.weight
            detail = self.target.set_weight(self.weight)
            if step.action is Action.PROMOTE:
                self._line(weight, m, f"promote: {self._split(100)} ({detail})")
                return Outcome(Result.PROMOTED, 100)
            self._line(weight, m, f"{step.summary(self.plan, weight)}: "
                                  f"{self._split(self.weight)} ({detail})")

    def _roll_back(self, weight: int, m: Measurement, reason: str, said: str) -> Outcome:
        """All traffic back to the stable version; ``said``: the step line's account."""
        self.weight = 0
        detail = self.target.set_weight(0)
        self._line(weight, m, f"roll back: {said}; {self._split(0)} ({detail})")
        return Outcome(Result.ROLLED_BACK, 0, reason)

    def _split(self, weight: int) -> str:
        return f"{self.plan.source} {100 - weight}% / {self.plan.target} {weight}%"

    def _line(self, weight: int, m: Measurement | None, decision: str) -> None:
        """One step: when, the weight the canary had while measured, its figures, the decision."""
        when = time.strftime("%H:%M:%S", time.localtime(self._clock()))
        success = "-" if m is None or m.success_rate is None else percent(m.success_rate)
        p99 = "-" if m is None or m.p99_ms is None else f"{m.p99_ms:.0f}ms"
        requests = "-" if m is None else f"{m.requests:.0f}"
        self._out(f"{when:<9} {weight:>6}  {success:>8}  {p99:>7}  {requests:>8}  {decision}")
