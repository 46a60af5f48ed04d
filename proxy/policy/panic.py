"""Envoy's panic threshold (Istio's minHealthPercent): too few healthy, ejections ignored."""

from __future__ import annotations

from collections.abc import Callable, Hashable, Sequence

from proxy.policy.locality import OVERPROVISIONING
from proxy.policy.localitybalancer import Ejections


def panic_levels(healthy: Sequence[int], totals: Sequence[int], threshold: int,
                 overprovisioning: int = OVERPROVISIONING) -> tuple[bool, ...]:
    """Which priority levels are in panic (Envoy's rules): none while the levels' normalized
    total availability (the sum of min(100, overprovisioning * healthy / total)) reaches
    100%, as the lower levels can then take the load; otherwise each level whose healthy
    share is below ``threshold`` percent. A threshold of 0 never panics."""
    if threshold <= 0:
        return tuple(False for _ in totals)
    available = sum(min(100, overprovisioning * h // t) if t else 0
                    for h, t in zip(healthy, totals, strict=True))
    if available >= 100:
        return tuple(False for _ in totals)
    return tuple(100 * h < threshold * t for h, t in zip(healthy, totals, strict=True))


class PanicGuard:
    """Per backend: which ejected endpoints are eligible all the same, being in a priority
    level in panic. Consulted only for an endpoint found ejected (so never while nothing is
    ejected), and recomputed only when the detector's ejected set changed (its generation).

    ``levels`` partition the backend's endpoints: one level (the whole backend) unless a
    locality balancer orders them into priorities (``set_levels``).
    """

    __slots__ = ("_generation", "_levels", "_outlier", "in_panic", "on_change", "spared",
                 "threshold")

    def __init__(self, endpoints: Sequence[Hashable], outlier: Ejections, threshold: int,
                 on_change: Callable[[bool], None] | None = None) -> None:
        self._outlier = outlier
        self.threshold = threshold
        # told whether some level is in panic after each recomputation; it counts the entries
        # (remembering across snapshots, which build new guards, DestinationRegistry.panicked)
        self.on_change = on_change
        self._levels: tuple[tuple[Hashable, ...], ...] = (tuple(endpoints),)
        self._generation = -1
        self.in_panic: tuple[bool, ...] = (False,)
        self.spared: frozenset[Hashable] = frozenset()  # the endpoints of levels in panic

    @property
    def levels(self) -> tuple[tuple[Hashable, ...], ...]:
        return self._levels

    def set_levels(self, levels: Sequence[Sequence[Hashable]]) -> None:
        """The priority levels of a locality balancer (each level's panic is its own)."""
        self._levels = tuple(tuple(level) for level in levels)
        self._generation = -1
        self.in_panic = tuple(False for _ in self._levels)

    def available(self, key: Hashable) -> bool:
        """The balancers' eligibility test: not ejected, or ejected in a level in panic."""
        outlier = self._outlier
        if not outlier.is_ejected(key):
            return True
        if outlier.generation != self._generation:
            self.refresh()
        return key in self.spared

    def current(self) -> tuple[bool, ...]:
        """Each level's panic as of now (after any ejection or return)."""
        if self._outlier.generation != self._generation:
            self.refresh()
        return self.in_panic

    def healthy(self) -> tuple[int, ...]:
        """Each level's endpoints not ejected now."""
        outlier = self._outlier
        return tuple(sum(1 for e in level if not outlier.is_ejected(e)) for level in self._levels)

    def refresh(self) -> None:
        outlier = self._outlier
        outlier.sweep()  # return the endpoints whose time is up before counting
        self._generation = outlier.generation
        self.in_panic = panic_levels(self.healthy(), [len(lv) for lv in self._levels],
                                     self.threshold)
        self.spared = frozenset(e for level, panic in zip(self._levels, self.in_panic,
                                                          strict=True) if panic for e in level)
        if self.on_change is not None:
            self.on_change(any(self.in_panic))
