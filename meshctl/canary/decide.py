"""The canary decision after one analysis (advance, hold, fail, promote, roll back), shared by
``meshctl canary`` and the control plane's Canary controller."""

from __future__ import annotations

import enum
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING

from meshctl.canary.analysis import Measurement, Verdict, judge

if TYPE_CHECKING:
    from meshctl.canary.stepper import CanaryPlan


class Action(enum.Enum):
    ADVANCE = "advance"
    HOLD = "hold"  # too little traffic to judge: no step, no failure
    FAIL = "fail"  # a failure counted; stay at the weight
    PROMOTE = "promote"
    ROLL_BACK = "roll back"


@dataclass(frozen=True, slots=True)
class Progress:
    """Where a run is: the canary's weight and the failed / held analyses in a row."""

    weight: int
    failed: int = 0
    held: int = 0


@dataclass(frozen=True, slots=True)
class Step:
    """One decision: ``progress`` after it (its weight is the one to set), ``reason`` the
    judgement's words ('' on a pass), ``said`` the account of a rollback."""

    action: Action
    progress: Progress
    reason: str = ""
    said: str = ""

    def summary(self, plan: CanaryPlan, before: int) -> str:
        """The decision in words, without the split (e.g. ``failure 1 of 2: ...; stay at
        10``); ``before``: the weight the canary had while measured."""
        if self.action is Action.HOLD:
            return f"hold: {self.reason}"
        if self.action is Action.FAIL:
            return (f"failure {self.progress.failed} of {plan.failures}: {self.reason}; "
                    f"stay at {before}")
        if self.action is Action.ROLL_BACK:
            return f"roll back: {self.said}"
        if self.action is Action.PROMOTE:
            return "promote"
        return f"advance to {self.progress.weight}"


def decide(plan: CanaryPlan, progress: Progress, m: Measurement) -> Step:
    """Judge ``m`` against the plan's thresholds and decide the next step from ``progress``."""
    verdict = judge(m, plan.thresholds)
    weight = progress.weight
    held = progress.held + 1 if verdict.verdict is Verdict.HOLD else 0
    if held and held == plan.max_holds:
        # Flagger's progress deadline: a canary nobody calls is never judged healthy
        reason = f"too little traffic, {held} analyses in a row: {verdict.reason}"
        return Step(Action.ROLL_BACK, Progress(0, progress.failed, held), reason, reason)
    if verdict.verdict is Verdict.HOLD:
        return Step(Action.HOLD, replace(progress, held=held), verdict.reason)
    if verdict.verdict is Verdict.FAIL:
        return fail(plan, progress, verdict.reason)
    # consecutive failures: a pass starts the count again (promoting too)
    if weight >= plan.max_weight:
        return Step(Action.PROMOTE, Progress(100, 0, 0))
    return Step(Action.ADVANCE, Progress(min(weight + plan.step, plan.max_weight), 0, 0))


def fail(plan: CanaryPlan, progress: Progress, reason: str) -> Step:
    """A failed check (the metrics', or a rollout webhook's): counted, rolled back at
    ``failures`` in a row."""
    failed = progress.failed + 1
    if failed >= plan.failures:
        return Step(Action.ROLL_BACK, Progress(0, failed, 0), reason,
                    f"{reason}, {failed} failure{'s' if failed > 1 else ''} in a row")
    return Step(Action.FAIL, Progress(progress.weight, failed, 0), reason)
