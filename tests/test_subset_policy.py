"""A DestinationPolicy subset's own policy fields: parsing, merge rules, the snapshot that
carries them and the destinations a proxy compiles from them."""

from __future__ import annotations

import asyncio
import json
import random
from typing import Any

import pytest

from meshctl.api.errors import ValidationError
from meshctl.api.policy import (
    ConnectionPool,
    ConsistentHash,
    OutlierDetection,
    RateLimit,
    SubsetPolicy,
    TrafficPolicy,
    parse_destination_policy,
)
from meshctl.api.resources import load_documents
from meshctl.controlplane.registry import ProxyInfo
from meshctl.controlplane.snapshots import SnapshotBuilder
from proxy.config import ConfigError, Snapshot, check_known_keys
from proxy.destinations import DestinationRegistry
from proxy.metrics import RequestStats
from proxy.pools import PoolRegistry
from proxy.routing import RouterBuilder

HOST = TrafficPolicy(
    load_balancer="CONSISTENT_HASH", consistent_hash=ConsistentHash("header", "x-user"),
    connection_pool=ConnectionPool(max_connections=100, max_pending_requests=50),
    outlier_detection=OutlierDetection(consecutive_5xx_errors=3),
    rate_limit=RateLimit(10.0, 10))


def spec(**v2: Any) -> dict[str, Any]:
    return {"host": "reviews", "subsets": [{"name": "v1", "labels": {"version": "v1"}},
                                           {"name": "v2", "labels": {"version": "v2"}, **v2}]}


def errors(data: dict[str, Any]) -> list[str]:
    with pytest.raises(ValidationError) as err:
        parse_destination_policy(data, "spec")
    return [f"{i.path}: {i.message}" for i in err.value.issues]


# --- merge rules ------------------------------------------------------------------------------
def test_a_subset_without_policy_fields_has_none() -> None:
    """A subset with only name and labels has no policy of its own: it is the service's."""
    parsed = parse_destination_policy(spec(), "spec")
    assert [s.policy for s in parsed.subsets] == [None, None]


def test_each_field_a_subset_sets_replaces_the_hosts_whole_field() -> None:
    """As Istio: a subset's connectionPool replaces the host's whole pool (its unset limits at
    their defaults, not the host's); fields it does not set stay the host's."""
    own = parse_destination_policy(spec(connectionPool={"maxConnections": 1}), "spec")
    merged = own.subsets[1].policy.over(HOST)  # type: ignore[union-attr]
    assert merged.connection_pool == ConnectionPool(max_connections=1)  # pending: 1024
    assert (merged.load_balancer, merged.consistent_hash) == (HOST.load_balancer,
                                                             HOST.consistent_hash)
    assert (merged.outlier_detection, merged.rate_limit) == (HOST.outlier_detection,
                                                            HOST.rate_limit)


def test_a_subset_load_balancer_replaces_the_hosts_hash_key_too() -> None:
    """loadBalancer and consistentHash go together: ROUND_ROBIN in a subset drops the host's
    hash key; a subset's own CONSISTENT_HASH brings its own."""
    assert SubsetPolicy(load_balancer="ROUND_ROBIN").over(HOST).consistent_hash is None
    by_ip = SubsetPolicy("CONSISTENT_HASH", ConsistentHash("sourceIp")).over(HOST)
    assert (by_ip.load_balancer, by_ip.consistent_hash) == ("CONSISTENT_HASH",
                                                            ConsistentHash("sourceIp"))


def test_a_subset_may_set_what_the_host_leaves_out() -> None:
    """Outlier detection for the canary alone: the host has none."""
    detection = OutlierDetection(consecutive_5xx_errors=1)
    merged = SubsetPolicy(outlier_detection=detection).over(TrafficPolicy())
    assert merged == TrafficPolicy(outlier_detection=detection)


@pytest.mark.parametrize(("v2", "expected"), [
    ({"rateLimit": {"requestsPerSecond": 5}},
     "spec.subsets[1].rateLimit: not per subset: the destination's sidecars enforce it"),
    ({"tls": {"mode": "SIMPLE"}}, "spec.subsets[1].tls: not per subset"),
    ({"trafficPolicy": {"connectionPool": {}}},
     "spec.subsets[1].trafficPolicy: a subset takes the policy fields themselves"),
    ({"consistentHash": {"header": "x"}},
     "spec.subsets[1].consistentHash: has no effect unless loadBalancer is CONSISTENT_HASH "
     "in this subset"),
    ({"loadBalancer": "CONSISTENT_HASH"},
     "spec.subsets[1].consistentHash: CONSISTENT_HASH needs consistentHash"),
    ({"connectionPool": {"maxConnections": 0}},
     "spec.subsets[1].connectionPool.maxConnections: must be at least 1"),
    ({"outlierDetection": {"interval": "0s"}}, "spec.subsets[1].outlierDetection.interval:"),
    ({"conectionPool": {}}, "spec.subsets[1].conectionPool: unknown field, did you mean "
                            "'connectionPool'?"),
])
def test_bad_subset_policies_are_refused_with_their_field_path(v2: dict[str, Any],
                                                               expected: str) -> None:
    """Each mistake in a subset's policy names the subset's field, and why."""
    found = errors(spec(**v2))
    assert len(found) == 1 and found[0].startswith(expected), found


