"""HTTPRoute (Gateway API, GAMMA): what the parser refuses and the Route rules a set of
HTTPRoutes becomes (meshctl.api.httproute, meshctl.api.gamma)."""

from __future__ import annotations

from typing import Any

import jsonschema
import pytest

from meshctl.api.errors import ValidationError
from meshctl.api.gamma import parent_status, routes_of
from meshctl.api.jsonschema import schema_for
from meshctl.api.resources import Resource, load_documents, parse_document, validate_set


def doc(rules: list[dict[str, Any]] | None = None, name: str = "r", namespace: str = "default",
        parent: dict[str, Any] | None = None, **spec: Any) -> dict[str, Any]:
    body: dict[str, Any] = {"parentRefs": [parent or {"kind": "Service", "group": "",
                                                      "name": "reviews"}], **spec}
    if rules is not None:
        body["rules"] = rules
    return {"apiVersion": "gateway.networking.k8s.io/v1", "kind": "HTTPRoute",
            "metadata": {"name": name, "namespace": namespace}, "spec": body}


def rules_of(*docs: dict[str, Any]) -> list[dict[str, Any]]:
    (route,) = routes_of([parse_document(d) for d in docs])
    return list(route.raw["spec"]["rules"])


def errors(document: dict[str, Any]) -> list[str]:
    with pytest.raises(ValidationError) as err:
        parse_document(document)
    return [str(i) for i in err.value.issues]


def test_weights_become_percentages_summing_to_100() -> None:
    rules = rules_of(doc([{"backendRefs": [{"name": "a"}, {"name": "b"}, {"name": "c"}]}]))
    assert [b["weight"] for b in rules[0]["backends"]] == [34, 33, 33]
    assert rules[0]["matches"] == [{"path": {"prefix": "/"}}]


def test_no_backend_or_zero_weights_answer_500() -> None:
    for backends in ([], [{"name": "a", "weight": 0}]):
        (rule,) = rules_of(doc([{"backendRefs": backends}]))
        assert rule["directResponse"] == {"status": 500} and "backends" not in rule


def test_prefix_matches_whole_segments_and_ignores_a_trailing_slash() -> None:
    (rule,) = rules_of(doc([{"matches": [{"path": {"value": "/api/"}}],
                             "backendRefs": [{"name": "a"}]}]))
    assert rule["matches"] == [{"path": {"exact": "/api"}}, {"path": {"prefix": "/api/"}}]


def test_full_path_rewrite_below_a_prefix_uses_a_regex() -> None:
    rules = rules_of(doc([{"matches": [{"path": {"value": "/a.b"}}],
                           "filters": [{"type": "URLRewrite", "urlRewrite": {"path": {
                               "type": "ReplaceFullPath", "replaceFullPath": "/x"}}}],
                           "backendRefs": [{"name": "a"}]}]))
    assert [r["matches"][0]["path"] for r in rules] == [{"exact": "/a.b"},
                                                        {"regex": r"/a\.b/.*"}]
    assert {r["rewrite"]["uri"] for r in rules} == {"/x"}


def test_precedence_exact_then_longest_prefix_then_headers_then_name() -> None:
    first = doc([{"backendRefs": [{"name": "a"}]},
                 {"matches": [{"headers": [{"name": "X", "value": "1"}]}],
                  "backendRefs": [{"name": "a"}]}], name="a")
    second = doc([{"matches": [{"path": {"type": "Exact", "value": "/e"}},
                               {"path": {"value": "/long/er"}}],
                   "backendRefs": [{"name": "b"}]},
                  {"matches": [{"headers": [{"name": "x", "value": "2"}]}],
                   "backendRefs": [{"name": "b"}]}], name="b")
    rules = rules_of(second, first)
    order = [(r["matches"][0]["path"], r["matches"][0].get("headers"), r["backends"])
             for r in rules]
    assert order == [
        ({"exact": "/e"}, None, [{"service": "b"}]),
        ({"exact": "/long/er"}, None, [{"service": "b"}]),
        ({"prefix": "/"}, {"x": {"exact": "1"}}, [{"service": "a"}]),
        ({"prefix": "/"}, {"x": {"exact": "2"}}, [{"service": "b"}]),
        ({"prefix": "/"}, None, [{"service": "a"}])]


def test_retry_makes_backend_request_each_tries_deadline() -> None:
    (rule,) = rules_of(doc([{"timeouts": {"request": "3s", "backendRequest": "1s"},
                             "retry": {"attempts": 2, "codes": [503, 503, 502],
                                       "backoff": "50ms"},
                             "backendRefs": [{"name": "a"}]}]))
    assert rule["timeout"] == "3s"
    assert rule["retries"] == {"attempts": 2, "perTryTimeout": "1s",
                               "retryOn": ["connect-failure", "reset", "retriable-status-codes"],
                               "retriableStatusCodes": [503, 502],
                               "backoff": {"baseInterval": "50ms", "maxInterval": "500ms"}}


