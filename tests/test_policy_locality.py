"""Locality load balancing math (priorities, spillover, distribute) and the LocalityBalancer,
with injected state: a real OutlierDetector on a fake clock."""

from __future__ import annotations

import random
from collections import Counter
from collections.abc import Sequence

import pytest

from meshctl.api.locality import Distribute, Locality
from proxy.policy.balancer import RingHashBalancer, RoundRobinBalancer
from proxy.policy.locality import (
    distribute_groups,
    group_by_priority,
    label_priority,
    locality_priority,
    priority_loads,
    weighted_loads,
)
from proxy.policy.localitybalancer import LocalityBalancer
from proxy.policy.outlier import OutlierDetector
from tests.fakes import Ep, FakeClock

HERE = Locality("r1", "a", "s1")


# --- priorities -------------------------------------------------------------------------------
@pytest.mark.parametrize(("endpoint", "priority"), [
    (Locality("r1", "a", "s1"), 0),
    (Locality("r1", "a", "s2"), 1),
    (Locality("r1", "a"), 1),
    (Locality("r1", "b", "s1"), 2),
    (Locality("r2", "a", "s1"), 3),
    (None, 3),
])
def test_priority_follows_how_much_of_the_locality_matches(endpoint: Locality | None,
                                                            priority: int) -> None:
    """Same region+zone+subzone P0, region+zone P1, region P2, elsewhere (or unknown) P3."""
    assert locality_priority(HERE, endpoint, {}) == priority


def test_failover_keeps_its_target_region_before_the_others() -> None:
    """With failover r1 -> r3, r3 stays P3 and every other region (or none) drops to P4;
    a failover for another region changes nothing."""
    failover = {"r1": "r3", "r9": "r2"}
    assert locality_priority(HERE, Locality("r3", "x"), failover) == 3
    assert locality_priority(HERE, Locality("r2", "a"), failover) == 4
    assert locality_priority(HERE, None, failover) == 4
    assert locality_priority(HERE, Locality("r1", "b"), failover) == 2
    assert locality_priority(Locality("r5"), Locality("r2"), failover) == 3


def test_failover_priority_counts_the_labels_left_once_one_differs() -> None:
    """All N labels match: 0; the first k match: N - k; a `key=value` label compares with
    that value; topology labels read the localities."""
    order = (("topology.kubernetes.io/region", None), ("env", None), ("tier", "gold"))
    caller = {"env": "prod", "tier": "bronze"}

    def level(labels: dict[str, str], where: Locality | None) -> int:
        return label_priority(caller, HERE, labels, where, order)

    assert level({"env": "prod", "tier": "gold"}, Locality("r1", "z")) == 0
    assert level({"env": "prod", "tier": "bronze"}, Locality("r1")) == 1
    assert level({"env": "dev", "tier": "gold"}, Locality("r1")) == 2
    assert level({"env": "prod", "tier": "gold"}, Locality("r2")) == 3
    assert level({"env": "prod", "tier": "gold"}, None) == 3


def test_groups_are_dense_and_keep_their_order() -> None:
    """Priorities 0, 2 and 4 become three groups in that order, without gaps."""
    items = ["a4", "b0", "c2", "d0", "e4"]
    assert group_by_priority(items, lambda s: int(s[1])) == (("b0", "d0"), ("c2",), ("a4", "e4"))


# --- Envoy's spillover ------------------------------------------------------------------------
@pytest.mark.parametrize(("healthy", "totals", "loads"), [
    ((2, 2), (2, 2), (100, 0)),          # all healthy: all to P0
    ((3, 2), (4, 2), (100, 0)),          # 75% healthy * 1.4 > 100%: still all of it
    ((1, 2), (2, 2), (70, 30)),          # 50% * 1.4 = 70: the rest spills to P1
    ((0, 2), (1, 2), (0, 100)),          # P0 gone: all to P1
    ((1, 1, 2), (4, 4, 2), (35, 35, 30)),
    ((1, 0), (4, 2), (100, 0)),          # only 35 healthy in all: normalised
    ((1, 1, 1), (3, 3, 3), (46, 46, 8)),
    ((1, 1), (3, 6), (67, 33)),          # 46 + 23 normalised: 66 + 33, the 1 left to P0
    ((0, 0), (2, 2), (100, 0)),          # nothing healthy: P0 (its picks find nothing)
])
def test_priority_loads_spill_over_as_envoy(healthy: Sequence[int], totals: Sequence[int],
                                            loads: tuple[int, ...]) -> None:
    """health = min(100, 140 * healthy / total); loads fill from P0 and add up to 100."""
    assert priority_loads(healthy, totals) == loads
    assert sum(loads) == 100


# --- distribute -------------------------------------------------------------------------------
def _rule(source: str, **to: int) -> Distribute:
    return Distribute(tuple(source.split("/")),
                      tuple((tuple(k.replace("_", "/").split("/")), v) for k, v in to.items()))


def test_distribute_splits_a_patterns_weight_by_endpoint_count() -> None:
    """r1/a/* gets 80, split over r1/a and r1/a/s (one endpoint each), r2/* 20 split 2:1
    over r2/x and r2/y (rounded up, as Istio); r3 is covered by no pattern: no traffic."""
    where = [Locality("r1", "a"), Locality("r2", "x"), Locality("r2", "x"), Locality("r2", "y"),
             Locality("r3"), Locality("r1", "a", "s")]
    rules = [_rule("r9/*", r9=100), _rule("r1/a/*", **{"r1_a_*": 80, "r2_*": 20})]
    assert distribute_groups(HERE, where, rules) == [
        ([0], 40), ([5], 40), ([1, 2], 14), ([3], 7)]
    assert distribute_groups(Locality("r4"), where, rules) is None


