"""What locality load balancing does now, per destination: for the admin's /config_dump."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from proxy.policy.localitybalancer import LocalityBalancer
from proxy.policy.sticky import StickyBalancer


def locality_view(backends: Iterable[Any]) -> dict[str, Any]:
    """Each destination balanced by locality (`reviews`, or `reviews/v2` for a route's subset):
    its mode and, in order, its groups (the priorities; with `distribute`, the localities) with
    their endpoints, the ejected ones and the share of the traffic each gets now (percent).
    Computed on read: a returned ejection is counted as the next request would count it."""
    view: dict[str, Any] = {}
    for backend in backends:
        balancer = backend.balancer
        if isinstance(balancer, StickyBalancer):  # cookie affinity over the locality balancer
            balancer = balancer.inner
        if not isinstance(balancer, LocalityBalancer):
            continue
        name = backend.service if backend.subset is None else f"{backend.service}/{backend.subset}"
        if name in view:  # the same destination from another listener kind: the same state
            continue
        shares = balancer.current_shares()
        total = sum(shares)
        outlier = backend.outlier
        # minHealthPercent: which priorities balance over their ejected endpoints too
        panic = balancer.panic.current() if balancer.panic is not None else None
        if panic is not None and len(panic) != len(balancer.groups):
            panic = (any(panic),) * len(balancer.groups)  # distribute: one priority
        view[name] = {
            "mode": balancer.mode,
            "groups": [
                {"endpoints": [str(p.address) for p in group],
                 "ejected": [str(p.address) for p in group
                             if outlier is not None and outlier.is_ejected(p)],
                 # weights are on any scale (distribute): as a percent of their sum
                 "share": round(100 * share / total, 1),
                 **({"panic": panic[i]} if panic is not None else {})}
                for i, (group, share) in enumerate(zip(balancer.groups, shares, strict=True))],
        }
    return view

