"""meshctl canary's stepping logic with a fake mesh and a fake clock: no waits, no processes."""

from __future__ import annotations

import argparse
from collections.abc import Iterable

import pytest

from meshctl.canary.analysis import Measurement, Thresholds, Verdict, judge
from meshctl.canary.measure import analysis_window, version_label
from meshctl.canary.meshtarget import current_split
from meshctl.canary.stepper import CanaryError, CanaryPlan, CanaryRun, Outcome, Result
from meshctl.commands.canary import plan_from

GOOD = Measurement(100, 1.0, 12.0)
ERRORS = Measurement(100, 0.9, 12.0)
SLOW = Measurement(100, 1.0, 900.0)
QUIET = Measurement(3, 1.0, 12.0)
NONE = Measurement(0, None, None)


class FakeMesh:
    """A CanaryTarget answering measurements from a script and recording every weight set."""

    def __init__(self, measurements: Iterable[Measurement | BaseException]) -> None:
        self.measurements = list(measurements)
        self.weights: list[int] = []
        self.windows: list[float] = []

    def set_weight(self, weight: int) -> str:
        self.weights.append(weight)
        return "3 proxies synced in 5 ms"

    def measure(self, window: float) -> Measurement:
        self.windows.append(window)
        m = self.measurements.pop(0)
        if isinstance(m, BaseException):
            raise m
        return m


class FakeClock:
    """Time moves only when the run sleeps."""

    def __init__(self) -> None:
        self.now = 1_000_000.0
        self.sleeps: list[float] = []

    def sleep(self, seconds: float) -> None:
        self.sleeps.append(seconds)
        self.now += seconds


def run(mesh: FakeMesh, current: int = 0, **plan: object) -> tuple[Outcome, list[str], FakeClock]:
    clock = FakeClock()
    lines: list[str] = []
    kw: dict[str, object] = {"step": 25, "interval": 30.0, **plan}
    canary = CanaryRun(CanaryPlan("reviews", "v1", "v3", **kw),  # type: ignore[arg-type]
                       mesh, sleep=clock.sleep, clock=lambda: clock.now, out=lines.append)
    return canary.run(current), lines, clock


def decisions(lines: list[str]) -> list[str]:
    """The DECISION column of each step line (after the header)."""
    return [line.split(None, 5)[5] for line in lines[1:]]


def test_healthy_canary_is_promoted_step_by_step() -> None:
    """Every analysis passes: 25, 50, 75, 100, then 100% to the canary; one interval each."""
    mesh = FakeMesh([GOOD] * 4)
    outcome, lines, clock = run(mesh)
    assert outcome == Outcome(Result.PROMOTED, 100)
    assert mesh.weights == [25, 50, 75, 100, 100]
    assert clock.sleeps == [30.0] * 4 and mesh.windows == [30.0] * 4
    assert lines[0].split() == ["TIME", "WEIGHT", "SUCCESS", "P99", "REQUESTS", "DECISION"]
    assert decisions(lines) == [
        "start: v1 75% / v3 25% (3 proxies synced in 5 ms)",
        "advance to 50: v1 50% / v3 50% (3 proxies synced in 5 ms)",
        "advance to 75: v1 25% / v3 75% (3 proxies synced in 5 ms)",
        "advance to 100: v1 0% / v3 100% (3 proxies synced in 5 ms)",
        "promote: v1 0% / v3 100% (3 proxies synced in 5 ms)"]
    # the weight column is the weight the canary had while measured; then its figures
    assert lines[2].split()[1:5] == ["25", "100.00%", "12ms", "100"]


def test_consecutive_failures_roll_back() -> None:
    """Two failed analyses in a row: 100% back to --from, with the reason; no further step."""
    mesh = FakeMesh([GOOD, ERRORS, ERRORS])
    outcome, lines, _ = run(mesh)
    assert outcome == Outcome(Result.ROLLED_BACK, 0, "success rate 90.00% < 99.00%")
    assert mesh.weights == [25, 50, 0]
    assert decisions(lines)[2:] == [
        "failure 1 of 2: success rate 90.00% < 99.00%; stay at 50",
        "roll back: success rate 90.00% < 99.00%, 2 failures in a row; v1 100% / v3 0% "
        "(3 proxies synced in 5 ms)"]
    assert lines[-1].split()[1] == "50"


