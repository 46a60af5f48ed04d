"""outlierDetection.minHealthPercent: validated with its path, and compiled into a panic guard
only where it can act (set above 0 on a destination whose outlier detection ejects)."""

from __future__ import annotations

import asyncio
import random
from typing import Any

import pytest

from meshctl.api.errors import ValidationError
from meshctl.api.policy import OutlierDetection, parse_destination_policy
from proxy.config import Snapshot
from proxy.destinations import DestinationRegistry
from proxy.metrics import RequestStats
from proxy.pools import PoolRegistry
from proxy.routing import RouterBuilder


@pytest.mark.parametrize(("spec", "path"), [
    ({"outlierDetection": {"minHealthPercent": 101}}, "spec.outlierDetection.minHealthPercent"),
    ({"outlierDetection": {"minHealthPercent": -1}}, "spec.outlierDetection.minHealthPercent"),
    ({"outlierDetection": {"minHealthPercent": "50%"}},
     "spec.outlierDetection.minHealthPercent"),
    ({"subsets": [{"name": "v1", "labels": {}, "outlierDetection": {"minHealthPercent": 200}}]},
     "spec.subsets[0].outlierDetection.minHealthPercent"),
])
def test_out_of_range_is_refused_at_its_path(spec: dict[str, Any], path: str) -> None:
    with pytest.raises(ValidationError) as err:
        parse_destination_policy({"host": "api", **spec}, "spec")
    assert [i.path for i in err.value.issues] == [path]


def test_the_default_is_istios_zero() -> None:
    """Istio's default (0%: never panic), not Envoy's 50%."""
    parsed = parse_destination_policy({"host": "api", "outlierDetection": {}}, "spec")
    assert parsed.policy.outlier_detection == OutlierDetection(min_health_percent=0)
    parsed = parse_destination_policy(
        {"host": "api", "outlierDetection": {"minHealthPercent": 100}}, "spec")
    assert parsed.policy.outlier_detection is not None
    assert parsed.policy.outlier_detection.min_health_percent == 100


async def _backend(policy: dict[str, Any]) -> Any:
    snap = Snapshot.from_dict({"node": {"service": "web"}, "services": {"api": {
        "endpoints": [{"address": "127.0.0.1:1"}, {"address": "127.0.0.1:2"}],
        "policy": policy}}})
    builder = RouterBuilder(snap, PoolRegistry(asyncio.get_running_loop()), random.Random(1),
                            lambda blocks: None, DestinationRegistry(RequestStats()))
    return builder._backend(snap.services["api"], None, "source")


@pytest.mark.parametrize(("policy", "guarded"), [
    ({}, False),
    ({"outlierDetection": {}}, False),  # 0: nothing added to the picks
    ({"outlierDetection": {"minHealthPercent": 50, "consecutive5xxErrors": 0}}, False),
    ({"outlierDetection": {"minHealthPercent": 50}}, True),
])
async def test_a_guard_only_where_it_can_act(policy: dict[str, Any], guarded: bool) -> None:
    backend = await _backend(policy)
    assert (backend.panic is not None) is guarded
    if guarded:
        assert backend.panic.threshold == 50 and backend.panic.levels == (backend.pools,)


async def test_a_new_snapshot_during_a_panic_does_not_count_it_again() -> None:
    """The guard is rebuilt with every snapshot, the ejections and the panic count carry over:
    one entry into panic counted, not one per push; out of it and in again: two."""
    snap = Snapshot.from_dict({"node": {"service": "web"}, "services": {"api": {
        "endpoints": [{"address": f"127.0.0.1:{n}"} for n in (1, 2, 3, 4)],
        "policy": {"outlierDetection": {"consecutive5xxErrors": 1, "maxEjectionPercent": 100,
                                        "minHealthPercent": 50}}}}})
    stats = RequestStats()
    registry = DestinationRegistry(stats)
    pools = PoolRegistry(asyncio.get_running_loop())

    def build() -> Any:
        builder = RouterBuilder(snap, pools, random.Random(1), lambda blocks: None, registry)
        return builder._backend(snap.services["api"], None, "source")

    def panics() -> float:
        return stats.counters.get(("ami_outlier_panics", (("destination_service", "api"),)), 0)

    first = build()
    for pool in first.pools[:3]:
        first.outlier.record(pool, 500)
    assert first.panic.current() == (True,) and panics() == 1
    second = build()
    assert second.outlier is first.outlier  # the same ejections
    assert second.panic.current() == (True,) and panics() == 1
    registry.panicked("api", None, False)
    build().panic.current()
    assert panics() == 2
