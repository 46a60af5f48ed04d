"""Tests for proxy.policy.balancer."""

import random
from collections import Counter
from dataclasses import dataclass

import pytest
from hypothesis import given
from hypothesis import strategies as st

from proxy.policy.balancer import (
    Balancer,
    LeastRequestBalancer,
    PeakEwmaBalancer,
    RandomBalancer,
    RingHashBalancer,
    RoundRobinBalancer,
    ring_hash,
)
from tests.fakes import FakeClock


@dataclass(eq=False)
class Ep:
    """A fake endpoint: a name, an in-flight count and a health flag (hashable by identity)."""

    name: str
    active_requests: int = 0
    healthy: bool = True


def healthy(ep: Ep) -> bool:
    """The availability predicate used by the tests."""
    return ep.healthy


KINDS = ["least", "round_robin", "random", "ewma"]


def build(kind: str, seed: int) -> Balancer[Ep]:
    """One balancer of ``kind`` filtering on ``healthy``."""
    rng = random.Random(seed)
    if kind == "least":
        return LeastRequestBalancer(rng, healthy)
    if kind == "round_robin":
        return RoundRobinBalancer(rng, healthy)
    if kind == "random":
        return RandomBalancer(rng, healthy)
    return PeakEwmaBalancer(rng, FakeClock(), is_available=healthy)


endpoint_lists = st.lists(
    st.builds(Ep, st.text(max_size=3), st.integers(0, 50), st.booleans()), max_size=8
)


@given(
    kind=st.sampled_from(KINDS),
    seed=st.integers(0, 2**32),
    endpoints=endpoint_lists,
    exclude_mask=st.lists(st.booleans(), min_size=8, max_size=8),
)
def test_never_returns_excluded_or_unavailable(
    kind: str, seed: int, endpoints: list[Ep], exclude_mask: list[bool]
) -> None:
    """A pick is eligible, and None only when no endpoint is eligible."""
    balancer = build(kind, seed)
    exclude = {ep for ep, masked in zip(endpoints, exclude_mask, strict=False) if masked}
    eligible = [ep for ep in endpoints if ep.healthy and ep not in exclude]
    for _ in range(5):
        chosen = balancer.pick(tuple(endpoints), exclude)
        if eligible:
            assert chosen is not None
            assert chosen in eligible
        else:
            assert chosen is None


@given(kind=st.sampled_from(KINDS), seed=st.integers(0, 2**32), n=st.integers(1, 6))
def test_every_endpoint_gets_picked_eventually(kind: str, seed: int, n: int) -> None:
    """With equal load, no eligible endpoint is starved."""
    balancer = build(kind, seed)
    endpoints = tuple(Ep(str(i)) for i in range(n))
    picks = {balancer.pick(endpoints) for _ in range(100 * n)}
    assert picks == set(endpoints)


@given(
    seed=st.integers(0, 2**32),
    loads=st.lists(st.integers(0, 100), min_size=2, max_size=8, unique=True),
)
def test_p2c_prefers_less_loaded(seed: int, loads: list[int]) -> None:
    """P2C never picks the most loaded endpoint; the least loaded gets about 2/n, not 1/n."""
    balancer = LeastRequestBalancer[Ep](random.Random(seed))
    endpoints = tuple(Ep(str(load), load) for load in loads)
    counts = Counter(balancer.pick(endpoints) for _ in range(2000))
    by_load = sorted(endpoints, key=lambda ep: ep.active_requests)
    assert counts[by_load[-1]] == 0
    # Expected share 2/n against a uniform 1/n: the gap is at least 6 standard deviations.
    assert counts[by_load[0]] > 2000 * 1.5 / len(loads)


def test_p2c_least_loaded_share_matches_theory() -> None:
    """Of n endpoints, the least loaded wins whenever it is sampled: 2/n of picks."""
    balancer = LeastRequestBalancer[Ep](random.Random(3))
    endpoints = tuple(Ep(str(i), i) for i in range(4))
    picks = Counter(balancer.pick(endpoints) for _ in range(20_000))
    assert picks[endpoints[0]] / 20_000 == pytest.approx(0.5, abs=0.02)


def test_round_robin_cycles_and_skips_unavailable() -> None:
    """Round robin visits eligible endpoints in order and skips the others."""
    a, b, c = Ep("a"), Ep("b", healthy=False), Ep("c")
    balancer = RoundRobinBalancer[Ep](is_available=healthy)
    endpoints = (a, b, c)
    assert [balancer.pick(endpoints) for _ in range(4)] == [a, c, a, c]
    assert balancer.pick(endpoints, exclude={a}) is c


def test_peak_ewma_takes_peaks_at_once_and_decays_slowly() -> None:
    """A sample above the estimate replaces it; lower samples blend in over tau."""
    clock = FakeClock()
    balancer = PeakEwmaBalancer[Ep](random.Random(1), clock, tau=10.0, default_rtt=0.0)
    ep = Ep("a")
    balancer.observe(ep, 0.5)
    assert balancer.rtt_estimate(ep) == pytest.approx(0.5)
    clock.advance(10.0)
    balancer.observe(ep, 0.1)  # weight 1 - e^-1 on the new sample
    assert balancer.rtt_estimate(ep) == pytest.approx(0.5 * 0.36788 + 0.1 * 0.63212, rel=1e-4)


