"""A balancer over groups of endpoints (locality priorities, or weighted localities) whose
shares follow outlier ejections: recomputed when the ejected set changes, never per request."""

from __future__ import annotations

import bisect
import random
import time
from collections.abc import Callable, Container, Hashable, Sequence
from typing import TYPE_CHECKING, Any, Generic, Protocol, TypeVar

from proxy.policy.balancer import ring_hash
from proxy.policy.clock import Clock

if TYPE_CHECKING:
    from proxy.policy.panic import PanicGuard

E = TypeVar("E", bound=Hashable)
# The share (any positive scale) of traffic for each group, from its healthy and total counts.
Shares = Callable[[Sequence[int], Sequence[int]], tuple[int, ...]]


class Ejections(Protocol):
    """What the balancer reads from an OutlierDetector."""

    generation: int

    def sweep(self) -> None: ...

    def is_ejected(self, key: Hashable) -> bool: ...

    def next_return(self) -> float | None: ...


class LocalityBalancer(Generic[E]):
    """Picks a group by its share (one random draw, or the request's hash key so a key keeps
    its group), then an endpoint of the group with that group's picker. A group with no
    eligible endpoint (all ejected, or all tried by this request's earlier attempts) passes
    the request to the next group in order, so the lowest priorities are a last resort.

    Shares are recomputed when the outlier detector's generation moves (an ejection or a
    return) or when an ejection is due to end (ejections expire lazily: with all traffic on
    other groups, nothing would otherwise look at the ejected endpoints again).

    With a ``panic`` guard (minHealthPercent), a priority in panic balances over all its
    endpoints (the guard's part); when every one is, the shares follow the groups' sizes
    (Envoy's total panic), or, with `distribute`, the weights as configured.
    """

    __slots__ = ("_clock", "_cumulative", "_due", "_generation", "_outlier", "_panic_shares",
                 "_pickers", "_rng", "_shares", "groups", "inner", "mode", "panic", "shares")

    def __init__(self, groups: Sequence[Sequence[E]], pickers: Sequence[Any], shares: Shares,
                 rng: random.Random, outlier: Ejections | None = None,
                 clock: Clock = time.monotonic, inner: Any = None,
                 mode: str = "failover", panic: PanicGuard | None = None) -> None:
        if not groups or len(groups) != len(pickers):
            raise ValueError("one picker per group, at least one group")
        self.groups = tuple(tuple(g) for g in groups)
        self._pickers = tuple(pickers)
        self._shares = shares
        self._rng = rng
        self._outlier = outlier
        self._clock = clock
        self._generation = -1  # never computed from the detector yet
        self._due: float | None = None
        self.inner = inner  # the one balancer every group shares, if so (PEAK_EWMA learns in it)
        self.mode = mode  # what the groups are, for the admin's view: "failover" priorities
        # or "distribute" localities
        sizes = [len(g) for g in self.groups]
        self.panic = panic
        self._panic_shares = tuple(sizes) if mode == "failover" else shares(sizes, sizes)
        self.shares: tuple[int, ...] = ()
        self._cumulative: list[int] = []
        self._set(shares(sizes, sizes))

    def current_shares(self) -> tuple[int, ...]:
        """Each group's share as of now (after any ejection or return)."""
        self._current()
        return self.shares

    def pick(self, endpoints: Sequence[E], exclude: Container[E] | None = None) -> E | None:
        """An endpoint of a group drawn by share (``endpoints`` is the backend's whole list,
        which the groups partition)."""
        self._current()
        cumulative = self._cumulative
        # random() < 1, so the point is below the total: an index of a group
        first = bisect.bisect_right(cumulative, self._rng.random() * cumulative[-1])
        picked: E | None = self._pickers[first].pick(self.groups[first], exclude)
        if picked is None:
            picked = self._from(first, lambda i: self._pickers[i].pick(self.groups[i], exclude))
        return picked

    def pick_by_key(self, key: str, exclude: Container[E] | None = None) -> E | None:
        """CONSISTENT_HASH: the key chooses the group (as Envoy's ring hash chooses a priority
        by the hash), then the owner of the key on that group's ring."""
        self._current()
        point = ring_hash(key) / 2.0 ** 64 * self._cumulative[-1]  # (may round up to 1.0)
        first = min(bisect.bisect_right(self._cumulative, point), len(self.groups) - 1)
        return self._from(first, lambda i: self._pickers[i].pick_by_key(key, exclude))

    def _from(self, first: int, pick: Callable[[int], E | None]) -> E | None:
        """``first``'s pick, else the first other group's, in order (lower priorities last)."""
        picked = pick(first)
        if picked is None:
            for i in range(len(self.groups)):
                if i != first and (picked := pick(i)) is not None:
                    break
        return picked

    def _current(self) -> None:
        outlier = self._outlier
        if outlier is not None and (outlier.generation != self._generation or (
                self._due is not None and self._clock() >= self._due)):
            self._refresh(outlier)

    def _refresh(self, outlier: Ejections) -> None:
        outlier.sweep()  # return the endpoints whose time is up before counting
        self._generation = outlier.generation
        self._due = outlier.next_return()
        if self.panic is not None and all(self.panic.current()):
            self._set(self._panic_shares)
            return
        healthy = [sum(1 for e in g if not outlier.is_ejected(e)) for g in self.groups]
        self._set(self._shares(healthy, [len(g) for g in self.groups]))

    def _set(self, shares: tuple[int, ...]) -> None:
        total, cumulative = 0, []
        for share in shares:
            total += share
            cumulative.append(total)
        if total <= 0:
            raise ValueError("the shares must not all be 0")
        self.shares = shares
        self._cumulative = cumulative
