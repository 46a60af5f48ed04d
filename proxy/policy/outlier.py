"""Passive outlier detection: eject endpoints after consecutive errors (Envoy semantics)."""

import math
from collections.abc import Callable, Hashable, Iterable

from proxy.policy.clock import Clock

_GATEWAY_STATUSES = frozenset((502, 503, 504))


def _no_op(key: Hashable) -> None:
    return None


class _State:
    """Per-endpoint counters; ``ejected_until`` is 0.0 while the endpoint is in service."""

    __slots__ = ("consecutive_5xx", "consecutive_gateway", "consecutive_local", "ejected_until",
                 "ejections", "since")

    def __init__(self, now: float) -> None:
        self.consecutive_5xx = 0
        self.consecutive_gateway = 0
        self.consecutive_local = 0  # local-origin failures in a row (split mode only)
        self.ejections = 0  # the ejection-time multiplier
        self.ejected_until = 0.0
        self.since = now  # when ``ejections`` was last changed or the endpoint last returned


class OutlierDetector:
    """Tracks request results per endpoint key and ejects endpoints that keep failing.

    - A 5xx or a connect failure/reset (``status=None``) counts toward ``consecutive_5xx``;
      502/503/504, connect failures and results flagged ``gateway_error`` count toward
      ``consecutive_gateway``. Any other result resets the counter(s) it does not feed.
      A threshold of 0 disables that detector.
    - With ``consecutive_local_origin`` (Envoy's split_external_local_origin_errors), a
      failure of the proxy's own attempt (connect failure, reset, timeout: ``status=None``)
      counts toward that counter alone, and an answer from the endpoint (any status) resets
      it; the 5xx and gateway counters then see only the endpoint's answers.
    - An ejection lasts ``base_ejection * n`` seconds (n = times ejected), capped at
      ``max_ejection_time``; n drops by one for every ``interval`` spent back in service, so a
      host that recovered is not punished forever (as Envoy).
    - At most ``max_ejection_percent`` of known endpoints are ejected at once, but, as Envoy,
      one endpoint may always be ejected when the percentage is above 0 (otherwise small
      clusters, where 10% is less than one host, could never eject anything).
    - Expiry is lazy: checked by ``is_ejected`` and ``sweep``; no timers.
    """

    __slots__ = (
        "_base",
        "_clock",
        "_ejected",
        "_gateway_threshold",
        "_interval",
        "_local_threshold",
        "_max_percent",
        "_max_time",
        "_states",
        "_threshold_5xx",
        "ejection_overflow_total",
        "generation",
        "on_ejection",
        "on_return",
    )

    def __init__(
        self,
        consecutive_5xx: int,
        consecutive_gateway: int,
        interval: float,
        base_ejection: float,
        max_ejection_percent: float,
        clock: Clock,
        *,
        max_ejection_time: float = 300.0,
        consecutive_local_origin: int | None = None,
        on_ejection: Callable[[Hashable], None] = _no_op,
        on_return: Callable[[Hashable], None] = _no_op,
    ) -> None:
        if consecutive_5xx < 0 or consecutive_gateway < 0:
            raise ValueError("consecutive thresholds must be >= 0")
        if interval <= 0 or base_ejection <= 0:
            raise ValueError("interval and base_ejection must be > 0")
        if not 0 <= max_ejection_percent <= 100:
            raise ValueError("max_ejection_percent must be within [0, 100]")
        self._threshold_5xx = consecutive_5xx
        self._gateway_threshold = consecutive_gateway
        # None: local-origin failures count as 5xx and gateway errors (Envoy's default)
        self._local_threshold = consecutive_local_origin
        self._interval = interval
        self._base = base_ejection
        self._max_time = max(base_ejection, max_ejection_time)
        self._max_percent = max_ejection_percent
        self._clock = clock
        self._states: dict[Hashable, _State] = {}
        self._ejected: set[Hashable] = set()
        self.on_ejection = on_ejection
        self.on_return = on_return
        self.ejection_overflow_total = 0  # ejections refused by max_ejection_percent
        # Bumped whenever the ejected set changes: what is computed from it (locality
        # shares, proxy.policy.localitybalancer) is recomputed then, not per request.
        self.generation = 0

    @property
    def ejected_count(self) -> int:
        """Endpoints ejected as of the last read or sweep."""
        return len(self._ejected)

    def set_endpoints(self, keys: Iterable[Hashable]) -> None:
        """Declare the current endpoint set: new keys are known, vanished keys are forgotten."""
        wanted = set(keys)
        for key in [k for k in self._states if k not in wanted]:
            del self._states[key]
            if key in self._ejected:
                self._ejected.discard(key)
                self.generation += 1
                self.on_return(key)  # keeps an "ejected" gauge balanced
        now = self._clock()
        for key in wanted:
            if key not in self._states:
                self._states[key] = _State(now)

    def record(
        self, endpoint_key: Hashable, status: int | None, gateway_error: bool = False
    ) -> None:
        """Count one request result for ``endpoint_key``; may eject it."""
        state = self._states.get(endpoint_key)
        if state is None:
            state = self._states[endpoint_key] = _State(self._clock())
        elif state.ejected_until and not self._expire(endpoint_key, state, self._clock()):
            return  # late results of an ejected endpoint change nothing
        if self._local_threshold is not None:
            if status is None:
                state.consecutive_local += 1
                if self._local_threshold and state.consecutive_local >= self._local_threshold:
                    self._try_eject(endpoint_key, state)
                return
            state.consecutive_local = 0  # the endpoint answered: it is reachable
        is_5xx = status is None or status >= 500
        is_gateway = gateway_error or status is None or status in _GATEWAY_STATUSES
        state.consecutive_5xx = state.consecutive_5xx + 1 if is_5xx else 0
        state.consecutive_gateway = state.consecutive_gateway + 1 if is_gateway else 0
        if (self._threshold_5xx and state.consecutive_5xx >= self._threshold_5xx) or (
            self._gateway_threshold and state.consecutive_gateway >= self._gateway_threshold
        ):
            self._try_eject(endpoint_key, state)

    def is_ejected(self, key: Hashable) -> bool:
        """Whether ``key`` is out of service now (returns it to service if its time is up)."""
        state = self._states.get(key)
        if state is None or not state.ejected_until:
            return False
        return not self._expire(key, state, self._clock())

    def ejection_left(self, key: Hashable) -> float:
        """Seconds until ``key`` is back in service (0.0: in service now); for the admin's
        /config_dump, never the request path."""
        if not self.is_ejected(key):
            return 0.0
        return self._states[key].ejected_until - self._clock()

    def sweep(self) -> None:
        """Return every endpoint whose ejection has expired."""
        now = self._clock()
        for key in [k for k in self._ejected if self._states[k].ejected_until <= now]:
            self._expire(key, self._states[key], now)

    def next_return(self) -> float | None:
        """When the first ejected endpoint is due back (clock time); None when none is out."""
        return min((self._states[k].ejected_until for k in self._ejected), default=None)

    def _may_eject(self) -> bool:
        if self._max_percent <= 0:
            return False
        ejected = len(self._ejected)
        return ejected == 0 or 100.0 * (ejected + 1) / len(self._states) <= self._max_percent

    def _try_eject(self, key: Hashable, state: _State) -> None:
        if not self._may_eject():
            self.ejection_overflow_total += 1
            return  # counters stay at the threshold: the next error tries again
        now = self._clock()
        healthy_intervals = math.floor((now - state.since) / self._interval)
        state.ejections = max(0, state.ejections - healthy_intervals) + 1
        state.since = now
        state.ejected_until = now + min(self._base * state.ejections, self._max_time)
        self._ejected.add(key)
        self.generation += 1
        self.on_ejection(key)

    def _expire(self, key: Hashable, state: _State, now: float) -> bool:
        """Return ``key`` to service if its ejection is over; True if it was returned."""
        if now < state.ejected_until:
            return False
        state.since = state.ejected_until  # healthy time counts from expiry, not from this read
        state.ejected_until = 0.0
        state.consecutive_5xx = 0
        state.consecutive_gateway = 0
        state.consecutive_local = 0
        self._ejected.discard(key)
        self.generation += 1
        self.on_return(key)
        return True
