"""Load balancers picking one endpoint per request: least-request, round robin, random, EWMA,
consistent hash."""

import bisect
import hashlib
import math
import random
from collections.abc import Callable, Container, Iterable, Sequence
from typing import Generic, Protocol, TypeVar

from proxy.policy.clock import Clock


class EndpointLike(Protocol):
    """What a balancer reads from an endpoint: its number of in-flight requests."""

    @property
    def active_requests(self) -> int: ...


E = TypeVar("E", bound=EndpointLike)


class Balancer(Protocol[E]):
    """What the request stack calls; every balancer below implements it."""

    def pick(self, endpoints: Sequence[E], exclude: Container[E] | None = None) -> E | None: ...


class _Filtered(Generic[E]):
    """An endpoint is eligible when not in ``exclude`` and accepted by ``is_available``
    (e.g. ``lambda ep: not outliers.is_ejected(ep.address)``)."""

    __slots__ = ("_is_available",)

    def __init__(self, is_available: Callable[[E], bool] | None) -> None:
        self._is_available = is_available

    def _ok(self, endpoint: E, exclude: Container[E] | None) -> bool:
        if exclude is not None and endpoint in exclude:
            return False
        return self._is_available is None or self._is_available(endpoint)

    def _eligible(self, endpoints: Sequence[E], exclude: Container[E] | None) -> list[E]:
        # Slow path only (it allocates): taken when a random probe hit an ineligible endpoint.
        return [e for e in endpoints if self._ok(e, exclude)]


class _PowerOfTwo(_Filtered[E]):
    """Power of two random choices: sample two distinct endpoints, keep the one with lower load.

    Near-optimal spreading at O(1) per pick, and unlike "least loaded overall" it does not
    stampede onto one endpoint whose load reading is stale.
    """

    __slots__ = ("_rng",)

    def __init__(self, rng: random.Random, is_available: Callable[[E], bool] | None) -> None:
        super().__init__(is_available)
        self._rng = rng

    def _load(self, endpoint: E) -> float:
        raise NotImplementedError

    def pick(self, endpoints: Sequence[E], exclude: Container[E] | None = None) -> E | None:
        """An eligible endpoint, or None when there is none."""
        n = len(endpoints)
        if n >= 2:
            # int(random() * n) rather than randrange: a third of the cost, bias below 2**-50.
            rand = self._rng.random
            i = int(rand() * n)
            j = int(rand() * (n - 1))
            if j >= i:
                j += 1
            a, b = endpoints[i], endpoints[j]
            if self._ok(a, exclude) and self._ok(b, exclude):
                return a if self._load(a) <= self._load(b) else b
        eligible = self._eligible(endpoints, exclude)
        if len(eligible) < 2:
            return eligible[0] if eligible else None
        a, b = self._rng.sample(eligible, 2)
        return a if self._load(a) <= self._load(b) else b


class LeastRequestBalancer(_PowerOfTwo[E]):
    """P2C on in-flight requests (Envoy's LEAST_REQUEST default)."""

    __slots__ = ()

    def __init__(self, rng: random.Random, is_available: Callable[[E], bool] | None = None) -> None:
        super().__init__(rng, is_available)

    def _load(self, endpoint: E) -> float:
        return endpoint.active_requests


class _Rtt:
    __slots__ = ("at", "estimate")

    def __init__(self, estimate: float, at: float) -> None:
        self.estimate = estimate
        self.at = at


class PeakEwmaBalancer(_PowerOfTwo[E]):
    """P2C on ``peak_ewma_rtt * (active_requests + 1)`` (Linkerd/Finagle).

    A sample above the estimate replaces it at once (peak: react fast to a slow endpoint);
    smaller samples are blended with weight ``1 - exp(-elapsed / tau)``. Every cost read also
    decays the estimate toward 0, so an endpoint that went quiet gets probed again.
    An endpoint never observed starts at ``default_rtt``. Endpoints must be hashable.
    """

    __slots__ = ("_clock", "_default_rtt", "_rtts", "_tau")

    def __init__(
        self,
        rng: random.Random,
        clock: Clock,
        *,
        tau: float = 10.0,
        default_rtt: float = 0.030,
        is_available: Callable[[E], bool] | None = None,
    ) -> None:
        if tau <= 0 or default_rtt < 0:
            raise ValueError("tau must be > 0 and default_rtt >= 0")
        super().__init__(rng, is_available)
        self._clock = clock
        self._tau = tau
        self._default_rtt = default_rtt
        self._rtts: dict[E, _Rtt] = {}

    def observe(self, endpoint: E, rtt: float) -> None:
        """Feed one measured round-trip time (seconds) of ``endpoint``."""
        self._update(endpoint, rtt)

    def observe_failure(self, endpoint: E, elapsed: float) -> None:
        """A try of ``endpoint`` that failed (timeout, reset, refused) after ``elapsed`` seconds:
        a peak if slower than the estimate, else ignored (failing fast is not answering fast)."""
        state = self._rtts.get(endpoint)
        if state is None or elapsed > state.estimate:
            self._update(endpoint, elapsed)

    def rtt_estimate(self, endpoint: E) -> float:
        """The current (decayed) RTT estimate of ``endpoint``."""
        return self._update(endpoint, 0.0)

    def retain(self, endpoints: Iterable[E]) -> None:
        """Forget the estimates of endpoints not in ``endpoints`` (call when the set changes)."""
        keep = set(endpoints)
        for endpoint in [e for e in self._rtts if e not in keep]:
            del self._rtts[endpoint]

    def _update(self, endpoint: E, rtt: float) -> float:
        now = self._clock()
        state = self._rtts.get(endpoint)
        if state is None:
            state = self._rtts[endpoint] = _Rtt(self._default_rtt, now)
        if rtt > state.estimate:
            state.estimate = rtt
        elif now > state.at:
            decay = math.exp((state.at - now) / self._tau)
            state.estimate = state.estimate * decay + rtt * (1.0 - decay)
        state.at = now
        return state.estimate

    def _load(self, endpoint: E) -> float:
        return self._update(endpoint, 0.0) * (endpoint.active_requests + 1)


