"""Localities and localityLbSetting: validation, snapshots (control plane and static), the
Register field and --locality, and what the proxy compiles (nothing without a locality)."""

from __future__ import annotations

import asyncio
import json
import random
import subprocess
from dataclasses import replace
from typing import Any

import pytest

from meshctl.api.errors import ValidationError
from meshctl.api.locality import Locality
from meshctl.api.policy import parse_destination_policy
from meshctl.api.resources import load_documents
from meshctl.controlplane.registry import ProxyInfo
from meshctl.controlplane.snapshots import SnapshotBuilder
from meshctl.controlplane.xds import RegistrationError, check_proxy
from proxy.config import ConfigError, Snapshot, check_known_keys
from proxy.destinations import DestinationRegistry
from proxy.metrics import RequestStats
from proxy.policy.localitybalancer import LocalityBalancer
from proxy.pools import PoolRegistry
from proxy.routing import RouterBuilder
from tests.helpers_mesh import PYTHON, ROOT

OUTLIERS = {"consecutive5xxErrors": 1}


def errors(setting: dict[str, Any], **spec: Any) -> list[str]:
    with pytest.raises(ValidationError) as err:
        parse_destination_policy({"host": "api", "localityLbSetting": setting, **spec}, "spec")
    return [f"{i.path}: {i.message}" for i in err.value.issues]


# --- validation -------------------------------------------------------------------------------
@pytest.mark.parametrize("text", ["r1", "r1/a", "us-east-1/us-east-1a/rack_7.b"])
def test_a_locality_has_one_to_three_parts(text: str) -> None:
    assert str(Locality.parse(text)) == text


@pytest.mark.parametrize("text", ["", "r1//s", "/a", "r1/a/s/x", "r1/*", "r 1", "r1/-a"])
def test_a_malformed_locality_is_refused(text: str) -> None:
    with pytest.raises(ValueError, match="region/zone/subzone"):
        Locality.parse(text)


def test_a_full_setting_parses() -> None:
    """failover with failoverPriority (not topology labels), outlier detection on a subset."""
    spec = parse_destination_policy({
        "host": "api", "subsets": [{"name": "v1", "labels": {"version": "v1"},
                                    "outlierDetection": OUTLIERS}],
        "localityLbSetting": {"enabled": True, "failover": [{"from": "r1", "to": "r2"}],
                              "failoverPriority": ["env", "tier=gold"]}}, "spec")
    setting = spec.policy.locality_lb
    assert setting is not None and setting.failover == (("r1", "r2"),)
    assert setting.failover_priority == (("env", None), ("tier", "gold"))


@pytest.mark.parametrize(("setting", "spec", "message"), [
    ({"failover": [{"from": "r1", "to": "r2"}]}, {},
     "spec.localityLbSetting.failover: needs outlierDetection"),
    ({"enabled": True}, {}, "spec.localityLbSetting.enabled: needs outlierDetection"),
    ({"failover": [{"from": "r1", "to": "r1"}]}, {"outlierDetection": OUTLIERS},
     "spec.localityLbSetting.failover[0]: from and to are both 'r1'"),
    ({"failover": [{"from": "r1/a", "to": "r2"}]}, {"outlierDetection": OUTLIERS},
     "spec.localityLbSetting.failover[0].from: invalid value 'r1/a', expected a region"),
    ({"failover": [{"from": "r1", "to": "r2"}, {"from": "r1", "to": "r3"}]},
     {"outlierDetection": OUTLIERS},
     "spec.localityLbSetting.failover[1].from: region 'r1' already fails over"),
    ({"failover": [{"from": "r1", "to": "r2"}],
      "failoverPriority": ["topology.kubernetes.io/zone"]}, {"outlierDetection": OUTLIERS},
     "spec.localityLbSetting.failoverPriority[0]: topology.kubernetes.io/zone cannot be"),
    ({"distribute": [{"from": "r1/*", "to": {"r1/*": 70, "r2": 20}}]}, {},
     "spec.localityLbSetting.distribute[0].to: the weights add up to 90, not 100"),
    ({"distribute": [{"from": "r1/*", "to": {"r1/*": 50, "r1/a": 50}}]}, {},
     "spec.localityLbSetting.distribute[0].to: 'r1/a' overlaps 'r1/*'"),
    ({"distribute": [{"from": "r1/*", "to": {"*": 100}}, {"from": "r1/a", "to": {"*": 100}}]},
     {}, "spec.localityLbSetting.distribute[1].from: overlaps distribute[0].from"),
    ({"distribute": [{"from": "r1/*/a", "to": {"*": 100}}]}, {},
     "spec.localityLbSetting.distribute[0].from: invalid value 'r1/*/a'"),
    ({"distribute": [{"from": "*", "to": {"*": 100}}], "failover": [{"from": "a", "to": "b"}]},
     {"outlierDetection": OUTLIERS}, "spec.localityLbSetting.distribute: set distribute, or"),
    ({"enabled": False, "failover": [{"from": "a", "to": "b"}]},
     {"outlierDetection": OUTLIERS}, "spec.localityLbSetting.enabled: false turns"),
    ({"failoverPolicy": []}, {},
     "spec.localityLbSetting.failoverPolicy: unknown field, did you mean 'failoverPriority'?"),
])
def test_what_istio_refuses_or_would_ignore_is_refused(setting: dict[str, Any],
                                                       spec: dict[str, Any],
                                                       message: str) -> None:
    """Each with the field path and why."""
    assert any(e.startswith(message) for e in errors(setting, **spec)), errors(setting, **spec)


