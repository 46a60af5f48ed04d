"""PeerAuthentication, Sidecar and Telemetry read a sidecar's labels the same way
(meshctl.api.workloads): `app` is its service even when it registers an `app` label of its own,
so one selector picks the same sidecars whichever kind carries it."""

from __future__ import annotations

from collections.abc import Callable

import pytest

from meshctl.api import telemetry
from meshctl.api.peerauthn import parse_peer_authentication
from meshctl.api.peerauthn import selects as peer_selects
from meshctl.api.sidecar import parse_sidecar
from meshctl.api.workloads import workload_labels

Selects = Callable[[dict[str, str], str, dict[str, str]], bool]


def _peer(selector: dict[str, str], service: str, labels: dict[str, str]) -> bool:
    spec = parse_peer_authentication({"selector": {"matchLabels": selector},
                                      "mtls": {"mode": "STRICT"}}, "spec")
    assert spec.selector is not None
    return peer_selects(spec.selector, workload_labels(service, labels))


def _sidecar(selector: dict[str, str], service: str, labels: dict[str, str]) -> bool:
    spec = parse_sidecar({"workloadSelector": {"labels": selector},
                          "egress": [{"hosts": ["./*"]}]}, "spec")
    return spec.selects(service, labels)


def _telemetry(selector: dict[str, str], service: str, labels: dict[str, str]) -> bool:
    spec = telemetry.parse_telemetry({"selector": {"matchLabels": selector},
                                      "accessLogging": [{"disabled": True}]}, "spec")
    return telemetry.selects(spec, service, labels)


KINDS = {"PeerAuthentication": _peer, "Sidecar": _sidecar, "Telemetry": _telemetry}
# reviews v2's sidecar, registered with a stray `app` label of its own
SERVICE, LABELS = "reviews", {"app": "legacy", "version": "v2"}


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize(("selector", "picked"), [
    ({"app": "reviews"}, True),
    ({"app": "reviews", "version": "v2"}, True),
    ({"version": "v2"}, True),
    ({"app": "legacy"}, False),  # the registered label does not rename the service
    ({"app": "reviews", "version": "v1"}, False),
])
def test_every_kind_picks_the_same_sidecars(kind: str, selector: dict[str, str],
                                            picked: bool) -> None:
    assert KINDS[kind](selector, SERVICE, dict(LABELS)) is picked