def test_weighted_loads_scale_by_availability() -> None:
    """A locality with half its endpoints ejected keeps 70% of its weight; none available
    anywhere: the weights as declared."""
    assert weighted_loads((80, 20), (1, 1), (2, 1)) == (80 * 70, 20 * 100)
    assert weighted_loads((80, 20), (0, 0), (2, 1)) == (80, 20)


# --- the balancer -----------------------------------------------------------------------------
def _zones() -> tuple[list[Ep], list[Ep], OutlierDetector, FakeClock]:
    clock = FakeClock()
    a, b = [Ep("a1"), Ep("a2")], [Ep("b1"), Ep("b2")]
    detector = OutlierDetector(1, 0, 10.0, 30.0, 100, clock)
    detector.set_endpoints(a + b)
    return a, b, detector, clock


def _balancer(a: list[Ep], b: list[Ep], detector: OutlierDetector, clock: FakeClock,
              calls: list[int] | None = None) -> LocalityBalancer[Ep]:
    inner: RoundRobinBalancer[Ep] = RoundRobinBalancer(
        random.Random(1), lambda e: not detector.is_ejected(e))

    def shares(healthy: Sequence[int], totals: Sequence[int]) -> tuple[int, ...]:
        if calls is not None:
            calls.append(1)
        return priority_loads(healthy, totals)

    return LocalityBalancer([a, b], [inner, inner], shares, random.Random(2), detector, clock)


def _spread(balancer: LocalityBalancer[Ep], n: int = 200) -> Counter[str]:
    return Counter(str(balancer.pick([])) for _ in range(n))


def test_traffic_stays_in_p0_spills_over_and_comes_back() -> None:
    """All to zone a; one of a's two ejected: ~70/30; both: all to b; after the ejection time
    (with no request ever reaching a meanwhile) all back to a."""
    a, b, detector, clock = _zones()
    balancer = _balancer(a, b, detector, clock)
    assert set(_spread(balancer)) == {"a1", "a2"}
    detector.record(a[0], 500)
    assert balancer.current_shares() == (70, 30)
    spread = _spread(balancer, 1000)
    assert "a1" not in spread and 600 < spread["a2"] < 800
    detector.record(a[1], 503)
    assert set(_spread(balancer)) == {"b1", "b2"}
    clock.now += 30.0
    assert set(_spread(balancer)) == {"a1", "a2"}
    assert detector.ejected_count == 0


def test_shares_are_computed_on_ejection_changes_not_per_request() -> None:
    """Once at build, once after the first pick (the detector's state), then only when an
    ejection starts or ends."""
    a, b, detector, clock = _zones()
    calls: list[int] = []
    balancer = _balancer(a, b, detector, clock, calls)
    _spread(balancer, 500)
    assert len(calls) == 2
    detector.record(a[0], 500)
    _spread(balancer, 500)
    assert len(calls) == 3
    clock.now += 30.0
    _spread(balancer, 500)
    assert len(calls) == 4


def test_a_group_with_nothing_eligible_passes_to_the_next() -> None:
    """A retry excluding both endpoints of zone a gets zone b (not no_healthy_upstream); all
    excluded: None."""
    a, b, detector, clock = _zones()
    balancer = _balancer(a, b, detector, clock)
    assert balancer.pick([], exclude=a) in b
    assert balancer.pick([], exclude=a + b) is None


def test_consistent_hash_keeps_a_key_in_its_group_and_on_its_owner() -> None:
    """Each key keeps its endpoint in zone a; with zone a ejected, keys move to zone b, each
    to one endpoint there."""
    a, b, detector, clock = _zones()

    def ring(group: Sequence[Ep]) -> RingHashBalancer[Ep]:
        return RingHashBalancer(group, str, random.Random(3), lambda e: not detector.is_ejected(e))

    balancer = LocalityBalancer([a, b], [ring(a), ring(b)], priority_loads, random.Random(4),
                                detector, clock)
    keys = [f"user-{i}" for i in range(40)]
    first = {k: balancer.pick_by_key(k) for k in keys}
    assert set(first.values()) == set(a)
    assert all(balancer.pick_by_key(k) is first[k] for k in keys)
    detector.record(a[0], 500)
    detector.record(a[1], 500)
    moved = {k: balancer.pick_by_key(k) for k in keys}
    assert set(moved.values()) == set(b)
    assert all(balancer.pick_by_key(k) is moved[k] for k in keys)


def test_without_an_outlier_detector_the_shares_are_fixed() -> None:
    """distribute without outlier detection: 80/20 whatever happens."""
    a, b = [Ep("a1")], [Ep("b1")]
    inner: RoundRobinBalancer[Ep] = RoundRobinBalancer()
    balancer = LocalityBalancer([a, b], [inner, inner],
                                lambda h, t: weighted_loads((80, 20), h, t), random.Random(5))
    spread = _spread(balancer, 1000)
    assert 730 < spread["a1"] < 870 and spread["a1"] + spread["b1"] == 1000