def test_timeouts_mirror_and_consumer_route() -> None:
    (rule,) = rules_of(doc([{"timeouts": {"request": "2s", "backendRequest": "500ms"},
                             "filters": [{"type": "RequestMirror", "requestMirror": {
                                 "backendRef": {"name": "shadow"},
                                 "fraction": {"numerator": 1, "denominator": 4}}}],
                             "backendRefs": [{"name": "a"}]}],
                           namespace="team", parent={"kind": "Service", "name": "reviews",
                                                     "namespace": "default"}))
    assert rule["timeout"] == "500ms"
    assert rule["mirror"] == {"service": "shadow", "percent": 25.0}
    (route,) = routes_of([parse_document(doc(namespace="team", parent={
        "kind": "Service", "name": "reviews", "namespace": "default"}))])
    assert route.namespace == "team" and route.raw["spec"]["host"] == "reviews.default"


@pytest.mark.parametrize(("document", "expected"), [
    (doc(parent={"name": "gw"}), "spec.parentRefs[0]: not supported by Ami: parentRefs to a "
                                 "Gateway"),
    (doc(parent={"kind": "Service", "name": "r", "sectionName": "http"}),
     "spec.parentRefs[0].sectionName: not supported by Ami"),
    (doc([{"filters": [{"type": "CORS", "cors": {}}]}]),
     "spec.rules[0].filters[0].type: not supported by Ami: filter CORS"),
    (doc([{"backendRefs": [{"name": "a", "filters": []}]}]),
     "spec.rules[0].backendRefs[0].filters: not supported by Ami"),
    (doc([{"retry": {"codes": [200]}}]), "spec.rules[0].retry.codes[0]: "),
    (doc([{"filters": [{"type": "RequestRedirect", "requestRedirect": {"path": {
        "type": "ReplacePrefixMatch", "replacePrefixMatch": "/x"}}}]}]),
     "spec.rules[0].filters[0].requestRedirect.path.type: not supported by Ami"),
    (doc([{"filters": [{"type": "RequestMirror", "requestMirror": {"backendRef": {
        "name": "a"}}}] * 2, "backendRefs": [{"name": "a"}]}]),
     "spec.rules[0].filters[1]: filter RequestMirror appears twice"),
    (doc([{"filters": [{"type": "RequestHeaderModifier", "requestHeaderModifier": {
        "set": [{"name": "content-length", "value": "0"}]}}]}]),
     "requestHeaderModifier.set[0].name: 'content-length' frames the message"),
    (doc([{"matches": [{"path": {"type": "Exact", "value": "/a"}}],
           "filters": [{"type": "URLRewrite", "urlRewrite": {"path": {
               "type": "ReplacePrefixMatch", "replacePrefixMatch": "/b"}}}]}]),
     "spec.rules[0].matches: URLRewrite with ReplacePrefixMatch needs PathPrefix matches"),
    (doc([{"timeouts": {"request": "1s", "backendRequest": "2s"}}]),
     "spec.rules[0].timeouts.backendRequest: must not be longer than request"),
    (doc([{"timeouts": {"request": "1.5s"}}]), "spec.rules[0].timeouts.request: expected a "
                                               "Gateway API duration"),
    ({**doc(), "apiVersion": "ami.mesh/v1alpha1"}, "apiVersion: unsupported 'ami.mesh/v1alpha1'"
                                                   ", expected gateway.networking.k8s.io/v1 or "
                                                   "gateway.networking.k8s.io/v1beta1"),
])
def test_refused_by_name(document: dict[str, Any], expected: str) -> None:
    assert any(expected in e for e in errors(document)), errors(document)


@pytest.mark.parametrize("document", [
    doc(parent={"name": "gw"}),
    doc([{"filters": [{"type": "ExtensionRef", "extensionRef": {}}]}]),
    doc([{"backendRefs": [{"name": "a", "weight": -1}]}]),
])
def test_schema_refuses_what_the_parser_refuses(document: dict[str, Any]) -> None:
    assert errors(document)
    assert not jsonschema.Draft202012Validator(schema_for("HTTPRoute")).is_valid(document)


def test_beside_an_ami_route_refused_and_reported() -> None:
    route = load_documents("""apiVersion: ami.mesh/v1alpha1
kind: Route
metadata: {name: reviews}
spec: {host: reviews.default.svc.cluster.local, rules: [{backends: [{subset: v1}]}]}
""", "route.yaml")
    resources = [*route, parse_document(doc())]
    issues = [str(i) for i in validate_set(resources)]
    assert any("spec.parentRefs[0]: service reviews.default already has a Route" in i
               for i in issues), issues
    httproute = resources[1]
    status = parent_status(httproute, {("reviews", "default")}, resources)
    accepted = status["parents"][0]["conditions"][0]
    assert (accepted["status"], accepted["reason"]) == ("False", "Conflicted")
    assert not routes_of(resources)  # the Route stays the one in effect