# --- the snapshot -----------------------------------------------------------------------------
DOCS = """\
apiVersion: ami.mesh/v1alpha1
kind: DestinationPolicy
metadata: {name: reviews}
spec:
  host: reviews
  loadBalancer: ROUND_ROBIN
  connectionPool: {maxConnections: 100}
  subsets:
    - {name: v1, labels: {version: v1}}
    - name: v2
      labels: {version: v2}
      loadBalancer: RANDOM
      connectionPool: {maxConnections: 1, maxPendingRequests: 0}
"""
PAGE = ProxyInfo(name="productpage-1", service="productpage", labels={"version": "v1"},
                 inbound="127.0.0.1:9000", admin="127.0.0.1:1", mode="sidecar", ready=True)
REVIEWS = [ProxyInfo(name=f"reviews-{v}", service="reviews", labels={"version": v},
                     inbound=f"127.0.0.1:{port}", admin="127.0.0.1:1", mode="sidecar",
                     ready=True) for v, port in (("v1", 9001), ("v2", 9002))]


def built(docs: str) -> dict[str, Any]:
    data = SnapshotBuilder(load_documents(docs, "t.yaml"), [PAGE, *REVIEWS]).build(PAGE).data
    return dict(json.loads(data))


def test_the_snapshot_carries_a_subsets_own_fields_and_the_proxy_merges_them() -> None:
    """The control plane pushes a subset's fields under its `policy` (none for a subset
    without); the proxy reads the merged policy of each subset."""
    data = built(DOCS)
    assert data["services"]["reviews"]["subsets"] == [
        {"name": "v1", "labels": {"version": "v1"}},
        {"name": "v2", "labels": {"version": "v2"}, "policy": {
            "loadBalancer": "RANDOM",
            "connectionPool": {"maxConnections": 1, "maxPendingRequests": 0}}}]
    service = Snapshot.from_dict(data).services["reviews"]
    assert service.subset_policy("v1") is None and service.subset_policy(None) is None
    assert service.subset_policy("v2") == TrafficPolicy(
        load_balancer="RANDOM",
        connection_pool=ConnectionPool(max_connections=1, max_pending_requests=0))


def test_subsets_without_policy_fields_keep_their_snapshot_bytes() -> None:
    """A policy whose subsets set nothing gives the snapshot it gave before the feature."""
    plain = DOCS.split("    - name: v2")[0] + "    - {name: v2, labels: {version: v2}}\n"
    assert "policy" not in json.dumps(built(plain)["services"]["reviews"]["subsets"])


def test_a_static_snapshot_subset_policy_is_checked() -> None:
    """In a hand-written snapshot a subset's `policy` is a known key, and its content is
    checked by the same parser (field path included)."""
    data = built(DOCS)
    check_known_keys(data)
    data["services"]["reviews"]["subsets"][1]["policy"] = {"rateLimit": {"requestsPerSecond": 1}}
    with pytest.raises(ConfigError, match=r"services\.reviews\.subsets\[1\]\.policy\.rateLimit: "
                                          "not per subset"):
        Snapshot.from_dict(data)


# --- what the proxy compiles ------------------------------------------------------------------
async def test_a_subset_with_its_own_policy_is_a_destination_of_its_own() -> None:
    """v2 (own policy) gets its own state and its own pools (not the service's, whose pool of
    the same endpoint stays apart), but the service's retry budget; v1 (no policy) shares the
    service's state and pools."""
    snap = Snapshot.from_dict(built(DOCS))
    pools = PoolRegistry(asyncio.get_running_loop())
    destinations = DestinationRegistry(RequestStats())
    builder = RouterBuilder(snap, pools, random.Random(1), lambda blocks: None, destinations)
    service = snap.services["reviews"]
    whole, v1, v2 = (builder._backend(service, s, "source") for s in (None, "v1", "v2"))
    assert v1.state is whole.state and whole.state is not None
    assert whole.state.breaker is not None and whole.state.breaker.limits.max_connections == 100
    assert v2.state is not whole.state and v2.state is not None
    assert v2.state.breaker is not None and v2.state.breaker.limits.max_connections == 1
    assert (v2.state.name, v2.state.subset) == ("reviews", "v2")
    assert v2.state.budget is whole.state.budget is not None
    v2_pool, = v2.pools
    shared = next(p for p in whole.pools if p.address == v2_pool.address)
    assert v2_pool is not shared and (v2_pool.subset, shared.subset) == ("v2", None)
    assert v2_pool.breaker is v2.state.breaker and shared.breaker is whole.state.breaker
    assert v1.pools[0] in whole.pools
    assert type(v2.balancer).__name__ == "RandomBalancer"
    assert type(whole.balancer).__name__ == "RoundRobinBalancer"
