"""Slow start (Envoy's slow_start_config, Istio's warmup): a new endpoint's share of the picks
rises over a window instead of arriving whole.

Envoy scales a warming endpoint's weight by

    factor = max(minimum_percent / 100, (max(age, 1 s) / window) ** (1 / aggression))

and balances on the scaled weights. Here the balancer underneath (round robin, least request)
stays as it is; its pick of a warming endpoint is kept with probability ``factor / top``, where
``top`` is the largest factor among the endpoints it picks from (1 while any of them is warm),
and otherwise the whole pick is made again. For a balancer whose picks are spread evenly, the
endpoint's share is then exactly its scaled weight's: ``f / (f + n - 1)`` of the picks beside
``n - 1`` warm endpoints. ``top`` makes a destination whose endpoints are all new (a fresh
deployment) balance by their relative factors without re-picking forever, as in Envoy.
"""

from __future__ import annotations

import math
import random
from collections.abc import Callable, Container, Mapping, Sequence
from typing import Any

from proxy.policy.clock import Clock

# A pick is made at most this many times; the last is kept (a warming endpoint beside only
# warming ones, or beside ejected warm ones, is never refused outright).
_TRIES = 8
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
    ``done`` (which may swap it out of the backend) and only delegates from then on."""

    __slots__ = ("_arrivals", "_clock", "_oldest", "_rng", "_seen", "aggression", "done",
                 "inner", "minimum_percent", "until", "window")

    def __init__(self, inner: Any, arrivals: Mapping[Any, float], window: float,
                 clock: Clock, rng: random.Random, *, minimum_percent: float = 10.0,
                 aggression: float = 1.0, done: Callable[[], None] | None = None) -> None:
        self.inner = inner
        self._arrivals = dict(arrivals)
        self.window = window
        self.minimum_percent = minimum_percent
        self.aggression = aggression
        self._clock = clock
        self._rng = rng
        self.done = done
        self.until = max(self._arrivals.values(), default=NEVER) + window
        self._seen: Sequence[Any] | None = None  # the endpoints _oldest was computed for
        self._oldest = NEVER

    def factor(self, endpoint: Any, now: float) -> float:
        """``endpoint``'s weight factor at ``now`` (1.0: warm)."""
        arrived = self._arrivals.get(endpoint)
        if arrived is None:
            return 1.0
        return slow_start_factor(now - arrived, self.window, self.minimum_percent,
                                 self.aggression)

    def pick(self, endpoints: Sequence[Any], exclude: Container[Any] | None = None) -> Any:
        """The inner balancer's pick, thinned for warming endpoints; None when it has none."""
        now = self._clock()
        if now >= self.until:
            if self.done is not None:
                self.done()
                self.done = None
            return self.inner.pick(endpoints, exclude)
        pick = self.inner.pick
        picked = pick(endpoints, exclude)
        arrivals = self._arrivals
        arrived = arrivals.get(picked)
        if arrived is None:  # a warm endpoint (the common case), or None: none eligible
            return picked
        if endpoints is not self._seen:  # the same tuple on every pick of a backend
            self._seen = endpoints
            self._oldest = min((arrivals.get(e, NEVER) for e in endpoints), default=NEVER)
        top = 1.0 if self._oldest == NEVER else slow_start_factor(
            now - self._oldest, self.window, self.minimum_percent, self.aggression)
        for _ in range(_TRIES - 1):
            weight = slow_start_factor(now - arrived, self.window, self.minimum_percent,
                                       self.aggression)
            if weight >= top or self._rng.random() * top < weight:
                return picked
            picked = pick(endpoints, exclude)
            arrived = arrivals.get(picked)
            if arrived is None:
                return picked
        return picked