def test_not_per_subset() -> None:
    """A subset cannot set its own: the host's orders every subset's endpoints."""
    with pytest.raises(ValidationError, match=r"subsets\[0\]\.localityLbSetting: not per subset"):
        parse_destination_policy({"host": "api", "subsets": [
            {"name": "v1", "labels": {}, "localityLbSetting": {}}]}, "spec")


# --- snapshots --------------------------------------------------------------------------------
WEB = ProxyInfo(name="web-1", service="web", inbound="127.0.0.1:1", ready=True,
                locality="r1/a")
API_A = ProxyInfo(name="api-a", service="api", inbound="127.0.0.1:2", ready=True,
                  locality="r1/a/s1")
API_X = ProxyInfo(name="api-x", service="api", inbound="127.0.0.1:3", ready=True)
POLICY = """\
apiVersion: ami.mesh/v1alpha1
kind: DestinationPolicy
metadata: {name: api}
spec:
  host: api
  outlierDetection: {consecutive5xxErrors: 1}
  localityLbSetting: {failover: [{from: r1, to: r2}]}
"""


def test_the_snapshot_carries_localities_only_where_said() -> None:
    """An endpoint's and the node's locality when registered; none otherwise, so a mesh
    without localities keeps its snapshot bytes (and versions)."""
    resources = load_documents(POLICY, "t.yaml")
    data = json.loads(SnapshotBuilder(resources, [WEB, API_A, API_X]).build(WEB).data)
    assert data["node"]["locality"] == "r1/a"
    assert [e.get("locality") for e in data["services"]["api"]["endpoints"]] == [
        "r1/a/s1", None]
    assert data["services"]["api"]["policy"]["localityLbSetting"] == {
        "failover": [{"from": "r1", "to": "r2"}]}
    plain = [replace(p, locality="") for p in (WEB, API_A, API_X)]
    raw = SnapshotBuilder([], plain).build(plain[0]).data
    assert b"locality" not in raw


def test_a_static_snapshot_reads_localities_and_checks_them() -> None:
    """node.locality and endpoints[].locality are known keys; a bad one names its path; a
    failover without outlier detection is refused as in a DestinationPolicy."""
    data: dict[str, Any] = {
        "node": {"service": "web", "locality": "r1/a"},
        "services": {"api": {"endpoints": [
            {"address": "127.0.0.1:1", "locality": "r1/b/s"}, {"address": "127.0.0.1:2"}]}}}
    check_known_keys(data)
    snap = Snapshot.from_dict(data)
    assert snap.node.locality == Locality("r1", "a")
    assert [e.locality for e in snap.services["api"].endpoints] == [Locality("r1", "b", "s"),
                                                                     None]
    data["services"]["api"]["endpoints"][1]["locality"] = "r1//s"
    with pytest.raises(ConfigError, match=r"services\.api\.endpoints\[1\]\.locality: invalid"):
        Snapshot.from_dict(data)
    data["services"]["api"]["endpoints"][1]["locality"] = "r2"
    data["services"]["api"]["policy"] = {"localityLbSetting": {"enabled": True}}
    with pytest.raises(ConfigError, match=r"policy\.localityLbSetting\.enabled: needs "):
        Snapshot.from_dict(data)


