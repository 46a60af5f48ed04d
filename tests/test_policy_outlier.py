"""Tests for proxy.policy.outlier."""

from collections.abc import Hashable

import pytest
from hypothesis import given
from hypothesis import strategies as st

from proxy.policy.outlier import OutlierDetector
from tests.fakes import FakeClock


def make(
    clock: FakeClock,
    *,
    c5xx: int = 3,
    gateway: int = 0,
    percent: float = 100.0,
    events: list[tuple[str, Hashable]] | None = None,
) -> OutlierDetector:
    """A detector (interval 10 s, base ejection 30 s) logging callbacks into ``events``."""
    log = events if events is not None else []
    return OutlierDetector(
        c5xx,
        gateway,
        10.0,
        30.0,
        percent,
        clock,
        on_ejection=lambda k: log.append(("eject", k)),
        on_return=lambda k: log.append(("return", k)),
    )


def test_consecutive_5xx_ejects_and_callback_fires() -> None:
    """The Nth consecutive 5xx ejects the endpoint and calls on_ejection once."""
    clock = FakeClock()
    events: list[tuple[str, Hashable]] = []
    detector = make(clock, events=events)
    detector.set_endpoints(["a", "b"])
    detector.record("a", 500)
    detector.record("a", None)  # a connect failure counts as a 5xx
    assert not detector.is_ejected("a")
    detector.record("a", 503)
    assert detector.is_ejected("a")
    assert detector.ejected_count == 1
    assert events == [("eject", "a")]


def test_success_resets_the_consecutive_count() -> None:
    """A non-5xx response between errors restarts the count."""
    clock = FakeClock()
    detector = make(clock)
    for status in (500, 500, 200, 500, 500):
        detector.record("a", status)
    assert not detector.is_ejected("a")


def test_gateway_errors_detector() -> None:
    """Only 502/503/504, connect failures and flagged errors count toward consecutive_gateway."""
    clock = FakeClock()
    detector = make(clock, c5xx=0, gateway=2)
    detector.record("a", 500)
    detector.record("a", 500)
    assert not detector.is_ejected("a")  # the 5xx detector is disabled (threshold 0)
    detector.record("a", 502)
    detector.record("a", 500, gateway_error=True)
    assert detector.is_ejected("a")
    detector.record("b", None)
    detector.record("b", 504)
    assert detector.is_ejected("b")


def test_ejection_expires_lazily_on_read_and_calls_on_return() -> None:
    """After base_ejection seconds, is_ejected returns the endpoint and calls on_return."""
    clock = FakeClock()
    events: list[tuple[str, Hashable]] = []
    detector = make(clock, events=events)
    for _ in range(3):
        detector.record("a", 500)
    clock.advance(29.9)
    assert detector.is_ejected("a")
    clock.advance(0.1)
    assert not detector.is_ejected("a")
    assert detector.ejected_count == 0
    assert events == [("eject", "a"), ("return", "a")]


def test_ejection_left_counts_down_and_returns_the_endpoint_at_zero() -> None:
    """What /config_dump shows: the seconds left of an ejection, 0.0 for an endpoint in
    service; read at expiry, it returns the endpoint as is_ejected does."""
    clock = FakeClock()
    events: list[tuple[str, Hashable]] = []
    detector = make(clock, events=events)
    assert detector.ejection_left("a") == 0.0  # unknown
    for _ in range(3):
        detector.record("a", 500)
    clock.advance(12)
    assert detector.ejection_left("a") == pytest.approx(18.0)
    assert detector.ejection_left("b") == 0.0
    clock.advance(18)
    assert detector.ejection_left("a") == 0.0
    assert events == [("eject", "a"), ("return", "a")]


def test_sweep_returns_expired_endpoints() -> None:
    """sweep() returns every endpoint whose ejection has expired, and only those."""
    clock = FakeClock()
    detector = make(clock)
    for _ in range(3):
        detector.record("a", 500)
    clock.advance(20)
    for _ in range(3):
        detector.record("b", 500)
    clock.advance(10)
    detector.sweep()
    assert detector.ejected_count == 1
    assert detector.is_ejected("b")


