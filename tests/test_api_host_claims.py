"""One Route and one DestinationPolicy per service and namespace, however the host is spelled:
`api`, `api.b`, `api.b.svc` and `api.b.svc.cluster.local` in namespace b are one service
(validate_set: `meshctl validate`, `meshctl apply`, the control plane on every change)."""

from __future__ import annotations

import pytest

from meshctl.api.hostnames import mesh_form, service_of
from meshctl.api.resources import Resource, load_documents, validate_set


def doc(kind: str, name: str, namespace: str, host: str, body: str = "") -> str:
    spec = body or ("rules: [{backends: [{service: api}]}]" if kind == "Route" else "")
    return (f"apiVersion: ami.mesh/v1alpha1\nkind: {kind}\n"
            f"metadata: {{name: {name}, namespace: {namespace}}}\n"
            f"spec:\n  host: {host}\n" + (f"  {spec}\n" if spec else ""))


def issues(*texts: str) -> list[str]:
    resources: list[Resource] = []
    for n, text in enumerate(texts, 1):
        resources.extend(load_documents(text, f"f{n}.yaml"))
    return [str(issue) for issue in validate_set(resources)]


def test_the_forms_of_a_service_name() -> None:
    """A bare name is the reader's namespace's; two labels and the `.svc` forms name the
    namespace; any other name is no mesh form."""
    assert mesh_form("api") == ("api", None)
    for host in ("api.b", "api.b.svc", "api.b.svc.cluster.local", "api.b.svc.corp"):
        assert mesh_form(host) == ("api", "b") == service_of(host, "a"), host
    assert service_of("api", "b") == ("api", "b")
    assert mesh_form("api.example.com") is None and service_of("api.b.example.com", "b") is None


@pytest.mark.parametrize("kind", ["Route", "DestinationPolicy"])
@pytest.mark.parametrize("second", ["api.b", "api.b.svc", "api.b.svc.cluster.local"])
def test_a_second_one_for_the_same_service_spelled_otherwise_is_refused(
        kind: str, second: str) -> None:
    """b's `api` already has one (host `api`): another in b naming it `api.b...` is refused
    with the field and the first one's place, as two with the same host are."""
    assert issues(doc(kind, "one", "b", "api"), doc(kind, "two", "b", second)) == [
        f"f2.yaml doc 1: spec.host: host {second} is service api of namespace b, which "
        f"already has a {kind} (see {kind} b/one in f1.yaml doc 1)"]


@pytest.mark.parametrize("kind", ["Route", "DestinationPolicy"])
def test_two_in_another_namespace_naming_one_service_are_refused(kind: str) -> None:
    """a's `api.b` and a's `api.b.svc.cluster.local` are both b's `api`, for a's callers."""
    assert len(issues(doc(kind, "one", "a", "api.b"),
                      doc(kind, "two", "a", "api.b.svc.cluster.local"))) == 1


@pytest.mark.parametrize("kind", ["Route", "DestinationPolicy"])
def test_one_per_namespace_about_one_service_is_allowed(kind: str) -> None:
    """b's own, and a's for b's `api` (for a's callers, who get it rather than b's), are one
    per namespace; so are a's `api` and a's `api.b` (two services), and an outside host."""
    assert issues(doc(kind, "one", "b", "api"), doc(kind, "two", "a", "api.b"),
                  doc(kind, "three", "a", "api"),
                  doc(kind, "four", "a", "api.example.com")) == []


SUBSETS = "subsets: [{name: v2, labels: {version: v2}}]"
TO_V2 = "rules: [{backends: [{subset: v2}]}]"  # the host's subset


def test_subsets_are_found_whatever_the_spelling_and_in_the_services_namespace() -> None:
    """A Route's subset is looked up as its callers get the policy: the Route's namespace's
    DestinationPolicy for that service (any spelling), else the service's namespace's."""
    policy_b = doc("DestinationPolicy", "api", "b", "api.b.svc.cluster.local", SUBSETS)
    assert issues(policy_b, doc("Route", "api", "b", "api", TO_V2)) == []
    assert issues(policy_b, doc("Route", "api-b", "a", "api.b", TO_V2)) == []
    # a's own policy for b's `api` is the one a's callers get: its subsets count.
    own = doc("DestinationPolicy", "api-b", "a", "api.b", "loadBalancer: RANDOM")
    assert issues(policy_b, own, doc("Route", "api-b", "a", "api.b", TO_V2)) == [
        "f3.yaml doc 1: spec.rules[0].backends[0].subset: unknown subset 'v2' for host "
        "api.b (known: none, no DestinationPolicy defines any)"]
