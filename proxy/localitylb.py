"""The locality balancer of a backend (DestinationPolicy localityLbSetting), built once per
snapshot, or None when locality plays no part (then the backend's balancer is as before)."""

from __future__ import annotations

import random
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

from meshctl.api.policy import TrafficPolicy
from proxy.policy.locality import (
    distribute_groups,
    group_by_priority,
    label_priority,
    locality_priority,
    priority_loads,
    weighted_loads,
)
from proxy.policy.localitybalancer import Ejections, LocalityBalancer, Shares

if TYPE_CHECKING:
    from meshctl.api.locality import LocalityLbSetting
    from proxy.config import Endpoint, Node
    from proxy.policy.panic import PanicGuard


def locality_balancer(policy: TrafficPolicy, node: Node, endpoints: Sequence[Endpoint],
                      pools: Sequence[Any], picker: Callable[[tuple[Any, ...]], Any],
                      rng: random.Random, outlier: Ejections | None,
                      inner: Any = None, panic: PanicGuard | None = None,
                      mesh_default: LocalityLbSetting | None = None
                      ) -> LocalityBalancer[Any] | None:
    """``pools[i]`` is ``endpoints[i]``'s; ``picker(group)`` makes a group's balancer.
    ``mesh_default``: MeshConfig's localityLbSetting, for a policy without its own (which
    wins entirely). ``panic`` (minHealthPercent): told the priorities, each panics alone;
    with `distribute` the localities share one priority, as in Envoy.

    As Istio: with `distribute`, the caller's rule fixes each locality's share (scaled down
    by ejections, as Envoy's locality weights); otherwise, when outlier detection is on and
    the setting not disabled, endpoints are ordered into priorities (locality, `failover`,
    `failoverPriority`) and a priority spills over as its endpoints are ejected. A proxy with
    no locality of its own, or a single priority, needs none of it.
    """
    caller = node.locality
    setting = policy.locality_lb if policy.locality_lb is not None else mesh_default
    if caller is None or len(pools) < 2 or (setting is not None and setting.enabled is False):
        return None
    localities = [e.locality for e in endpoints]
    shares: Shares
    mode = "failover"
    if setting is not None and setting.distribute:
        distributed = distribute_groups(caller, localities, setting.distribute)
        if distributed is None:
            return None  # no rule for this caller: its traffic goes to every endpoint
        groups = [tuple(pools[i] for i in indexes) for indexes, _ in distributed]
        weights = tuple(weight for _, weight in distributed)
        mode = "distribute"

        def shares(healthy: Sequence[int], totals: Sequence[int]) -> tuple[int, ...]:
            return weighted_loads(weights, healthy, totals)
    elif policy.outlier_detection is not None:
        failover = dict(setting.failover) if setting is not None else {}
        order = setting.failover_priority if setting is not None else ()

        def priority(i: int) -> int:
            where = locality_priority(caller, localities[i], failover)
            if not order:
                return where
            level = label_priority(node.labels, caller, endpoints[i].labels, localities[i],
                                   order)
            # failoverPriority first; with failover, the locality order within each level
            # (Istio: level * 5 + the locality priority, 0..4)
            return level * 5 + where if failover else level

        levels = group_by_priority(range(len(pools)), priority)
        if len(levels) < 2:
            return None  # one priority: nothing to fail over to
        groups = [tuple(pools[i] for i in level) for level in levels]
        shares = priority_loads
        if panic is not None:
            panic.set_levels(groups)
    else:
        return None
    return LocalityBalancer(groups, [picker(g) for g in groups], shares, rng, outlier,
                            inner=inner, mode=mode, panic=panic)