def test_results_while_ejected_are_ignored() -> None:
    """Late results of an ejected endpoint neither re-eject nor extend its ejection."""
    clock = FakeClock()
    events: list[tuple[str, Hashable]] = []
    detector = make(clock, events=events)
    for _ in range(6):
        detector.record("a", 500)
    assert events == [("eject", "a")]
    clock.advance(30)
    assert not detector.is_ejected("a")


def test_ejection_time_grows_with_repeated_ejections() -> None:
    """Each new ejection lasts base * (times ejected) seconds."""
    clock = FakeClock()
    detector = make(clock)
    durations = []
    for _ in range(3):
        for _ in range(3):
            detector.record("a", 500)
        start = clock.now
        while detector.is_ejected("a"):
            clock.advance(1.0)
        durations.append(clock.now - start)
    assert durations == [30.0, 60.0, 90.0]


def test_multiplier_decays_after_healthy_intervals() -> None:
    """Each interval spent back in service lowers the next ejection's multiplier by one."""
    clock = FakeClock()
    detector = make(clock)
    for duration in (30, 60):  # back-to-back ejections: multiplier 1 then 2
        for _ in range(3):
            detector.record("a", 500)
        clock.advance(duration)
        assert not detector.is_ejected("a")
    clock.advance(10)  # one healthy interval: multiplier 2 -> 1, so the next one lasts 2 * 30 s
    for _ in range(3):
        detector.record("a", 500)
    clock.advance(59.9)
    assert detector.is_ejected("a")
    clock.advance(0.1)
    assert not detector.is_ejected("a")


def test_ejection_time_is_capped() -> None:
    """No ejection lasts longer than max_ejection_time."""
    clock = FakeClock()
    detector = OutlierDetector(1, 0, 10.0, 30.0, 100.0, clock, max_ejection_time=45.0)
    detector.record("a", 500)
    clock.advance(30)
    assert not detector.is_ejected("a")
    detector.record("a", 500)  # second ejection: 60 s, capped to 45 s
    clock.advance(45)
    assert not detector.is_ejected("a")


def test_max_ejection_percent_limits_ejections() -> None:
    """With 10 endpoints and 20%, only two are ejected at once; refusals are counted."""
    clock = FakeClock()
    detector = make(clock, c5xx=1, percent=20.0)
    keys = [f"e{i}" for i in range(10)]
    detector.set_endpoints(keys)
    for key in keys[:4]:
        detector.record(key, 500)
    assert [detector.is_ejected(k) for k in keys[:4]] == [True, True, False, False]
    assert detector.ejection_overflow_total == 2


def test_one_endpoint_may_always_be_ejected() -> None:
    """As Envoy, a percentage too small for one host still allows ejecting one."""
    clock = FakeClock()
    detector = make(clock, c5xx=1, percent=10.0)
    detector.set_endpoints(["a", "b", "c"])
    detector.record("a", 500)
    detector.record("b", 500)
    assert detector.is_ejected("a")
    assert not detector.is_ejected("b")


def test_zero_percent_never_ejects() -> None:
    """max_ejection_percent=0 disables ejection entirely."""
    clock = FakeClock()
    detector = make(clock, c5xx=1, percent=0.0)
    detector.record("a", 500)
    assert not detector.is_ejected("a")


def test_removed_endpoint_is_forgotten_and_returned() -> None:
    """set_endpoints drops vanished endpoints, calling on_return for an ejected one."""
    clock = FakeClock()
    events: list[tuple[str, Hashable]] = []
    detector = make(clock, c5xx=1, events=events)
    detector.set_endpoints(["a", "b"])
    detector.record("a", 500)
    detector.set_endpoints(["b"])
    assert detector.ejected_count == 0
    assert events == [("eject", "a"), ("return", "a")]
    assert not detector.is_ejected("a")