def test_peak_ewma_failures_only_raise_the_estimate() -> None:
    """A slow failure is a peak; a fast one (refused, reset at once) lowers nothing."""
    clock = FakeClock()
    balancer = PeakEwmaBalancer[Ep](random.Random(1), clock, tau=10.0, default_rtt=0.03)
    ep = Ep("a")
    balancer.observe_failure(ep, 0.2)
    assert balancer.rtt_estimate(ep) == pytest.approx(0.2)
    clock.advance(10.0)
    before = balancer.rtt_estimate(ep)
    balancer.observe_failure(ep, 0.001)
    assert balancer.rtt_estimate(ep) == pytest.approx(before)


def test_peak_ewma_avoids_slow_endpoint() -> None:
    """An endpoint with a much higher RTT is picked far less than fast ones."""
    clock = FakeClock()
    balancer = PeakEwmaBalancer[Ep](random.Random(5), clock)
    slow, fast1, fast2 = Ep("slow"), Ep("fast1"), Ep("fast2")
    endpoints = (slow, fast1, fast2)
    picks: Counter[Ep] = Counter()
    for _ in range(3000):
        chosen = balancer.pick(endpoints)
        assert chosen is not None
        picks[chosen] += 1
        balancer.observe(chosen, 1.0 if chosen is slow else 0.01)
        clock.advance(0.001)
    assert picks[slow] < 0.05 * 3000


def test_peak_ewma_cost_counts_active_requests() -> None:
    """With equal RTTs, the endpoint with fewer in-flight requests wins a comparison."""
    clock = FakeClock()
    balancer = PeakEwmaBalancer[Ep](random.Random(2), clock)
    busy, idle = Ep("busy", 9), Ep("idle", 0)
    assert all(balancer.pick((busy, idle)) is idle for _ in range(50))


def test_peak_ewma_retain_forgets_removed_endpoints() -> None:
    """retain() drops state of endpoints that left, so they restart at default_rtt."""
    clock = FakeClock()
    balancer = PeakEwmaBalancer[Ep](random.Random(2), clock, default_rtt=0.03)
    gone, kept = Ep("gone"), Ep("kept")
    balancer.observe(gone, 5.0)
    balancer.observe(kept, 5.0)
    balancer.retain([kept])
    assert balancer.rtt_estimate(gone) == pytest.approx(0.03)
    assert balancer.rtt_estimate(kept) == pytest.approx(5.0)


# --- consistent hashing ---------------------------------------------------------------------
def ring(endpoints: list[Ep], available: bool = False) -> RingHashBalancer[Ep]:
    return RingHashBalancer(endpoints, lambda e: e.name, random.Random(1),
                            healthy if available else None)


def test_ring_hash_is_the_same_in_every_process() -> None:
    """Every caller's sidecar must send a key to the same endpoint: no per-process salt."""
    assert ring_hash("alice") == 0x4DEAEC0CCE54DA89  # computed once, in another process


def test_a_key_keeps_its_endpoint_and_keys_spread() -> None:
    eps = [Ep("a"), Ep("b"), Ep("c")]
    bal = ring(eps)
    owners = {f"user-{i}": bal.pick_by_key(f"user-{i}") for i in range(3000)}
    assert all(bal.pick_by_key(k) is ep for k, ep in owners.items())
    shares = Counter(ep.name for ep in owners.values() if ep is not None)
    assert set(shares) == {"a", "b", "c"} and min(shares.values()) > 600  # ~1000 each


def test_removing_an_endpoint_moves_only_its_keys() -> None:
    eps = [Ep("a"), Ep("b"), Ep("c"), Ep("d")]
    before = {f"k{i}": ring(eps).pick_by_key(f"k{i}") for i in range(2000)}
    after_ring = ring(eps[:3])  # d leaves
    moved = [k for k, ep in before.items() if ep is not None and ep.name != "d"
             and after_ring.pick_by_key(k) is not ep]
    assert moved == []
    assert all(after_ring.pick_by_key(k) is not None for k in before)


def test_an_unavailable_owner_hands_its_keys_to_the_next_and_gets_them_back() -> None:
    eps = [Ep("a"), Ep("b"), Ep("c")]
    bal = ring(eps, available=True)
    keys = [f"s{i}" for i in range(300)]
    owners = {k: bal.pick_by_key(k) for k in keys}
    eps[0].healthy = False
    during = {k: bal.pick_by_key(k) for k in keys}
    assert all(ep is not None and ep.name != "a" for ep in during.values())
    assert all(during[k] is owners[k] for k in keys if owners[k] is not eps[0])
    eps[0].healthy = True
    assert {k: bal.pick_by_key(k) for k in keys} == owners
    assert bal.pick_by_key("s1", exclude=[owners["s1"]]) is not owners["s1"]  # a retry moves on


def test_no_endpoint_or_no_key() -> None:
    assert ring([]).pick_by_key("x") is None
    eps = [Ep("a"), Ep("b")]
    assert ring(eps).pick(eps) in eps  # a request without a key: any endpoint
