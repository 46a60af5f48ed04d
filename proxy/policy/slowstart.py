"""Slow start (Envoy's slow_start_config, Istio's warmup): a new endpoint's share of the picks
rises over a window instead of arriving whole.

Envoy scales a warming endpoint's weight by

    factor = max(minimum_percent / 100, (max(age, 1 s) / window) ** (1 / aggression))

and balances on the scaled weights. Here the balancer underneath (round robin, least request)
stays as it is for the warm endpoints, and a pick first draws who gets the request by weight:
each warming endpoint its factor, the warm ones together their count. A draw that lands on a
warming endpoint returns it; otherwise the inner balancer picks among the warm ones (the
warming ones excluded). A warming endpoint's share is then Envoy's for its scaled weight,
``f / (f + n - 1)`` beside ``n - 1`` warm endpoints, whatever the inner balancer prefers: least
request under load prefers the endpoint with the fewest requests in flight, which is the one
held back, so re-picking until the inner balancer leaves it would not hold it back at all.
The factors are relative to ``top``, the largest factor among the endpoints picked from (1
while any of them is warm): a destination whose endpoints are all new (a fresh deployment)
balances by their relative factors, those at ``top`` by the inner balancer, as in Envoy.
"""

from __future__ import annotations

import math
import random
from collections.abc import Callable, Container, Mapping, Sequence
from typing import Any

from proxy.policy.clock import Clock

NEVER = -math.inf  # the arrival of an endpoint present when its destination was set up


def slow_start_factor(age: float, window: float, minimum_percent: float = 10.0,
                      aggression: float = 1.0) -> float:
    """The weight factor of an endpoint ``age`` seconds after it arrived: 1.0 from ``window``
    on (and for an endpoint present from the start, age inf)."""
    if age >= window:
        return 1.0
    ramp = max(age, 1.0) / window
    if aggression != 1.0:
        ramp **= 1.0 / aggression
    return min(1.0, max(minimum_percent / 100.0, ramp))


class SlowStartBalancer:
    """Wraps a balancer while some of its endpoints are warming (``arrivals``: each warming
    endpoint's arrival on ``clock``). Once the last window has passed (``until``) it calls
    ``done`` (which may swap it out of the backend) and only delegates from then on.
    ``is_available``: the inner balancer's (outlier ejections), for the warming endpoints a
    draw returns itself."""

    __slots__ = ("_arrivals", "_clock", "_factors", "_fresh_until", "_is_available", "_rng",
                 "_seen", "_warming", "aggression", "done", "inner", "minimum_percent", "until",
                 "window")

    def __init__(self, inner: Any, arrivals: Mapping[Any, float], window: float,
                 clock: Clock, rng: random.Random, *, minimum_percent: float = 10.0,
                 aggression: float = 1.0, done: Callable[[], None] | None = None,
                 is_available: Callable[[Any], bool] | None = None) -> None:
        self.inner = inner
        self._arrivals = dict(arrivals)
        self.window = window
        self.minimum_percent = minimum_percent
        self.aggression = aggression
        self._clock = clock
        self._rng = rng
        self.done = done
        self._is_available = is_available
        self.until = max(self._arrivals.values(), default=NEVER) + window
        # Per endpoint sequence (the same tuple on every pick of a backend): those of it
        # with an arrival (the others are warm from the start)
        self._seen: Sequence[Any] | None = None
        self._warming: tuple[Any, ...] = ()
        self._factors: tuple[tuple[Any, float], ...] = ()  # of _warming, until _fresh_until
        self._fresh_until = NEVER

    def factor(self, endpoint: Any, now: float) -> float:
        """``endpoint``'s weight factor at ``now`` (1.0: warm)."""
        arrived = self._arrivals.get(endpoint)
        if arrived is None:
            return 1.0
        return slow_start_factor(now - arrived, self.window, self.minimum_percent,
                                 self.aggression)

    def pick(self, endpoints: Sequence[Any], exclude: Container[Any] | None = None) -> Any:
        """An endpoint drawn by scaled weight (the warm ones by the inner balancer); None
        when none is eligible."""
        now = self._clock()
        if now >= self.until:
            if self.done is not None:
                self.done()
                self.done = None
            return self.inner.pick(endpoints, exclude)
        if endpoints is not self._seen:
            self._seen = endpoints
            self._warming = tuple(e for e in endpoints if e in self._arrivals)
            self._fresh_until = NEVER
        # The eligible warming endpoints below top (held back), with their factors; those
        # at top count as warm, full weight: so do the warm ones (of which the inner balancer
        # leaves out those excluded or ejected).
        if now >= self._fresh_until:
            # the factors, recomputed at most every hundredth of the window (or second): a
            # power per pick would cost as much again as the pick
            self._fresh_until = now + min(1.0, self.window / 100)
            self._factors = tuple((e, self.factor(e, now)) for e in self._warming)
        held: list[tuple[Any, float]] = []
        weight = 0.0
        full = len(endpoints) - len(self._warming)
        available = self._is_available
        arrivals = self._arrivals
        for endpoint, factor in self._factors:  # (few: those that arrived within the window)
            if (exclude is None or endpoint not in exclude) and (
                    available is None or available(endpoint)):
                if factor < 1.0:
                    held.append((endpoint, factor))
                    weight += factor
                else:
                    full += 1
        top = 1.0
        if full == 0 and held:  # all new, none warm yet: relative to the largest factor
            top = max(f for _, f in held)
            full += sum(1 for _, f in held if f >= top)
            held = [(e, f) for e, f in held if f < top]
            weight = sum(f for _, f in held)
        if held:
            draw = self._rng.random() * (full * top + weight)
            for endpoint, factor in held:
                if draw < factor:
                    return endpoint
                draw -= factor
        picked = self.inner.pick(endpoints, exclude)
        if not held or (picked is not None and picked not in arrivals):
            return picked  # (a warm one: the common case)
        if picked is not None:
            for endpoint, _ in held:
                if endpoint is picked:
                    break
            else:
                return picked  # warming, but at top
            # the warm share, yet a held-back one: again among the others
            skip = [e for e, _ in held]
            picked = self.inner.pick(endpoints,
                                     skip if exclude is None else _Either(exclude, skip))
        if picked is None:  # no warm one eligible (all tried or ejected): a held-back one
            draw = self._rng.random() * sum(f for _, f in held)
            for endpoint, factor in held:
                if draw < factor:
                    return endpoint
                draw -= factor
            return held[-1][0]
        return picked


class _Either:
    """Excluded by either of two containers (the caller's, the warming endpoints)."""

    __slots__ = ("first", "second")

    def __init__(self, first: Container[Any], second: Container[Any]) -> None:
        self.first = first
        self.second = second

    def __contains__(self, item: object) -> bool:
        return item in self.first or item in self.second
