"""Tests for resource documents (meshctl.api.resources): parsing, loading and cross-checks."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml
from hypothesis import given, settings
from hypothesis import strategies as st

from meshctl.api.authz import AuthorizationPolicySpec
from meshctl.api.errors import Issue, ValidationError
from meshctl.api.kinds import GatewaySpec, MeshConfigSpec, RouteSpec
from meshctl.api.policy import ConnectionPool, DestinationPolicySpec
from meshctl.api.resources import (
    Resource,
    load_documents,
    load_path,
    parse_document,
    validate_set,
)

POLICY = """
apiVersion: ami.mesh/v1alpha1
kind: DestinationPolicy
metadata: {name: reviews}
spec:
  host: reviews
  subsets: [{name: v1, labels: {version: v1}}, {name: v2, labels: {version: v2}},
            {name: v3, labels: {version: v3}}]
"""
ROUTE = """
apiVersion: ami.mesh/v1alpha1
kind: Route
metadata: {name: reviews, labels: {scenario: canary}, resourceVersion: "7"}
spec:
  host: reviews
  rules:
    - backends: [{subset: v1, weight: 50}, {subset: v3, weight: 50}]
status: {synced: true}
"""


def doc(text: str) -> Any:
    """Decode one YAML document."""
    return yaml.safe_load(text)


def issues_of(text: str, source: str = "r.yaml") -> list[str]:
    """The issue lines load_documents reports for ``text``."""
    with pytest.raises(ValidationError) as err:
        load_documents(text, source)
    return [str(issue) for issue in err.value.issues]


def test_route_document_parses_with_metadata_defaults() -> None:
    """A Route gets namespace 'default', keeps labels and resourceVersion, and a typed spec."""
    route = parse_document(doc(ROUTE))
    assert route.key == ("Route", "default", "reviews")
    assert route.labels == {"scenario": "canary"}
    assert route.resource_version == "7"
    assert isinstance(route.spec, RouteSpec) and route.spec.host == "reviews"
    assert route.to_dict() == {
        "apiVersion": "ami.mesh/v1alpha1", "kind": "Route",
        "metadata": {"name": "reviews", "namespace": "default", "labels": {"scenario": "canary"},
                     "resourceVersion": "7"},
        "spec": doc(ROUTE)["spec"],
    }
    assert "status" in route.raw


def test_every_kind_parses_to_its_spec_type() -> None:
    """Each kind's spec is parsed into its own dataclass, with documented defaults."""
    meta = "apiVersion: ami.mesh/v1alpha1\nmetadata: {name: default}\n"
    mesh = parse_document(doc(meta + "kind: MeshConfig\n"))
    assert mesh.spec == MeshConfigSpec()
    assert mesh.spec.certificate_ttl == 86400.0 and mesh.spec.mtls_mode == "STRICT"
    pool = parse_document(doc(meta + "kind: DestinationPolicy\n"
                              "spec: {host: ratings, connectionPool: {maxConnections: 1}}"))
    assert isinstance(pool.spec, DestinationPolicySpec)
    assert pool.spec.policy.connection_pool == ConnectionPool(max_connections=1)
    assert pool.spec.policy.outlier_detection is None
    assert pool.spec.policy.connection_pool.tcp_idle_timeout == 3600.0  # Istio's default
    never = parse_document(doc(meta + "kind: DestinationPolicy\n"
                               "spec: {host: db, connectionPool: {tcpIdleTimeout: 0s}}"))
    assert never.spec.policy.connection_pool == ConnectionPool(tcp_idle_timeout=0.0)
    authz = parse_document(doc(meta + "kind: AuthorizationPolicy\nspec: {}"))
    assert authz.spec == AuthorizationPolicySpec(None, "ALLOW", ())
    gateway = parse_document(doc(meta + "kind: Gateway\n"
                                 "spec: {listen: '0.0.0.0:8080', rules: [{destination: web}]}"))
    assert isinstance(gateway.spec, GatewaySpec) and gateway.spec.rules[0].matches == ()