class RoundRobinBalancer(_Filtered[E]):
    """Each eligible endpoint in turn; with ``rng`` the first one is random, so that many
    proxies started together do not all send their first request to the same endpoint."""

    __slots__ = ("_next",)

    def __init__(
        self,
        rng: random.Random | None = None,
        is_available: Callable[[E], bool] | None = None,
    ) -> None:
        super().__init__(is_available)
        self._next = rng.randrange(1 << 30) if rng is not None else 0

    def pick(self, endpoints: Sequence[E], exclude: Container[E] | None = None) -> E | None:
        """The next eligible endpoint after the last one picked, or None when there is none."""
        n = len(endpoints)
        start = self._next
        for k in range(n):
            i = (start + k) % n
            endpoint = endpoints[i]
            if self._ok(endpoint, exclude):
                self._next = i + 1
                return endpoint
        return None


class RandomBalancer(_Filtered[E]):
    """A uniformly random eligible endpoint."""

    __slots__ = ("_rng",)

    def __init__(self, rng: random.Random, is_available: Callable[[E], bool] | None = None) -> None:
        super().__init__(is_available)
        self._rng = rng

    def pick(self, endpoints: Sequence[E], exclude: Container[E] | None = None) -> E | None:
        """A random eligible endpoint, or None when there is none."""
        if not endpoints:
            return None
        endpoint = endpoints[int(self._rng.random() * len(endpoints))]
        if self._ok(endpoint, exclude):
            return endpoint
        eligible = self._eligible(endpoints, exclude)
        return self._rng.choice(eligible) if eligible else None


def ring_hash(text: str) -> int:
    """A 64-bit hash that is the same in every process (Python's hash() is salted per process,
    and every caller's sidecar must send a key to the same endpoint)."""
    return int.from_bytes(hashlib.blake2b(text.encode("utf-8", "surrogateescape"),
                                          digest_size=8).digest(), "big")


class RingHashBalancer(_Filtered[E]):
    """Consistent hashing (Envoy's ring hash): a request's key picks the endpoint that owns the
    key's point on a ring of ``points`` virtual nodes per endpoint, so the same key keeps the
    same endpoint, and adding or removing an endpoint moves only about 1/n of the keys. An
    ejected or excluded owner passes the key on to the next endpoint round the ring. A request
    without a key (the header absent) gets a random endpoint.
    """

    __slots__ = ("_owners", "_points", "_random")

    def __init__(self, endpoints: Sequence[E], name_of: Callable[[E], str], rng: random.Random,
                 is_available: Callable[[E], bool] | None = None, points: int = 128) -> None:
        super().__init__(is_available)
        ring = sorted((ring_hash(f"{name_of(e)}#{i}"), k)
                      for k, e in enumerate(endpoints) for i in range(points))
        self._points = [h for h, _ in ring]
        self._owners = [endpoints[k] for _, k in ring]
        self._random = RandomBalancer(rng, is_available)

    def pick(self, endpoints: Sequence[E], exclude: Container[E] | None = None) -> E | None:
        """No key: any eligible endpoint."""
        return self._random.pick(endpoints, exclude)

    def pick_by_key(self, key: str, exclude: Container[E] | None = None) -> E | None:
        """The eligible endpoint owning ``key``, or None when there is none."""
        owners = self._owners
        if not owners:
            return None
        start = bisect.bisect(self._points, ring_hash(key))
        tried: set[int] = set()
        for step in range(len(owners)):
            endpoint = owners[(start + step) % len(owners)]
            if id(endpoint) in tried:
                continue
            if self._ok(endpoint, exclude):
                return endpoint
            tried.add(id(endpoint))
        return None