@given(
    results=st.lists(
        st.tuples(
            st.integers(0, 9), st.sampled_from([None, 200, 404, 500, 502, 503]), st.booleans()
        ),
        max_size=300,
    ),
    percent=st.sampled_from([10.0, 25.0, 50.0, 100.0]),
    gaps=st.lists(st.floats(0.0, 20.0), min_size=1, max_size=10),
)
def test_ejected_fraction_and_callbacks_stay_consistent(
    results: list[tuple[int, int | None, bool]], percent: float, gaps: list[float]
) -> None:
    """Ejected count never exceeds the percentage (or one), and ejections minus returns match it."""
    clock = FakeClock()
    balance = [0]
    detector = OutlierDetector(
        2,
        2,
        10.0,
        30.0,
        percent,
        clock,
        on_ejection=lambda k: balance.__setitem__(0, balance[0] + 1),
        on_return=lambda k: balance.__setitem__(0, balance[0] - 1),
    )
    detector.set_endpoints(range(10))
    for n, (key, status, gateway) in enumerate(results):
        clock.advance(gaps[n % len(gaps)])
        detector.record(key, status, gateway)
        if n % 7 == 0:
            detector.sweep()
        assert detector.ejected_count <= max(1, int(percent / 100 * 10))
        assert detector.ejected_count == balance[0]


def test_rejects_bad_parameters() -> None:
    """Negative thresholds, a zero interval or a percentage above 100 are refused."""
    clock = FakeClock()
    with pytest.raises(ValueError):
        OutlierDetector(-1, 0, 10.0, 30.0, 10.0, clock)
    with pytest.raises(ValueError):
        OutlierDetector(5, 0, 0.0, 30.0, 10.0, clock)
    with pytest.raises(ValueError):
        OutlierDetector(5, 0, 10.0, 30.0, 101.0, clock)


def _split(clock: FakeClock, *, c5xx: int = 1, gateway: int = 0,
           local: int = 3) -> OutlierDetector:
    """A detector in Envoy's split mode (splitExternalLocalOriginErrors)."""
    detector = OutlierDetector(c5xx, gateway, 10.0, 30.0, 100.0, clock,
                               consecutive_local_origin=local)
    detector.set_endpoints(["a", "b"])
    return detector


def test_split_mode_counts_local_failures_apart_from_5xx() -> None:
    """Connect failures, resets and timeouts (status None) count toward the local-origin
    threshold only: below it they eject nobody, however low the 5xx threshold."""
    clock = FakeClock()
    detector = _split(clock, c5xx=1, gateway=1, local=3)
    detector.record("a", None)
    detector.record("a", None)
    assert not detector.is_ejected("a")
    detector.record("a", None)
    assert detector.is_ejected("a")


def test_split_mode_an_answer_resets_the_local_count_and_5xx_still_ejects() -> None:
    """An answer from the endpoint (even a 5xx) shows it reachable: its local-origin count
    starts again; the 5xx itself counts toward consecutive5xxErrors as ever."""
    clock = FakeClock()
    detector = _split(clock, c5xx=2, local=2)
    detector.record("a", None)
    detector.record("a", 200)
    detector.record("a", None)
    assert not detector.is_ejected("a")
    detector.record("b", 503)
    detector.record("b", None)  # no 5xx: not counted toward b's 5xx run, nor resetting it
    assert not detector.is_ejected("b")
    detector.record("b", 503)
    assert detector.is_ejected("b")


def test_without_split_local_failures_count_as_5xx() -> None:
    """Envoy's default: a connect failure is a 5xx (and a gateway error) for the counters."""
    clock = FakeClock()
    detector = make(clock, c5xx=2)
    detector.set_endpoints(["a"])
    detector.record("a", None)
    detector.record("a", None)
    assert detector.is_ejected("a")


def test_split_mode_local_threshold_zero_ejects_on_5xx_only() -> None:
    clock = FakeClock()
    detector = _split(clock, c5xx=1, local=0)
    for _ in range(10):
        detector.record("a", None)
    assert not detector.is_ejected("a")
    detector.record("a", 500)
    assert detector.is_ejected("a")