def test_a_pass_resets_the_failure_count() -> None:
    """fail, pass, fail is not two in a row: the canary goes on to promotion."""
    mesh = FakeMesh([ERRORS, GOOD, SLOW, GOOD, GOOD, GOOD])
    outcome, lines, _ = run(mesh)
    assert outcome.result is Result.PROMOTED
    assert mesh.weights == [25, 50, 75, 100, 100]
    assert "failure 1 of 2: p99 900ms > 500ms; stay at 50" in decisions(lines)


def test_too_few_requests_hold_without_counting_a_failure() -> None:
    """Quiet intervals hold the weight and count nothing, neither a failure nor a pass."""
    mesh = FakeMesh([ERRORS, QUIET, NONE, ERRORS])
    outcome, lines, _ = run(mesh)
    assert outcome.result is Result.ROLLED_BACK
    assert mesh.weights == [25, 0]
    assert decisions(lines)[2:4] == ["hold: only 3 requests (< 20)",
                                     "hold: only 0 requests (< 20)"]
    assert lines[3].split()[1:5] == ["25", "100.00%", "12ms", "3"]
    assert lines[4].split()[1:5] == ["25", "-", "-", "0"]


def test_max_weight_caps_the_steps_and_then_promotes() -> None:
    """--max-weight 60 with --step 25: 25, 50, 60, then promotion to 100."""
    mesh = FakeMesh([GOOD] * 3)
    outcome, _, _ = run(mesh, max_weight=60)
    assert outcome.result is Result.PROMOTED and mesh.weights == [25, 50, 60, 100]


def test_a_run_resumes_from_the_canary_weight_it_finds() -> None:
    """A canary already at 50 (an interrupted run) starts there, not at one step."""
    mesh = FakeMesh([GOOD] * 3)
    run(mesh, current=50)
    assert mesh.weights == [50, 75, 100, 100]
    assert CanaryPlan("r", "v1", "v3", step=25).weights(50) == [50, 75, 100]
    assert CanaryPlan("r", "v1", "v3", step=30).weights() == [30, 60, 90, 100]


def test_ctrl_c_leaves_the_weights() -> None:
    """A KeyboardInterrupt mid-run ends it without setting any weight."""
    mesh = FakeMesh([GOOD, KeyboardInterrupt()])
    outcome, _, _ = run(mesh)
    assert outcome == Outcome(Result.INTERRUPTED, 50)
    assert mesh.weights == [25, 50]


def test_a_failing_step_stops_the_run() -> None:
    """A metrics read that fails is not a failed analysis: the run stops with the error."""
    mesh = FakeMesh([GOOD, CanaryError("cannot read the canary's metrics")])
    with pytest.raises(CanaryError):
        run(mesh)
    assert mesh.weights == [25, 50]


@pytest.mark.parametrize(("m", "verdict", "reason"), [
    (Measurement(19.4, 1.0, 1.0), Verdict.HOLD, "only 19 requests (< 20)"),
    # the estimate 19.6 is shown as 20 requests (table, status): judged as shown, not held
    # as `only 20 requests (< 20)`
    (Measurement(19.6, 1.0, 1.0), Verdict.PASS, ""),
    (Measurement(20, 0.99, 500.0), Verdict.PASS, ""),
    (Measurement(20, 0.9899, 1.0), Verdict.FAIL, "success rate 98.99% < 99.00%"),
    (Measurement(20, 1.0, 500.1), Verdict.FAIL, "p99 500ms > 500ms"),
    (Measurement(20, 0.5, 900.0), Verdict.FAIL, "success rate 50.00% < 99.00%"),
    (Measurement(20, 1.0, None), Verdict.PASS, ""),
])
def test_judge_thresholds(m: Measurement, verdict: Verdict, reason: str) -> None:
    """Thresholds are inclusive; the request count is judged as shown (rounded); the success
    rate is judged before latency."""
    judged = judge(m, Thresholds())
    assert (judged.verdict, judged.reason) == (verdict, reason)