def test_status_of_an_unknown_parent() -> None:
    r: Resource = parse_document(doc([{"backendRefs": [{"name": "v1"}]}]))
    conditions = parent_status(r, set(), [])["parents"][0]["conditions"]
    assert [(c["type"], c["status"], c["reason"]) for c in conditions] == [
        ("Accepted", "False", "NoMatchingParent"), ("ResolvedRefs", "False", "BackendNotFound")]


def test_status_parent_refs_are_the_spec_parent_refs_with_their_port() -> None:
    """status.parents[].parentRef is the spec's parentRef (port included): clients (the
    Gateway API's conformance helpers, kubectl wait scripts) find a parentRef's status by
    comparing the whole reference. Two ports of one Service are two parentRefs."""
    r: Resource = parse_document(doc([{"backendRefs": [{"name": "v1"}]}], parent={
        "group": "", "kind": "Service", "name": "reviews", "port": 9080}))
    (parent,) = parent_status(r, {("reviews", "default"), ("v1", "default")}, [])["parents"]
    assert parent["parentRef"] == {"group": "", "kind": "Service", "name": "reviews",
                                   "namespace": "default", "port": 9080}
    two = doc([{"backendRefs": [{"name": "v1"}]}])
    two["spec"]["parentRefs"] = [{"kind": "Service", "group": "", "name": "reviews", "port": p}
                                 for p in (9080, 9443, 9080)]
    refs = [p["parentRef"] for p in parent_status(parse_document(two), set(), [])["parents"]]
    assert [ref.get("port") for ref in refs] == [9080, 9443]


def test_regex_that_python_reads_otherwise_than_re2_is_refused() -> None:
    """`[[:digit:]]` is a class in RE2 and in Python's re a set of `[:digt` then a literal
    `]`: a route written for Istio would silently match other requests; refused by field."""
    document = doc([{"matches": [{"path": {"type": "RegularExpression",
                                            "value": "/v[[:digit:]]+"},
                                   "headers": [{"name": "x", "type": "RegularExpression",
                                                "value": "[[:alpha:]]+"}]}],
                     "backendRefs": [{"name": "a"}]}])
    found = errors(document)
    assert any(e.startswith("spec.rules[0].matches[0].path.value: invalid regex")
               and "POSIX class [:digit:]" in e for e in found), found
    assert any(e.startswith("spec.rules[0].matches[0].headers[0].value: invalid regex")
               for e in found), found


def test_group_core_is_the_core_group() -> None:
    """`group: core`, as the Gateway API's own GAMMA examples (and Linkerd's) write a
    Service parentRef, is the core group: accepted by the parser and the schema, echoed in
    status; another group is still refused."""
    document = doc([{"backendRefs": [{"group": "core", "kind": "Service", "name": "v1"}]}],
                   parent={"group": "core", "kind": "Service", "name": "reviews", "port": 80})
    r: Resource = parse_document(document)
    assert jsonschema.Draft202012Validator(schema_for("HTTPRoute")).is_valid(document)
    assert rules_of(document)[0]["backends"] == [{"service": "v1"}]
    (parent,) = parent_status(r, set(), [])["parents"]
    assert parent["parentRef"]["group"] == "core"
    other = doc(parent={"group": "example.io", "kind": "Service", "name": "reviews"})
    assert any("of group 'example.io'" in e for e in errors(other))


def test_grpcroute_methods_become_paths_ranked_service_then_method() -> None:
    grpc = {**doc([{"backendRefs": [{"name": "all"}]},
                   {"matches": [{"method": {"method": "Get"}}], "backendRefs": [{"name": "m"}]},
                   {"matches": [{"method": {"service": "a.S"}}], "backendRefs": [{"name": "s"}]},
                   {"matches": [{"method": {"service": "a.S", "method": "Get"}}],
                    "backendRefs": [{"name": "sm"}]}]), "kind": "GRPCRoute"}
    rules = rules_of(grpc)
    assert [(r["matches"][0]["path"], r["backends"][0]["service"]) for r in rules] == [
        ({"exact": "/a.S/Get"}, "sm"), ({"exact": "/a.S"}, "s"), ({"regex": "/[^/]+/Get"}, "m"),
        ({"prefix": "/"}, "all")]
    assert any("a GRPCRoute has no filter URLRewrite" in e for e in errors(
        {**doc([{"filters": [{"type": "URLRewrite", "urlRewrite": {"hostname": "h"}}]}]),
         "kind": "GRPCRoute"}))
