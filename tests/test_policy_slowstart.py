"""Slow start (DestinationPolicy warmup): the weight ramp, the thinned picks, arrivals, and
where the proxy wraps a balancer; all on a fake clock."""

from __future__ import annotations

import asyncio
import random
from collections import Counter, deque
from typing import Any

import pytest

from proxy.config import Address, Snapshot
from proxy.destinations import DestinationRegistry, DestinationState
from proxy.healthview import health_view
from proxy.metrics import RequestStats
from proxy.policy.balancer import LeastRequestBalancer, RoundRobinBalancer
from proxy.policy.slowstart import NEVER, SlowStartBalancer, slow_start_factor
from proxy.pools import PoolRegistry
from proxy.routing import RouterBuilder
from tests.fakes import Ep, FakeClock

WINDOW = 100.0


@pytest.mark.parametrize(("age", "minimum", "aggression", "factor"), [
    (0.0, 10.0, 1.0, 0.10),  # the floor: Envoy's min_weight_percent
    (0.0, 0.0, 1.0, 0.01),  # no floor: max(age, 1 s) / window
    (5.0, 10.0, 1.0, 0.10),
    (50.0, 10.0, 1.0, 0.50),  # linear
    (25.0, 10.0, 2.0, 0.50),  # (1/4) ** (1/2): faster early on
    (50.0, 10.0, 0.5, 0.25),  # (1/2) ** 2: slower early on
    (99.0, 10.0, 1.0, 0.99),
    (100.0, 10.0, 1.0, 1.0),  # the window is over
    (NEVER * -1, 10.0, 1.0, 1.0),  # present from the start (age inf)
])
def test_the_factor_is_envoys(age: float, minimum: float, aggression: float,
                              factor: float) -> None:
    """max(minimum%, (max(age, 1) / window) ** (1 / aggression)), 1 once the window is over."""
    assert slow_start_factor(age, WINDOW, minimum, aggression) == pytest.approx(factor)


def _shares(balancer: Any, endpoints: list[Ep], picks: int) -> Counter[str]:
    return Counter(balancer.pick(endpoints).name for _ in range(picks))


@pytest.mark.parametrize("kind", ["round_robin", "least_request"])
@pytest.mark.parametrize(("age", "factor"), [(0.0, 0.1), (30.0, 0.3), (70.0, 0.7)])
def test_a_warming_endpoint_gets_its_scaled_weights_share(kind: str, age: float,
                                                          factor: float) -> None:
    """Beside three warm endpoints, one that arrived ``age`` s ago gets f / (f + 3) of the
    picks (Envoy's share for weight f against weights 1), not a quarter."""
    clock = FakeClock()
    eps = [Ep(f"e{i}") for i in range(4)]
    rng = random.Random(7)
    inner = RoundRobinBalancer(rng) if kind == "round_robin" else LeastRequestBalancer(rng)
    slow = SlowStartBalancer(inner, {eps[3]: clock() - age}, WINDOW, clock, random.Random(8))
    picks = 40_000
    share = _shares(slow, eps, picks)["e3"] / picks
    assert share == pytest.approx(factor / (factor + 3), abs=0.01)


def _loaded_shares(balancer: Any, endpoints: list[Ep], picks: int,
                   in_flight: int = 20) -> Counter[str]:
    """Picks under load: each pick starts a request on its endpoint that ends ``in_flight``
    picks later (what least request sees between the picks of a busy caller)."""
    started: deque[Ep] = deque()
    counts: Counter[str] = Counter()
    for _ in range(picks):
        if len(started) == in_flight:
            started.popleft().active_requests -= 1
        picked = balancer.pick(endpoints)
        picked.active_requests += 1
        started.append(picked)
        counts[picked.name] += 1
    return counts


@pytest.mark.parametrize("warm", [1, 3])
def test_least_request_under_load_keeps_the_warming_share(warm: int) -> None:
    """With requests in flight, least request prefers the endpoint with the fewest: the
    warming one, since it is held back. Its share stays f / (f + n - 1) all the same (a
    re-pick of a least-request balancer came back to it: beside one warm endpoint, every
    re-pick did, and it got half of the requests at 10% weight)."""
    clock = FakeClock()
    eps = [Ep(f"e{i}") for i in range(warm + 1)]
    rng = random.Random(5)
    slow = SlowStartBalancer(LeastRequestBalancer(rng), {eps[-1]: clock()}, WINDOW, clock,
                             random.Random(6))
    picks = 20_000
    share = _loaded_shares(slow, eps, picks)[eps[-1].name] / picks
    assert share == pytest.approx(0.1 / (0.1 + warm), abs=0.01)