@pytest.mark.parametrize(("text", "expected"), [
    ("apiVersion: v1\nkind: Route\nmetadata: {name: a}\nspec: {host: a, rules: [{backends: [{}]}]}",
     ["r.yaml doc 1: apiVersion: unsupported 'v1', expected ami.mesh/v1alpha1"]),
    ("apiVersion: ami.mesh/v1alpha1\nkind: VirtualService\nmetadata: {name: a}\nspec: {}",
     ["r.yaml doc 1: kind: unknown kind 'VirtualService', expected one of Route, "
      "DestinationPolicy, AuthorizationPolicy, RequestAuthentication, PeerAuthentication, "
      "MeshConfig, Gateway, ExternalService, Telemetry, Sidecar, Canary, HTTPRoute, GRPCRoute"]),
    ("apiVersion: ami.mesh/v1alpha1\nkind: Route\nmetadata: {name: Reviews_1}\n",
     ["r.yaml doc 1: metadata.name: invalid value 'Reviews_1', expected a DNS-1123 name like "
      "reviews-v1",
      "r.yaml doc 1: spec: field is required"]),
    ("apiVersion: ami.mesh/v1alpha1\nkind: MeshConfig\nmetadata: {name: mesh}\n"
     "spec: {certificateTTL: 30s, tracing: {sampling: 2}}",
     ["r.yaml doc 1: spec.certificateTTL: must be at least 1m, got 30s",
      "r.yaml doc 1: spec.tracing.sampling: must be between 0 and 1, got 2",
      "r.yaml doc 1: metadata.name: a MeshConfig must be named 'default', got 'mesh'"]),
    ("apiVersion: ami.mesh/v1alpha1\nkind: DestinationPolicy\nmetadata: {name: a, labels: "
     "{version: 1}}\nspec: {host: a, loadBalancer: FASTEST, subsets: [{name: v1, labels: {}}, "
     "{name: v1, labels: {}}]}",
     ["r.yaml doc 1: metadata.labels.version: expected a string, got an integer (quote it: \"1\")",
      "r.yaml doc 1: spec.subsets[1].name: duplicate subset 'v1', already defined by subsets[0]",
      "r.yaml doc 1: spec.loadBalancer: unknown value 'FASTEST', expected one of LEAST_REQUEST, "
      "ROUND_ROBIN, RANDOM, PEAK_EWMA, CONSISTENT_HASH"]),
    ("apiVersion: ami.mesh/v1alpha1\nkind: DestinationPolicy\nmetadata: {name: a}\n"
     "spec: {host: a, connectionPool: {idleTimeout: 0s, tcpIdleTimeout: 90}}",
     ["r.yaml doc 1: spec.connectionPool.idleTimeout: must be a positive duration, got 0s",
      "r.yaml doc 1: spec.connectionPool.tcpIdleTimeout: expected a duration string like "
      "'250ms' or '3s', got 90"]),
    ("apiVersion: ami.mesh/v1alpha1\nkind: DestinationPolicy\nmetadata: {name: a}\n"
     "spec: {host: a, connectionPool: {tcpIdleTimeout: -1s}}",
     ["r.yaml doc 1: spec.connectionPool.tcpIdleTimeout: duration '-1s' must not be negative"]),
    ("apiVersion: ami.mesh/v1alpha1\nkind: AuthorizationPolicy\nmetadata: {name: a}\n"
     "spec: {action: PERMIT, rules: [{from: [{}], to: [{paths: ['/a*b']}]}]}",
     ["r.yaml doc 1: spec.action: unknown value 'PERMIT', expected one of ALLOW, DENY, CUSTOM, "
      "AUDIT",
      "r.yaml doc 1: spec.rules[0].from[0]: set at least one of identities, notIdentities, "
      "services, notServices, namespaces, notNamespaces, ipBlocks, notIpBlocks, "
      "remoteIpBlocks, notRemoteIpBlocks, requestPrincipals, notRequestPrincipals",
      "r.yaml doc 1: spec.rules[0].to[0].paths[0]: invalid value '/a*b', expected '/exact', "
      "'/prefix/*' or '*'"]),
    ("apiVersion: ami.mesh/v1alpha1\nkind: Gateway\nmetadata: {name: a}\n"
     "spec: {listen: 'localhost', rules: []}",
     ["r.yaml doc 1: spec.listen: invalid value 'localhost', expected host:port like "
      "0.0.0.0:8080",
      "r.yaml doc 1: spec.rules: at least one rule is required"]),
    ("- just a list", ["r.yaml doc 1: expected a mapping, got a list"]),
])
def test_invalid_documents_report_every_issue(text: str, expected: list[str]) -> None:
    """Each document reports all its problems, each with file, document number and field path."""
    assert issues_of(text) == expected


