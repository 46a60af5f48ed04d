"""Where outlierDetection.minHealthPercent applies, and whether it panics now: /config_dump."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any


def panic_view(backends: Iterable[Any]) -> dict[str, Any]:
    """Each destination with a panic threshold (`reviews`, or `reviews/v2` for a route's
    subset): the threshold, per priority level its endpoints healthy and in all, and whether
    it is in panic (ejections ignored). Computed on read, as the next request would see it."""
    view: dict[str, Any] = {}
    for backend in backends:
        guard = backend.panic
        if guard is None:
            continue
        name = backend.service if backend.subset is None else f"{backend.service}/{backend.subset}"
        if name in view:  # the same destination from another listener kind: the same state
            continue
        panic = guard.current()
        view[name] = {
            "minHealthPercent": guard.threshold,
            "levels": [{"healthy": healthy, "endpoints": len(level), "panic": in_panic}
                       for healthy, level, in_panic in zip(guard.healthy(), guard.levels, panic,
                                                           strict=True)],
            "panic": any(panic),
        }
    return view