def test_the_share_rises_with_time_and_is_whole_after_the_window() -> None:
    """The same endpoint, later: a larger share; past the window, half of two endpoints',
    and the wrapper tells its backend it may go (``done``, once)."""
    clock = FakeClock()
    eps = [Ep("old"), Ep("new")]
    done: list[bool] = []
    slow = SlowStartBalancer(RoundRobinBalancer(), {eps[1]: clock()}, WINDOW, clock,
                             random.Random(1), done=lambda: done.append(True))
    shares = []
    for _ in range(3):
        shares.append(_shares(slow, eps, 10_000)["new"])
        clock.advance(40)  # 0 s, 40 s, 80 s into the window
    assert shares[0] < shares[1] < shares[2] < 5_000
    assert shares[0] == pytest.approx(10_000 * 0.1 / 1.1, rel=0.1)
    clock.advance(WINDOW)
    assert _shares(slow, eps, 1_000)["new"] == 500  # round robin, alternating
    assert done == [True]


def test_endpoints_all_new_balance_by_their_relative_weights() -> None:
    """A fresh deployment (every endpoint arrived together) is spread evenly: no pick is
    thinned against a warm endpoint that does not exist."""
    clock = FakeClock()
    eps = [Ep(f"e{i}") for i in range(3)]
    slow = SlowStartBalancer(RoundRobinBalancer(), dict.fromkeys(eps, clock()), WINDOW, clock,
                             random.Random(3))
    assert _shares(slow, eps, 3_000) == {"e0": 1_000, "e1": 1_000, "e2": 1_000}


def test_an_endpoint_of_an_all_new_set_that_warmed_up_counts_as_warm() -> None:
    """Endpoints that all arrived in the window: once the first one's window is over it is
    warm (weight 1), and a later one gets its factor's share beside it, not an even one."""
    clock = FakeClock()
    eps = [Ep("first"), Ep("later")]
    slow = SlowStartBalancer(RoundRobinBalancer(), {eps[0]: clock() - 50, eps[1]: clock()},
                             WINDOW, clock, random.Random(9))
    clock.advance(60)  # first: 110 s old, warm; later: 60 s old, factor 0.6
    shares = _shares(slow, eps, 20_000)
    assert shares["later"] / 20_000 == pytest.approx(0.6 / 1.6, abs=0.015)


def test_exclusions_and_nothing_left_are_the_inner_balancers() -> None:
    """Excluded (tried, ejected) endpoints stay excluded; with none eligible, None."""
    clock = FakeClock()
    eps = [Ep("old"), Ep("new")]
    slow = SlowStartBalancer(RoundRobinBalancer(), {eps[1]: clock()}, WINDOW, clock,
                             random.Random(1))
    assert {slow.pick(eps, [eps[0]]) for _ in range(50)} == {eps[1]}  # the only one left
    assert slow.pick(eps, eps) is None


def test_an_ejected_warming_endpoint_is_not_drawn() -> None:
    """The draw by weight honours the inner balancer's availability (outlier ejections):
    an ejected warming endpoint gets nothing, its share goes to the others."""
    clock = FakeClock()
    eps = [Ep("old"), Ep("new"), Ep("newer")]
    ejected = {eps[1]}
    slow = SlowStartBalancer(RoundRobinBalancer(is_available=lambda e: e not in ejected),
                             {eps[1]: clock(), eps[2]: clock()}, WINDOW, clock,
                             random.Random(2), is_available=lambda e: e not in ejected)
    shares = _shares(slow, eps, 10_000)
    assert shares["new"] == 0
    assert shares["newer"] == pytest.approx(10_000 * 0.1 / 1.1, rel=0.1)


def test_with_the_warm_endpoints_tried_a_warming_one_answers() -> None:
    """A retry that excluded every warm endpoint is never left without one: a draw for the
    warm share falls back to a warming endpoint, whatever the inner balancer says."""
    clock = FakeClock()
    eps = [Ep("old"), Ep("new")]

    class Refusing:  # an inner balancer that finds nothing (its own view of eligibility)
        def pick(self, endpoints: Any, exclude: Any = None) -> None:
            return None

    slow = SlowStartBalancer(Refusing(), {eps[1]: clock()}, WINDOW, clock, random.Random(4))
    assert {slow.pick(eps, [eps[0]]) for _ in range(50)} == {eps[1]}


