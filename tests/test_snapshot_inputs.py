"""SnapshotInputs, the key proxies share a snapshot by: every ProxyInfo field a snapshot
depends on is in it, the others never reach a snapshot, and replicas share one build."""

from __future__ import annotations

from dataclasses import fields, replace
from typing import Any

import pytest

from meshctl.api.resources import Resource, load_documents
from meshctl.controlplane.registry import ProxyInfo
from meshctl.controlplane.snapshotinputs import SnapshotInputs
from meshctl.controlplane.snapshots import SnapshotBuilder

# Resources under which each input changes a snapshot: a Sidecar and a Telemetry selecting
# by label, a PeerAuthentication with a port-level mode, a Gateway (gateway mode).
DOCS = """\
apiVersion: ami.mesh/v1alpha1
kind: PeerAuthentication
metadata: {name: api-ports, namespace: a}
spec: {selector: {service: api}, mtls: {mode: STRICT}, portLevelMtls: {9443: {mode: DISABLE}}}
---
apiVersion: ami.mesh/v1alpha1
kind: Sidecar
metadata: {name: canary, namespace: a}
spec: {workloadSelector: {labels: {track: canary}}, egress: [{hosts: ["./*"]}]}
---
apiVersion: ami.mesh/v1alpha1
kind: Telemetry
metadata: {name: v2-logs, namespace: a}
spec: {selector: {matchLabels: {version: v2}}, accessLogging: [{disabled: true}]}
---
apiVersion: ami.mesh/v1alpha1
kind: Gateway
metadata: {name: edge, namespace: a}
spec: {listen: 0.0.0.0:8080, rules: [{destination: api}]}
"""

BASE = ProxyInfo(name="api-1", service="api", namespace="a", labels={"version": "v1"},
                 inbound="127.0.0.1:9001", admin="127.0.0.1:9101", ready=True, app_port=9080)

# A value for each input that changes the snapshot under DOCS.
INPUTS: dict[str, Any] = {
    "service": "web", "namespace": "b", "labels": {"version": "v1", "track": "canary"},
    "mode": "gateway", "locality": "eu-west/a", "app_port": 9443,
}
# Every other field, with another value: none may change a snapshot.
OTHERS: dict[str, Any] = {
    "name": "api-2", "inbound": "127.0.0.1:9002", "outbound": "127.0.0.1:15001",
    "admin": "127.0.0.1:9102", "trusted_gateway": True, "ready": False,
    "cert_expiry": "2030-01-01T00:00:00Z", "cert_issued": "2029-01-01T00:00:00Z",
    "app_health": "not_serving", "app_protocol": "tcp", "admin_token": "secret",
    "proxy_version": "9.9.9", "build": "cpython 3.99", "gateway_cert": True,
}
OTHER_SERVICE = ProxyInfo(name="db-1", service="db", namespace="a", inbound="127.0.0.1:9003",
                          ready=True)


def resources() -> list[Resource]:
    return load_documents(DOCS, "inputs.yaml")


def builder() -> SnapshotBuilder:
    return SnapshotBuilder(resources(), [BASE, OTHER_SERVICE])


def test_every_proxy_field_is_an_input_or_never_reaches_a_snapshot() -> None:
    """A new ProxyInfo field must be classified here (and in SnapshotInputs if it matters);
    SnapshotInputs holds exactly the inputs (plus its hashable form of the labels)."""
    assert {f.name for f in fields(ProxyInfo)} == set(INPUTS) | set(OTHERS)
    assert not set(INPUTS) & set(OTHERS)
    assert {f.name for f in fields(SnapshotInputs)} == set(INPUTS) | {"label_items"}


@pytest.mark.parametrize("field", sorted(INPUTS))
def test_proxies_differing_in_one_input_get_their_own_snapshot(field: str) -> None:
    """Built one after the other in one pass, a proxy differing from another in one input
    gets a snapshot of its own, byte for byte what a fresh build gives it (were the input
    left out of the key, it would be handed the first proxy's)."""
    other = replace(BASE, **{field: INPUTS[field]})
    shared = builder()
    first, second = shared.build(BASE), shared.build(other)
    assert first.version != second.version
    assert second == builder().build(other)
    assert shared.computed == 2


@pytest.mark.parametrize("field", sorted(OTHERS))
def test_a_field_outside_the_inputs_does_not_change_the_snapshot(field: str) -> None:
    """Name, addresses, readiness, certificate, app health and protocol, versions, token:
    the proxy's own snapshot is the same whatever they are (they reach snapshots only
    through the endpoint lists, the same for every proxy of a pass)."""
    other = replace(BASE, **{field: OTHERS[field]})
    assert builder().build(other) == builder().build(BASE)


def test_replicas_share_one_build() -> None:
    """Replicas (same inputs, other names and addresses) get the same object, built once;
    labels given in another order are the same labels."""
    shared = builder()
    replica = replace(BASE, name="api-2", inbound="127.0.0.1:9002",
                      labels={"track": "stable", "version": "v1"})
    twin = replace(replica, name="api-3", labels={"version": "v1", "track": "stable"})
    assert shared.build(replica) is shared.build(twin)
    assert shared.build(BASE) is shared.build(replace(BASE, name="api-4"))
    assert shared.computed == 2
