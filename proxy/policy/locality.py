"""Locality load balancing math (Envoy's priorities, Istio's ordering): pure functions."""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from typing import TypeVar

from meshctl.api.locality import TOPOLOGY_LABELS, Distribute, Locality, pattern_matches

E = TypeVar("E")

# Envoy's default overprovisioning factor (percent): a priority whose healthy share is at
# least 1/1.4 (~72%) still takes its whole load; below that, it spills over to the next.
OVERPROVISIONING = 140


def locality_priority(caller: Locality, endpoint: Locality | None,
                      failover: Mapping[str, str]) -> int:
    """Istio's order: 0 same region, zone and subzone; 1 same region and zone; 2 same region;
    3 another region; 4 another region than the one ``failover`` names for the caller's."""
    if endpoint is not None and endpoint.region == caller.region:
        if endpoint.zone == caller.zone:
            return 0 if endpoint.subzone == caller.subzone else 1
        return 2
    to = failover.get(caller.region)
    if to is not None and (endpoint is None or endpoint.region != to):
        return 4
    return 3


def _label(labels: Mapping[str, str], locality: Locality | None, key: str) -> str | None:
    level = TOPOLOGY_LABELS.get(key)
    if level is not None:
        return locality.part(level) or None if locality is not None else None
    return labels.get(key)


def label_priority(caller_labels: Mapping[str, str], caller: Locality,
                   labels: Mapping[str, str], locality: Locality | None,
                   order: Sequence[tuple[str, str | None]]) -> int:
    """Istio's failoverPriority: the number of labels of ``order`` left once the endpoint stops
    matching (0: it matches them all). A label matches when the endpoint's value equals the
    caller's (or the value given as `key=value`); the topology labels read the localities."""
    for i, (key, wanted) in enumerate(order):
        want = wanted if wanted is not None else _label(caller_labels, caller, key)
        if want is None or _label(labels, locality, key) != want:
            return len(order) - i
    return 0


def group_by_priority(items: Sequence[E],
                      priority: Callable[[E], int]) -> tuple[tuple[E, ...], ...]:
    """``items`` grouped by priority, highest (lowest number) first, empty levels skipped
    (Envoy's priorities run 0..N without gaps); order within a group is kept."""
    levels: dict[int, list[E]] = {}
    for item in items:
        levels.setdefault(priority(item), []).append(item)
    return tuple(tuple(levels[p]) for p in sorted(levels))


def priority_loads(healthy: Sequence[int], totals: Sequence[int],
                   overprovisioning: int = OVERPROVISIONING) -> tuple[int, ...]:
    """Envoy's share of traffic (percent) for each priority, from its healthy and total
    endpoint counts: a priority's health is min(100, overprovisioning * healthy / total); the
    highest ones take load up to their health, the rest spills to the next. Normalised when the
    healths add up to less than 100, so all traffic still goes somewhere. All at 0 (nothing
    healthy anywhere): everything to the first priority (whose picks then find no endpoint)."""
    health = [min(100, overprovisioning * h // t) if t else 0
              for h, t in zip(healthy, totals, strict=True)]
    total = min(100, sum(health))
    if total == 0:
        return tuple(100 if i == 0 else 0 for i in range(len(health)))
    loads, left = [], 100
    for h in health:
        load = min(left, h * 100 // total)
        loads.append(load)
        left -= load
    if left:  # rounding: to the first priority that takes load, as Envoy
        first = next(i for i, load in enumerate(loads) if load)
        loads[first] += left
    return tuple(loads)


def distribute_groups(caller: Locality, localities: Sequence[Locality | None],
                      rules: Sequence[Distribute]) -> list[tuple[list[int], int]] | None:
    """Istio's `distribute` for a caller: the first rule whose `from` covers ``caller``; each of
    its `to` patterns gets its percent, split among the localities it covers in proportion to
    their endpoint counts (rounded up, as Istio). Returns (indexes of ``localities``, weight)
    per covered locality, in first-seen order; localities no pattern covers get no traffic.
    None: no rule is for this caller (its traffic is not distributed)."""
    rule = next((r for r in rules if pattern_matches(r.source, caller)), None)
    if rule is None:
        return None
    members: dict[Locality | None, list[int]] = {}
    for i, locality in enumerate(localities):
        members.setdefault(locality, []).append(i)
    groups: list[tuple[list[int], int]] = []
    for pattern, percent in rule.to:
        covered = [loc for loc in members if pattern_matches(pattern, loc)]
        count = sum(len(members[loc]) for loc in covered)
        for loc in covered:
            indexes = members.pop(loc)
            groups.append((indexes, math.ceil(len(indexes) * percent / count)))
    return groups


def weighted_loads(weights: Sequence[int], healthy: Sequence[int], totals: Sequence[int],
                   overprovisioning: int = OVERPROVISIONING) -> tuple[int, ...]:
    """Envoy's locality-weighted shares: each weight scaled by its locality's availability
    (min(1, overprovisioning * healthy / total)). None available: the weights as they are."""
    scaled = tuple(w * min(100, overprovisioning * h // t) if t else 0
                   for w, h, t in zip(weights, healthy, totals, strict=True))
    return scaled if any(scaled) else tuple(weights)