def test_documents_are_numbered_in_a_multi_document_file() -> None:
    """Issues name the 1-based position of their document; empty documents count but are skipped."""
    bad_route = ROUTE.replace("weight: 50}, {subset: v3", "weight: 51}, {subset: v3")
    text = f"---\n{POLICY}\n---\n---\n{bad_route}"
    assert issues_of(text, "routes/reviews.yaml") == [
        "routes/reviews.yaml doc 3: spec.rules[0].backends: weights sum to 101, must be 100"]
    assert len(load_documents(f"{POLICY}\n---\n{ROUTE}\n---\n", "x.yaml")) == 2


def test_a_list_document_stands_for_its_items_only_when_asked() -> None:
    """`kind: List` (meshctl get -o json of a list) is expanded for apply (lists=True), its
    items' issues located at items[i]; elsewhere (the config dir) it is an unknown kind."""
    bad_route = ROUTE.replace("weight: 50}, {subset: v3", "weight: 51}, {subset: v3")
    listed = {"apiVersion": "ami.mesh/v1alpha1", "kind": "List",
              "items": [doc(POLICY), doc(bad_route)]}
    text = "---\n" + POLICY + "---\n" + yaml.safe_dump(listed)
    with pytest.raises(ValidationError) as err:
        load_documents(text, "l.yaml", lists=True)
    assert [str(i) for i in err.value.issues] == [
        "l.yaml doc 2: items[1].spec.rules[0].backends: weights sum to 101, must be 100"]
    listed["items"] = [doc(ROUTE)]
    text = POLICY + "---\n" + yaml.safe_dump(listed)
    assert [r.key for r in load_documents(text, "l.yaml", lists=True)] == [
        ("DestinationPolicy", "default", "reviews"), ("Route", "default", "reviews")]
    assert any("unknown kind 'List'" in line for line in issues_of(text))
    assert issues_of("kind: List\nitems: 3\n", "l.yaml") != []
    with pytest.raises(ValidationError) as err:
        load_documents("kind: List\nitems: 3\n", "l.yaml", lists=True)
    assert [str(i) for i in err.value.issues] == [
        "l.yaml doc 1: items: a List needs a list of items"]


def test_yaml_syntax_error_names_file_and_line() -> None:
    """A YAML syntax error is reported with the file, document, line and column."""
    assert issues_of(f"{POLICY}---\nkind: Route\nmetadata: {{name: [a}}\n") == [
        "r.yaml doc 2: invalid YAML: line 11, column 20: expected ',' or ']', but got '}'"]


def test_duplicate_yaml_keys_are_rejected() -> None:
    """A key given twice in one mapping is an error instead of a silent overwrite."""
    assert issues_of("kind: Route\nkind: Gateway\n") == [
        "r.yaml doc 1: invalid YAML: line 2, column 1: duplicate key 'kind'"]


def test_load_path_reads_directories_recursively_and_sorted(tmp_path: Path) -> None:
    """A directory yields its *.yaml/*.yml files in sorted order, recursively, skipping hidden."""
    (tmp_path / "b").mkdir()
    (tmp_path / "b" / "route.yml").write_text(ROUTE)
    (tmp_path / "a.yaml").write_text(POLICY)
    (tmp_path / "notes.txt").write_text("not yaml: [")
    (tmp_path / ".tmp-write.yaml").write_text("half written: [")
    resources = load_path(tmp_path)
    assert [(r.kind, r.source) for r in resources] == [
        ("DestinationPolicy", str(tmp_path / "a.yaml")),
        ("Route", str(tmp_path / "b" / "route.yml"))]
    assert load_path(tmp_path / "a.yaml")[0].doc == 1


def test_load_path_reports_all_files_and_missing_paths(tmp_path: Path) -> None:
    """Problems in several files are reported together; a missing path is an issue too."""
    (tmp_path / "1.yaml").write_text("kind: Route")
    (tmp_path / "2.yaml").write_text("a: [")
    with pytest.raises(ValidationError) as err:
        load_path(tmp_path)
    assert [i.source for i in err.value.issues] == [str(tmp_path / "1.yaml")] * 3 + [
        str(tmp_path / "2.yaml")]
    with pytest.raises(ValidationError, match="no such file or directory"):
        load_path(tmp_path / "missing")


def cross(*texts: str) -> list[str]:
    """Issue lines from validate_set over documents loaded from ``texts`` (one file each)."""
    resources: list[Resource] = []
    for n, text in enumerate(texts, 1):
        resources.extend(load_documents(text, f"f{n}.yaml"))
    return [str(issue) for issue in validate_set(resources)]


