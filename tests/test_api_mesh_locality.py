"""MeshConfig localityLbSetting: validated as a DestinationPolicy's, carried in the snapshot
only when set, and compiled as the default of every policy without one of its own."""

from __future__ import annotations

import asyncio
import json
import random
from typing import Any

import pytest

from meshctl.api.errors import ValidationError
from meshctl.api.kinds import parse_mesh_config
from meshctl.api.locality import parse_locality_lb_setting
from meshctl.api.resources import load_documents
from meshctl.controlplane.registry import ProxyInfo
from meshctl.controlplane.snapshots import SnapshotBuilder
from proxy.config import ConfigError, Snapshot, check_known_keys
from proxy.destinations import DestinationRegistry
from proxy.metrics import RequestStats
from proxy.policy.localitybalancer import LocalityBalancer
from proxy.pools import PoolRegistry
from proxy.routing import RouterBuilder

MESH = """\
apiVersion: ami.mesh/v1alpha1
kind: MeshConfig
metadata: {name: default}
spec:
  localityLbSetting:
    distribute: [{from: r1/a/*, to: {r1/a/*: 20, r1/b/*: 80}}]
    failoverPriority: [version]
"""
SETTING = {"enabled": True, "distribute": [{"from": "r1/a/*", "to": {"r1/a/*": 20,
                                                                      "r1/b/*": 80}}]}


def test_it_is_checked_as_a_policys_with_its_path() -> None:
    """The same parser: the same refusals, under spec.localityLbSetting."""
    with pytest.raises(ValidationError) as err:
        parse_mesh_config({"localityLbSetting": {
            "distribute": [{"from": "r1/a/*", "to": {"r1/a/*": 20, "r1/b/*": 70}}],
            "failover": [{"from": "r1", "to": "r2"}, {"from": "r1", "to": "r3"}]}}, "spec")
    assert [f"{i.path}: {i.message}" for i in err.value.issues] == [
        "spec.localityLbSetting.distribute[0].to: the weights add up to 90, not 100",
        "spec.localityLbSetting.failover[1].from: region 'r1' already fails over in "
        "failover[0]"]
    with pytest.raises(ValidationError, match=r"resources\.yaml doc 1: spec\.localityLbSetting"
                                              r"\.distribute: set distribute"):
        load_documents(MESH, "resources.yaml")


WEB = ProxyInfo(name="web-1", service="web", inbound="127.0.0.1:1", ready=True,
                locality="r1/a")


def test_the_snapshot_carries_it_only_when_set() -> None:
    """Unset: not a byte of the snapshot changes (no key at all); set: in `mesh`, in the
    resource's shape, which the proxy reads back to the same setting."""
    mesh = "apiVersion: ami.mesh/v1alpha1\nkind: MeshConfig\nmetadata: {name: default}\n"
    without = SnapshotBuilder(load_documents(mesh + "spec: {}\n", "m.yaml"), [WEB]).build(WEB)
    assert without.data == SnapshotBuilder([], [WEB]).build(WEB).data
    assert b"localityLbSetting" not in without.data
    text = mesh + "spec: {localityLbSetting: " + json.dumps(SETTING) + "}\n"
    data = json.loads(SnapshotBuilder(load_documents(text, "m.yaml"), [WEB]).build(WEB).data)
    assert data["mesh"]["localityLbSetting"] == SETTING
    assert Snapshot.from_dict(data).mesh.locality_lb == parse_locality_lb_setting(SETTING, "x")


def test_a_static_snapshot_reads_it_and_names_the_path_of_a_mistake() -> None:
    data: dict[str, Any] = {"mesh": {"localityLbSetting": SETTING}}
    check_known_keys(data)
    assert Snapshot.from_dict(data).mesh.locality_lb is not None
    data["mesh"]["localityLbSetting"] = {"failover": [{"from": "r1", "to": "r1"}]}
    with pytest.raises(ConfigError, match=r"mesh\.localityLbSetting\.failover\[0\]: from and "
                                          r"to are both 'r1'"):
        Snapshot.from_dict(data)


# --- what the proxy compiles ------------------------------------------------------------------
def _snapshot(mesh: dict[str, Any] | None, **policy: Any) -> Snapshot:
    return Snapshot.from_dict({
        "node": {"service": "web", "locality": "r1/a"},
        "mesh": {"localityLbSetting": mesh} if mesh is not None else {},
        "services": {"api": {
            "endpoints": [{"address": f"127.0.0.1:{n}", "locality": loc}
                          for n, loc in ((1, "r1/a"), (2, "r1/b"), (3, "r2/c"))],
            "policy": policy}}})


async def _balancer(snap: Snapshot) -> Any:
    builder = RouterBuilder(snap, PoolRegistry(asyncio.get_running_loop()), random.Random(1),
                            lambda blocks: None, DestinationRegistry(RequestStats()))
    return builder._backend(snap.services["api"], None, "source").balancer


async def test_a_policy_without_its_own_takes_the_mesh_default() -> None:
    """The mesh's distribute applies to `api`, whose policy says nothing of locality."""
    balancer = await _balancer(_snapshot(SETTING))
    assert isinstance(balancer, LocalityBalancer) and balancer.mode == "distribute"
    assert balancer.current_shares() == (20 * 100, 80 * 100)  # each at full availability
    assert not isinstance(await _balancer(_snapshot(None)), LocalityBalancer)


async def test_a_policys_own_setting_wins_entirely() -> None:
    """The policy's failover replaces the mesh's distribute (not merged with it); its
    `enabled: false` turns the mesh's off."""
    own = await _balancer(_snapshot(SETTING, outlierDetection={"consecutive5xxErrors": 1},
                                    localityLbSetting={"enabled": True}))
    assert own.mode == "failover" and [[p.address.port for p in g] for g in own.groups] == [
        [1], [2], [3]]
    off = await _balancer(_snapshot(SETTING, localityLbSetting={"enabled": False}))
    assert not isinstance(off, LocalityBalancer)


async def test_a_mesh_failover_needs_the_destinations_outlier_detection() -> None:
    """As Istio: the mesh's failover orders only destinations whose outlier detection ejects;
    elsewhere it does nothing (and is not refused: it is no one policy's mistake)."""
    failover = {"failover": [{"from": "r1", "to": "r2"}]}
    assert not isinstance(await _balancer(_snapshot(failover)), LocalityBalancer)
    ordered = await _balancer(_snapshot(failover, outlierDetection={"consecutive5xxErrors": 1}))
    assert isinstance(ordered, LocalityBalancer) and ordered.mode == "failover"
