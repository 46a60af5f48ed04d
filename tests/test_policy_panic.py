"""The panic threshold (outlierDetection.minHealthPercent): Envoy's rules for when a level
panics, and the guard and locality balancer acting on them, with a real OutlierDetector on a
fake clock."""

from __future__ import annotations

import random
from collections import Counter
from collections.abc import Sequence

import pytest

from proxy.policy.balancer import RingHashBalancer, RoundRobinBalancer
from proxy.policy.locality import priority_loads, weighted_loads
from proxy.policy.localitybalancer import LocalityBalancer
from proxy.policy.outlier import OutlierDetector
from proxy.policy.panic import PanicGuard, panic_levels
from tests.fakes import Ep, FakeClock


# --- when a level panics ----------------------------------------------------------------------
@pytest.mark.parametrize(("healthy", "totals", "threshold", "panic"), [
    ((0,), (4,), 0, (False,)),  # 0: never (Istio's default)
    ((1,), (4,), 50, (True,)),  # 25% < 50%
    ((2,), (4,), 50, (False,)),  # 50% is not below 50%
    ((3,), (5,), 59, (False,)),
    ((2,), (5,), 41, (True,)),
    # 80% healthy: availability min(100, 1.4 * 80) = 100, enough whatever the threshold
    ((4,), (5,), 90, (False,)),
    # P0 all ejected, P1 healthy: P1 takes the load (availability 100): no panic anywhere
    ((0, 4), (4, 4), 50, (False, False)),
    # availability 0 + 70 < 100: each level against the threshold
    ((0, 2), (4, 4), 50, (True, False)),
    ((0, 1), (4, 4), 50, (True, True)),
    ((2, 4), (10, 10), 30, (True, False)),
])
def test_a_level_panics_as_envoy_says(healthy: Sequence[int], totals: Sequence[int],
                                      threshold: int, panic: tuple[bool, ...]) -> None:
    """Below the threshold, unless the levels' normalized total availability is 100%."""
    assert panic_levels(healthy, totals, threshold) == panic


# --- the guard on one level -------------------------------------------------------------------
def _detector(endpoints: list[Ep], clock: FakeClock) -> OutlierDetector:
    """One 5xx ejects for 30 s; every endpoint may be ejected."""
    detector = OutlierDetector(1, 0, 10.0, 30.0, 100, clock)
    detector.set_endpoints(endpoints)
    return detector


def _spread(balancer: object, n: int = 400) -> Counter[str]:
    return Counter(str(balancer.pick(ENDPOINTS)) for _ in range(n))  # type: ignore[attr-defined]


ENDPOINTS = [Ep(f"e{i}") for i in range(4)]


def test_ejections_are_ignored_below_the_threshold_and_heeded_again_above() -> None:
    """4 endpoints, minHealthPercent 50: two ejected, the other two take everything; a third
    ejected (25% healthy): all four again, counted once; after the ejection time: all four,
    out of panic; ejected again: a second panic."""
    clock = FakeClock()
    detector = _detector(ENDPOINTS, clock)
    states: list[bool] = []
    guard = PanicGuard(ENDPOINTS, detector, 50, states.append)
    balancer: RoundRobinBalancer[Ep] = RoundRobinBalancer(random.Random(1), guard.available)
    detector.record(ENDPOINTS[0], 500)
    detector.record(ENDPOINTS[1], 500)
    assert set(_spread(balancer)) == {"e2", "e3"}
    assert guard.current() == (False,) and True not in states
    detector.record(ENDPOINTS[2], 500)
    assert _spread(balancer) == {"e0": 100, "e1": 100, "e2": 100, "e3": 100}
    assert guard.current() == (True,) and guard.healthy() == (1,) and states[-1] is True
    clock.advance(30.0)
    assert set(_spread(balancer)) == {"e0", "e1", "e2", "e3"}
    assert guard.current() == (False,) and detector.ejected_count == 0
    for ep in ENDPOINTS[:3]:
        detector.record(ep, 500)
    assert set(_spread(balancer)) == {"e0", "e1", "e2", "e3"} and states[-1] is True
    entries = [now for before, now in zip([False, *states[:-1]], states, strict=True)
               if now and not before]
    assert len(entries) == 2  # what DestinationRegistry.panicked counts


def test_without_a_threshold_the_survivor_takes_everything() -> None:
    """The same ejections without a guard (minHealthPercent 0): all to the last one."""
    detector = _detector(ENDPOINTS, FakeClock())
    balancer: RoundRobinBalancer[Ep] = RoundRobinBalancer(
        random.Random(1), lambda e: not detector.is_ejected(e))
    for ep in ENDPOINTS[:3]:
        detector.record(ep, 500)
    assert _spread(balancer) == {"e3": 400}


def test_the_guard_does_nothing_while_nothing_is_ejected() -> None:
    """No ejection: the guard never computes anything (no per-request cost)."""
    detector = _detector(ENDPOINTS, FakeClock())
    refreshes: list[int] = []

    class Counting(PanicGuard):
        def refresh(self) -> None:
            refreshes.append(1)
            super().refresh()

    guard = Counting(ENDPOINTS, detector, 50)
    balancer: RoundRobinBalancer[Ep] = RoundRobinBalancer(random.Random(1), guard.available)
    _spread(balancer, 1000)
    assert not refreshes
    for ep in ENDPOINTS[:3]:
        detector.record(ep, 500)
    _spread(balancer, 1000)
    assert len(refreshes) == 1  # once per change of the ejected set, not per request


