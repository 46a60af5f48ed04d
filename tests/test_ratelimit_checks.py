"""Which DestinationPolicy rate limits no sidecar enforces, by host form and registered sidecars
(meshctl/observe/ratelimitchecks.py; the real control plane's side is in
tests/test_controlplane_namespaces_egress.py)."""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any

import pytest

from meshctl.api.policy import parse_destination_policy
from meshctl.observe.ratelimitchecks import rate_limit_checks, rate_limit_warnings, verdicts


def policy(namespace: str, host: str, limited: bool = True) -> Any:
    spec = {"host": host, **({"rateLimit": {"requestsPerSecond": 5}} if limited else {})}
    return SimpleNamespace(namespace=namespace, name=host.replace(".", "-"),
                           spec=parse_destination_policy(spec, "spec"))


def sidecar(service: str, namespace: str, mode: str = "sidecar") -> dict[str, Any]:
    return {"name": f"{service}-{namespace}", "service": service, "namespace": namespace,
            "mode": mode}


API_IN_B = [sidecar("api", "b")]


@pytest.mark.parametrize(("namespace", "host", "proxies", "enforced"), [
    ("b", "api", API_IN_B, True),
    ("b", "api.b", API_IN_B, True),
    ("b", "api.b.svc.cluster.local", API_IN_B, True),
    ("b", "api", [], True),  # no sidecar yet: b's own api once it starts
    ("a", "api.b", API_IN_B, False),
    ("a", "api.b.svc.cluster.local", [], False),  # by its form alone: b's
    ("a", "api", API_IN_B, False),  # a has none: the bare name is b's
    ("a", "api", [*API_IN_B, sidecar("api", "a")], True),
    ("a", "api", [sidecar("api", "b", mode="gateway")], True),  # a gateway is no service
    ("c", "api", [*API_IN_B, sidecar("api", "a")], False),  # a's or b's: neither
    ("a", "api.example.com", API_IN_B, False),  # outside the mesh
])
def test_a_rate_limit_is_enforced_only_by_its_own_namespaces_service(
        namespace: str, host: str, proxies: list[dict[str, Any]], enforced: bool) -> None:
    [found] = verdicts([policy(namespace, host)], proxies)
    assert found.enforced is enforced, found
    assert bool(found.hint) is not enforced
    assert len(rate_limit_warnings([policy(namespace, host)], proxies)) == (not enforced)


def test_a_policy_without_a_rate_limit_is_not_listed() -> None:
    assert rate_limit_checks([policy("a", "api.b", limited=False)], API_IN_B) == []
    [group] = rate_limit_checks([policy("a", "api.b"), policy("b", "api")], API_IN_B)
    assert [(c.name, c.state) for c in group.checks] == [
        ("DestinationPolicy a/api-b rateLimit", "warn"),
        ("DestinationPolicy b/api rateLimit", "ok")]