def test_consistent_set_has_no_issues() -> None:
    """A route whose subsets are all defined passes the cross-document checks."""
    assert cross(POLICY, ROUTE) == []


def test_unknown_subset_names_the_known_ones() -> None:
    """A backend naming an undefined subset lists the subsets the host does define."""
    route = ROUTE.replace("subset: v3", "subset: v9").replace("rules:", "rules:\n    - backends:"
                                                              " [{subset: v2}]\n      matches: "
                                                              "[{method: GET}]\n      mirror: "
                                                              "{subset: canary}")
    assert cross(POLICY, route) == [
        "f2.yaml doc 1: spec.rules[0].mirror.subset: unknown subset 'canary' for host reviews "
        "(known: v1, v2, v3)",
        "f2.yaml doc 1: spec.rules[1].backends[1].subset: unknown subset 'v9' for host reviews "
        "(known: v1, v2, v3)"]
    assert cross(ROUTE) == [
        f"f1.yaml doc 1: spec.rules[0].backends[{i}].subset: unknown subset '{s}' for host "
        "reviews (known: none, no DestinationPolicy defines any)"
        for i, s in ((0, "v1"), (1, "v3"))]


def test_subsets_are_looked_up_per_namespace_and_service() -> None:
    """A backend's service (else the host) and the route's namespace select the policy."""
    other_ns = POLICY.replace("{name: reviews}", "{name: reviews, namespace: staging}")
    other_svc = ROUTE.replace("{subset: v3, weight: 50}", "{service: ratings, subset: v1, "
                                                           "weight: 50}")
    assert len(cross(other_ns, ROUTE)) == 2
    assert cross(POLICY, other_svc) == [
        "f2.yaml doc 1: spec.rules[0].backends[1].subset: unknown subset 'v1' for host ratings "
        "(known: none, no DestinationPolicy defines any)"]


def test_duplicates_and_conflicts_are_reported_once() -> None:
    """Same name twice, two policies for one host, two MeshConfigs, a shared listen address."""
    second_policy = POLICY.replace("{name: reviews}", "{name: reviews-2}")
    mesh = "apiVersion: ami.mesh/v1alpha1\nkind: MeshConfig\nmetadata: {name: default%s}\n"
    gateway = ("apiVersion: ami.mesh/v1alpha1\nkind: Gateway\nmetadata: {name: %s}\n"
               "spec: {listen: '0.0.0.0:8080', rules: [{destination: web}]}\n")
    assert cross(POLICY, POLICY, second_policy, mesh % "", mesh % ", namespace: x",
                 gateway % "a", gateway % "b") == [
        "f2.yaml doc 1: metadata.name: duplicate DestinationPolicy default/reviews "
        "(see DestinationPolicy default/reviews in f1.yaml doc 1)",
        "f3.yaml doc 1: spec.host: host reviews already has a DestinationPolicy "
        "(see DestinationPolicy default/reviews in f1.yaml doc 1)",
        "f5.yaml doc 1: kind: more than one MeshConfig (see MeshConfig default/default in "
        "f4.yaml doc 1)",
        "f7.yaml doc 1: spec.listen: listen address already used by a Gateway "
        "(see Gateway default/a in f6.yaml doc 1)",
    ]


def test_issue_without_source_has_no_location_prefix() -> None:
    """An issue with no file renders as 'path: message', with a file as 'FILE doc N: ...'."""
    issue = Issue(None, None, "spec.host", "field is required")
    assert str(issue) == "spec.host: field is required"
    assert str(Issue("a.yaml", None, "", "cannot read")) == "a.yaml: cannot read"
    assert str(Issue("a.yaml", 2, "spec", "x")) == "a.yaml doc 2: spec: x"


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=5),
    lambda children: st.lists(children, max_size=3)
    | st.dictionaries(st.sampled_from(["spec", "host", "rules", "backends", "name", "kind",
                                       "metadata", "weight", "subset", "x"]), children,
                      max_size=4),
    max_leaves=12)


@settings(max_examples=300)
@given(json_values, st.sampled_from(["Route", "DestinationPolicy", "AuthorizationPolicy",
                                     "MeshConfig", "Gateway"]))
def test_parser_never_crashes_on_arbitrary_input(spec: object, kind: str) -> None:
    """Any decoded YAML value either parses or raises ValidationError, never another exception."""
    document = {"apiVersion": "ami.mesh/v1alpha1", "kind": kind, "metadata": {"name": "a"},
                "spec": spec}
    try:
        parse_document(document)
    except ValidationError as err:
        assert err.issues