def test_a_key_keeps_its_ejected_owner_in_panic() -> None:
    """CONSISTENT_HASH: a key whose owner is ejected moves round the ring; in panic it goes
    back to its owner."""
    clock = FakeClock()
    detector = _detector(ENDPOINTS, clock)
    guard = PanicGuard(ENDPOINTS, detector, 50)
    ring = RingHashBalancer(ENDPOINTS, str, random.Random(2), guard.available)
    keys = [f"user-{i}" for i in range(40)]
    owners = {k: ring.pick_by_key(k) for k in keys}
    owned = [k for k in keys if owners[k] is ENDPOINTS[0]]
    assert owned
    detector.record(ENDPOINTS[0], 500)
    assert all(ring.pick_by_key(k) is not ENDPOINTS[0] for k in owned)
    detector.record(ENDPOINTS[1], 500)
    detector.record(ENDPOINTS[2], 500)
    assert all(ring.pick_by_key(k) is owners[k] for k in keys)


# --- priorities -------------------------------------------------------------------------------
def _priorities(p0: list[Ep], p1: list[Ep], detector: OutlierDetector, threshold: int,
                mode: str = "failover") -> tuple[LocalityBalancer[Ep], PanicGuard]:
    guard = PanicGuard(p0 + p1, detector, threshold)
    if mode == "failover":
        guard.set_levels([p0, p1])
    inner: RoundRobinBalancer[Ep] = RoundRobinBalancer(random.Random(3), guard.available)
    shares = priority_loads if mode == "failover" else (
        lambda h, t: weighted_loads((80, 20), h, t))
    balancer = LocalityBalancer([p0, p1], [inner, inner], shares, random.Random(4), detector,
                                detector._clock, mode=mode, panic=guard)
    return balancer, guard


def test_a_priority_in_panic_uses_all_its_endpoints_the_other_only_its_healthy() -> None:
    """P0 2 of 10 healthy (20%), P1 4 of 10 (40%), minHealthPercent 30: availability
    28 + 56 < 100, so P0 (below 30%) panics and P1 does not; the loads stay Envoy's (34/66):
    P0's share goes over all of P0's endpoints, P1's only to P1's healthy ones."""
    clock = FakeClock()
    p0, p1 = [Ep(f"a{i}") for i in range(10)], [Ep(f"b{i}") for i in range(10)]
    detector = _detector(p0 + p1, clock)
    for ep in p0[2:] + p1[4:]:
        detector.record(ep, 500)
    balancer, guard = _priorities(p0, p1, detector, 30)
    assert guard.current() == (True, False)
    assert balancer.current_shares() == (34, 66)
    spread = Counter(str(balancer.pick([])) for _ in range(4000))
    assert {f"a{i}" for i in range(10)} <= set(spread)  # ejected ones of P0 too
    assert {k for k in spread if k.startswith("b")} == {"b0", "b1", "b2", "b3"}
    assert 1150 < sum(v for k, v in spread.items() if k.startswith("a")) < 1570  # ~34%


def test_every_priority_in_panic_spreads_by_size() -> None:
    """P0 (2) and P1 (6) all ejected: Envoy's total panic, shares by endpoint count (2:6),
    over every endpoint; once they return, all to P0 again."""
    clock = FakeClock()
    p0, p1 = [Ep("a0"), Ep("a1")], [Ep(f"b{i}") for i in range(6)]
    detector = _detector(p0 + p1, clock)
    balancer, guard = _priorities(p0, p1, detector, 50)
    for ep in p0 + p1:
        detector.record(ep, 500)
    assert guard.current() == (True, True)
    assert balancer.current_shares() == (2, 6)
    spread = Counter(str(balancer.pick([])) for _ in range(4000))
    assert len(spread) == 8 and 800 < spread["a0"] + spread["a1"] < 1200
    clock.advance(30.0)
    assert balancer.current_shares() == (100, 0) and guard.current() == (False, False)


def test_distribute_in_panic_keeps_its_weights_over_all_endpoints() -> None:
    """distribute 80/20 is one priority: most endpoints ejected (below 50%): the weights as
    configured, every endpoint eligible."""
    clock = FakeClock()
    a, b = [Ep("a0"), Ep("a1")], [Ep("b0"), Ep("b1")]
    detector = _detector(a + b, clock)
    balancer, guard = _priorities(a, b, detector, 50, mode="distribute")
    for ep in (a[0], a[1], b[0]):
        detector.record(ep, 500)
    assert guard.current() == (True,)
    assert balancer.current_shares() == (8000, 2000)  # 80:20, each at full availability
    spread = Counter(str(balancer.pick([])) for _ in range(2000))
    assert set(spread) == {"a0", "a1", "b0", "b1"}
    assert 1450 < spread["a0"] + spread["a1"] < 1750