def test_arrivals_of_a_destination() -> None:
    """Endpoints there when a destination is first configured, or when it had none, never
    warm; a later one arrives when first seen; one that leaves and comes back arrives again."""
    state = DestinationState("api")
    a, b = Address("10.0.0.1", 80), Address("10.0.0.2", 80)
    state.note_endpoints(set(), 50.0)  # known, no endpoint yet (its first replica starting)
    state.note_endpoints({a}, 100.0)
    assert state.arrivals == {a: NEVER}
    state.note_endpoints({a, b}, 200.0)
    state.note_endpoints({a, b}, 250.0)  # the next push: b's arrival stays
    assert state.arrivals == {a: NEVER, b: 200.0}
    state.note_endpoints({a}, 300.0)
    state.note_endpoints({a, b}, 400.0)
    assert state.arrivals == {a: NEVER, b: 400.0}


class _Proxy:
    """The router builder of one sidecar, snapshot after snapshot, on a fake clock."""

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self.clock = FakeClock()
        self.pools = PoolRegistry(loop)
        self.destinations = DestinationRegistry(RequestStats(), clock=self.clock)

    def backend(self, ports: tuple[int, ...], policy: dict[str, Any]) -> Any:
        snap = Snapshot.from_dict({"node": {"service": "web"}, "services": {"api": {
            "endpoints": [{"address": f"127.0.0.1:{p}"} for p in ports], "policy": policy}}})
        builder = RouterBuilder(snap, self.pools, random.Random(1), lambda blocks: None,
                                self.destinations)
        return builder._backend(snap.services["api"], None, "source")


WARMUP = {"loadBalancer": "ROUND_ROBIN", "warmup": {"duration": "100s"}}


async def test_the_balancer_is_wrapped_only_while_an_endpoint_warms() -> None:
    """Without warmup, or with no endpoint warming, a backend's balancer is the plain one (no
    cost per request); a new endpoint under warmup wraps it until the window is over, when
    the backend gets the plain one back."""
    proxy = _Proxy(asyncio.get_running_loop())
    first = proxy.backend((1, 2), WARMUP)
    assert isinstance(first.balancer, RoundRobinBalancer)  # present from the start
    proxy.clock.advance(5)
    plain = proxy.backend((1, 2, 3), {"loadBalancer": "ROUND_ROBIN"})
    assert isinstance(plain.balancer, RoundRobinBalancer)  # a new one, but no warmup
    seen = proxy.clock()
    proxy.clock.advance(5)
    warming = proxy.backend((1, 2, 3), WARMUP)
    assert isinstance(warming.balancer, SlowStartBalancer)
    assert warming.balancer.until == seen + 100  # from when it was first seen
    proxy.clock.advance(95)
    assert warming.pick_endpoint() is not None
    assert isinstance(warming.balancer, RoundRobinBalancer)  # swapped back on its first pick
    assert isinstance(proxy.backend((1, 2, 3), WARMUP).balancer, RoundRobinBalancer)


async def test_warmup_does_not_apply_to_a_single_endpoint_or_a_new_destination() -> None:
    """Alone, a new endpoint has nobody to share with; a destination new to the proxy (its
    first snapshot) starts warm."""
    proxy = _Proxy(asyncio.get_running_loop())
    proxy.backend((1,), WARMUP)
    proxy.clock.advance(1)
    assert isinstance(proxy.backend((2,), WARMUP).balancer, RoundRobinBalancer)
    fresh = _Proxy(asyncio.get_running_loop())
    assert isinstance(fresh.backend((1, 2, 3), WARMUP).balancer, RoundRobinBalancer)


async def test_the_health_view_shows_a_warming_endpoint() -> None:
    """/config_dump endpointHealth: the seconds of warmup left and the weight now."""
    proxy = _Proxy(asyncio.get_running_loop())
    proxy.backend((1, 2), WARMUP)
    proxy.clock.advance(10)
    backend = proxy.backend((1, 2, 3), WARMUP)
    proxy.clock.advance(30)
    view = health_view([backend], proxy.clock)["api"]["endpoints"]
    new = next(e for e in view if e["address"] == "127.0.0.1:3")
    assert (new["warmingSeconds"], new["weightPercent"]) == (70.0, 30.0)
    assert all("warmingSeconds" not in e for e in view if e is not new)


async def test_the_health_view_shows_no_warming_where_one_endpoint_takes_everything() -> None:
    """An endpoint that replaced the only other one arrived within the window, but it takes
    every request (nothing to share with): no WARMING at 10% in proxy-config."""
    proxy = _Proxy(asyncio.get_running_loop())
    proxy.backend((1,), WARMUP)
    proxy.clock.advance(10)
    backend = proxy.backend((2,), WARMUP)
    view = health_view([backend], proxy.clock)["api"]["endpoints"]
    assert [e["address"] for e in view] == ["127.0.0.1:2"]
    assert "warmingSeconds" not in view[0] and "weightPercent" not in view[0]