def test_latency_not_judged_without_a_limit() -> None:
    """--max-p99 0: any p99 passes."""
    assert judge(SLOW, Thresholds(max_p99_ms=None)).verdict is Verdict.PASS


def _args(**kw: object) -> argparse.Namespace:
    base: dict[str, object] = {
        "service": "reviews", "source": "v1", "target": "v3", "step": 10, "interval": 30.0,
        "max_weight": 100, "min_success_rate": 99.0, "max_p99": 0.5, "min_requests": 20,
        "failures": 2, "max_holds": 0}
    return argparse.Namespace(**{**base, **kw})


@pytest.mark.parametrize(("kw", "message"), [
    ({"step": 0}, "--step must be between 1 and 100, not 0"),
    ({"step": 50, "max_weight": 40}, "--max-weight must be between --step (50) and 100, not 40"),
    ({"failures": 0}, "--failures must be at least 1, not 0"),
    ({"max_holds": -1}, "--max-holds must be 0 (no limit) or more, not -1"),
    ({"target": "v1"}, "--from and --to are both v1"),
    ({"min_success_rate": 101.0}, "--min-success-rate must be a percentage, not 101.0"),
    ({"min_requests": 0}, "--min-requests must be at least 1, not 0"),
])
def test_plan_refuses_nonsense(kw: dict[str, object], message: str) -> None:
    """Arguments that cannot make a canary are refused with the reason."""
    with pytest.raises(ValueError) as err:
        plan_from(_args(**kw))
    assert str(err.value) == message


def test_plan_converts_units() -> None:
    """--min-success-rate is a percentage, --max-p99 seconds become ms, 0 means not judged."""
    assert plan_from(_args()).thresholds == Thresholds(0.99, 500.0, 20)
    assert plan_from(_args(max_p99=0.0)).thresholds.max_p99_ms is None


def test_window_holds_two_scrapes() -> None:
    """The window is the interval, widened when two scrapes would not fit in it."""
    assert analysis_window(30.0, 2.0) == 30.0
    assert analysis_window(1.0, 2.0) == 5.0
    assert analysis_window(1.0, 0.25) == 1.0


def test_canary_is_measured_by_its_version_label() -> None:
    """A subset is found in metrics by its `version` label, else by its name."""
    subsets = [{"name": "canary", "labels": {"version": "v3"}}, {"name": "v1", "labels": {}}]
    assert version_label(subsets, "canary") == "v3"
    assert version_label(subsets, "v1") == "v1" and version_label(subsets, "v9") == "v9"


def test_current_split_reads_the_default_rule() -> None:
    """The split is the last rule's, a lone backend without a weight taking 100."""
    route = {"spec": {"host": "reviews", "rules": [
        {"backends": [{"subset": "v2"}]},
        {"backends": [{"subset": "v1", "weight": 70}, {"subset": "v3", "weight": 30}]}]}}
    assert current_split(route) == [("v1", 70), ("v3", 30)]
    lone = {"spec": {"host": "reviews", "rules": [{"backends": [{"subset": "v1"}]}]}}
    assert current_split(lone) == [("v1", 100)]


def test_max_holds_rolls_back_a_canary_without_traffic() -> None:
    """--max-holds 3: three quiet analyses in a row roll back (a progress deadline); a quiet
    spell broken by a pass starts the count again."""
    mesh = FakeMesh([QUIET, QUIET, GOOD, QUIET, NONE, QUIET])
    outcome, lines, _ = run(mesh, max_holds=3)
    assert outcome.result is Result.ROLLED_BACK
    assert outcome.reason == "too little traffic, 3 analyses in a row: only 3 requests (< 20)"
    assert mesh.weights == [25, 50, 0]
    assert decisions(lines)[-1].startswith("roll back: too little traffic, 3 analyses in a row")
    held = FakeMesh([QUIET] * 5 + [GOOD] * 4)
    assert run(held)[0].result is Result.PROMOTED  # the default: no limit