# --- registration and the command line --------------------------------------------------------
def test_a_malformed_registered_locality_is_refused() -> None:
    """Register.locality (field 17) is checked like the other Register fields."""
    with pytest.raises(RegistrationError, match=r"register\.locality: invalid locality"):
        check_proxy(ProxyInfo(name="web-1", service="web", inbound="127.0.0.1:1",
                              locality="r1/a/b/c"))


@pytest.mark.parametrize(("args", "error"), [
    (["--control-plane", "127.0.0.1:1", "--service", "web", "--locality", "r1//a"],
     "--locality: invalid locality 'r1//a'"),
    (["--config", "/dev/null", "--locality", "r1/a"], "--locality is for control-plane mode"),
])
def test_the_locality_flag_is_checked_at_start(args: list[str], error: str) -> None:
    done = subprocess.run([PYTHON, "-m", "proxy", *args, "--dry-run"], capture_output=True,
                          text=True, cwd=ROOT, timeout=60)
    assert done.returncode == 2 and error in done.stderr, done.stderr


# --- what the proxy compiles ------------------------------------------------------------------
def _snapshot(node_locality: str | None, **policy: Any) -> Snapshot:
    node: dict[str, Any] = {"service": "web"}
    if node_locality:
        node["locality"] = node_locality
    return Snapshot.from_dict({"node": node, "services": {"api": {
        "endpoints": [{"address": f"127.0.0.1:{n}", "labels": {"version": v}, "locality": loc}
                      for n, v, loc in ((1, "v1", "r1/a"), (2, "v2", "r1/a"), (3, "v2", "r1/b"),
                                        (4, "v2", "r2/c"))],
        "subsets": [{"name": "v2", "labels": {"version": "v2"}}],
        "policy": {"outlierDetection": OUTLIERS, **policy}}}})


async def _backend(snap: Snapshot, subset: str | None = None) -> Any:
    builder = RouterBuilder(snap, PoolRegistry(asyncio.get_running_loop()), random.Random(1),
                            lambda blocks: None, DestinationRegistry(RequestStats()))
    return builder._backend(snap.services["api"], subset, "source")


async def test_priorities_group_a_subsets_own_endpoints() -> None:
    """The whole service: zone a, zone b, region r2 (failover-bent: r2 is the target); the
    subset v2: its own endpoints only, in the same order."""
    whole = await _backend(_snapshot("r1/a", localityLbSetting={
        "failover": [{"from": "r1", "to": "r2"}]}))
    assert isinstance(whole.balancer, LocalityBalancer)
    assert [[p.address.port for p in g] for g in whole.balancer.groups] == [[1, 2], [3], [4]]
    v2 = await _backend(_snapshot("r1/a"), "v2")
    assert [[p.address.port for p in g] for g in v2.balancer.groups] == [[2], [3], [4]]


async def test_no_locality_balancer_where_it_plays_no_part() -> None:
    """No locality of the caller's own, `enabled: false`, or no outlier detection (and no
    distribute): the backend keeps its plain balancer, nothing per request."""
    for snap in (_snapshot(None), _snapshot("r1/a", localityLbSetting={"enabled": False})):
        assert not isinstance((await _backend(snap)).balancer, LocalityBalancer)
    plain = _snapshot("r1/a")
    service = plain.services["api"]
    no_outliers = replace(plain, services={"api": replace(service, policy=replace(
        service.policy, outlier_detection=None))})
    assert not isinstance((await _backend(no_outliers)).balancer, LocalityBalancer)


@pytest.mark.parametrize(("setting", "groups"), [
    ({"failoverPriority": ["topology.kubernetes.io/region", "topology.kubernetes.io/zone"]},
     [[1, 2], [3], [4]]),
    ({"failoverPriority": ["version=v2"]}, [[2, 3, 4], [1]]),
    # with failover: the locality order within each failoverPriority level
    ({"failoverPriority": ["version=v2"], "failover": [{"from": "r1", "to": "r2"}]},
     [[2], [3], [4], [1]]),
])
async def test_failover_priority_orders_by_labels(setting: dict[str, Any],
                                                  groups: list[list[int]]) -> None:
    """Endpoints matching the caller on every label first; `key=value` against that value."""
    backend = await _backend(_snapshot("r1/a", localityLbSetting=setting))
    assert [[p.address.port for p in g] for g in backend.balancer.groups] == groups
