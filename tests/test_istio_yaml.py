"""Istio's own YAML (VirtualService, DestinationRule, AuthorizationPolicy, PeerAuthentication,
RequestAuthentication) as the Ami documents it is translated into, and what is refused, on the
Istio document's field paths (meshctl.api.istio)."""

from __future__ import annotations

import textwrap
from pathlib import Path
from typing import Any

import pytest
import yaml

from meshctl.api.annotations import is_dry_run
from meshctl.api.errors import ValidationError
from meshctl.api.resources import Resource, load_documents, validate_set
from meshctl.controlplane.dirstore import DirStore
from tests.conftest_store import next_event


def load(text: str) -> list[Resource]:
    return load_documents(textwrap.dedent(text), "istio.yaml", lists=True)


def specs(text: str) -> list[tuple[str, str, dict[str, Any]]]:
    """(kind, name, spec) of each Ami document the text translates to."""
    return [(r.kind, r.name, r.to_dict()["spec"]) for r in load(text)]


def errors(text: str) -> list[str]:
    with pytest.raises(ValidationError) as err:
        load(text)
    return [str(i) for i in err.value.issues]


# -- VirtualService --------------------------------------------------------------------------
# Istio's samples/bookinfo/networking/virtual-service-reviews-90-10.yaml, as written
REVIEWS_90_10 = """\
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata:
  name: reviews
spec:
  hosts:
    - reviews
  http:
  - route:
    - destination:
        host: reviews
        subset: v1
      weight: 90
    - destination:
        host: reviews
        subset: v2
      weight: 10
"""
# virtual-service-ratings-test-delay.yaml
RATINGS_DELAY = """\
apiVersion: networking.istio.io/v1beta1
kind: VirtualService
metadata:
  name: ratings
spec:
  hosts:
  - ratings
  http:
  - match:
    - headers:
        end-user:
          exact: jason
    fault:
      delay:
        percentage:
          value: 100.0
        fixedDelay: 7s
    route:
    - destination:
        host: ratings
        subset: v1
  - route:
    - destination:
        host: ratings
        subset: v1
"""
# virtual-service-ratings-test-abort.yaml (v1alpha3, the apiVersion of older docs)
RATINGS_ABORT = """\
apiVersion: networking.istio.io/v1alpha3
kind: VirtualService
metadata:
  name: ratings
spec:
  hosts:
  - ratings
  http:
  - match:
    - headers:
        end-user:
          exact: jason
    fault:
      abort:
        percentage:
          value: 100.0
        httpStatus: 500
    route:
    - destination:
        host: ratings
        subset: v1
  - route:
    - destination:
        host: ratings
        subset: v1
"""
# the request timeouts, retries and mirroring tasks, and every other field Ami maps
EVERYTHING = """\
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata:
  name: httpbin
  namespace: shop
spec:
  hosts: [httpbin.shop.svc.cluster.local]
  gateways: [mesh]
  exportTo: ["*"]
  http:
  - name: api
    match:
    - uri: {prefix: /api}
      ignoreUriCase: true
      method: {exact: POST}
      queryParams: {debug: {}}
      withoutHeaders: {x-canary: {exact: "1"}}
      sourceLabels: {app: web}
      sourceNamespace: shop
      name: api-calls
    - uri: {regex: "/v[0-9]+/.*"}
      scheme: {exact: https}
    route:
    - destination: {host: httpbin, subset: v1, port: {number: 8000}}
    timeout: 0.5s
    retries:
      attempts: 3
      perTryTimeout: 2s
      retryOn: "gateway-error,connect-failure,refused-stream,503"
    mirror: {host: httpbin, subset: v2}
    mirrorPercentage: {value: 100.0}
    headers:
      request: {set: {x-env: demo}, remove: [x-debug]}
      response: {add: {x-served-by: ami}}
    rewrite: {uri: /v1, authority: backend}
    corsPolicy:
      allowOrigins: [{exact: https://example.com}, {regex: "https://.*\\\\.example\\\\.org"}]
      allowMethods: [GET, POST]
      allowHeaders: [x-token]
      maxAge: 24h
      allowCredentials: true
  - match: [{uri: {exact: /old}}]
    redirect: {uri: /new, redirectCode: 302}
  - match: [{uri: {exact: /gone}}]
    directResponse: {status: 410, body: {string: gone}}
  - route:
    - destination: {host: other}
      weight: 100
    - destination: {host: httpbin.shop, subset: v2}
    timeout: 0s
"""

VIRTUAL_SERVICES = [
    (REVIEWS_90_10, [("Route", "reviews", {"host": "reviews", "rules": [
        {"backends": [{"subset": "v1", "weight": 90}, {"subset": "v2", "weight": 10}]}]})]),
    (RATINGS_DELAY, [("Route", "ratings", {"host": "ratings", "rules": [
        {"matches": [{"headers": {"end-user": {"exact": "jason"}}}],
         "backends": [{"subset": "v1"}],
         "fault": {"delay": {"fixedDelay": "7s", "percent": 100.0}}},
        {"backends": [{"subset": "v1"}]}]})]),
    (RATINGS_ABORT, [("Route", "ratings", {"host": "ratings", "rules": [
        {"matches": [{"headers": {"end-user": {"exact": "jason"}}}],
         "backends": [{"subset": "v1"}],
         "fault": {"abort": {"httpStatus": 500, "percent": 100.0}}},
        {"backends": [{"subset": "v1"}]}]})]),
    (EVERYTHING, [("Route", "httpbin", {"host": "httpbin.shop.svc.cluster.local", "rules": [
        {"name": "api",
         "matches": [{"path": {"prefix": "/api"}, "ignoreUriCase": True, "method": "POST",
                      "query": {"debug": {"present": True}},
                      "withoutHeaders": {"x-canary": {"exact": "1"}},
                      "sourceLabels": {"app": "web"}, "sourceNamespace": "shop"},
                     {"path": {"regex": "/v[0-9]+/.*"}, "scheme": {"exact": "https"}}],
         "backends": [{"subset": "v1"}],
         "timeout": "0.5s",
         "retries": {"attempts": 3, "perTryTimeout": "2s", "allowNonIdempotent": True,
                     "retryOn": ["gateway-error", "connect-failure", "reset",
                                 "retriable-status-codes"],
                     "retriableStatusCodes": [503]},
         "headers": {"request": {"set": {"x-env": "demo"}, "remove": ["x-debug"]},
                     "response": {"add": {"x-served-by": "ami"}}},
         "rewrite": {"uri": "/v1", "authority": "backend"},
         "cors": {"allowOrigins": [{"exact": "https://example.com"},
                                   {"regex": "https://.*\\.example\\.org"}],
                  "allowMethods": ["GET", "POST"], "allowHeaders": ["x-token"],
                  "maxAge": "24h", "allowCredentials": True},
         "mirror": {"subset": "v2", "percent": 100.0}},
        {"matches": [{"path": {"exact": "/old"}}], "redirect": {"uri": "/new",
                                                                 "redirectCode": 302}},
        {"matches": [{"path": {"exact": "/gone"}}],
         "directResponse": {"status": 410, "body": {"string": "gone"}}},
        {"backends": [{"service": "other", "weight": 100}, {"subset": "v2", "weight": 0}]},
    ]})]),
]


@pytest.mark.parametrize(("istio", "ami"), VIRTUAL_SERVICES,
                         ids=["reviews-90-10", "ratings-delay", "ratings-abort", "every-field"])
def test_virtual_service_becomes_a_route(istio: str, ami: list[Any]) -> None:
    assert specs(istio) == ami


def test_retries_without_conditions_get_istios_defaults() -> None:
    """Istio retries on connect-failure,refused-stream,unavailable,cancelled and 503 when
    retryOn is not given: the Route says so (Ami's own default differs)."""
    ((_, _, spec),) = specs(REVIEWS_90_10.replace("      weight: 10\n", "      weight: 10\n"
                                                  "    retries: {attempts: 2}\n"))
    assert spec["rules"][0]["retries"] == {
        "attempts": 2, "allowNonIdempotent": True,
        "retryOn": ["connect-failure", "reset", "unavailable", "cancelled",
                                   "retriable-status-codes"], "retriableStatusCodes": [503]}


def vs_rule(rule: str) -> dict[str, Any]:
    """The one Route rule of a VirtualService of `reviews` with this `http` item."""
    ((_, _, spec),) = specs("apiVersion: networking.istio.io/v1\nkind: VirtualService\n"
                            "metadata: {name: reviews}\nspec:\n  hosts: [reviews]\n  http:\n"
                            + textwrap.indent(textwrap.dedent(rule), "  "))
    (out,) = spec["rules"]
    assert isinstance(out, dict)
    return out


def test_retry_flags_of_istios_default_are_accepted() -> None:
    """retryRemoteLocalities: false and retryIgnorePreviousHosts: true are what Ami does
    (Istio's defaults); the other values are refused."""
    rule = vs_rule("""\
    - route: [{destination: {host: reviews}}]
      retries: {attempts: 1, retryOn: 5xx, retryRemoteLocalities: false,
                retryIgnorePreviousHosts: true}
    """)
    assert rule["retries"] == {"attempts": 1, "allowNonIdempotent": True, "retryOn": ["5xx"]}
    found = errors("apiVersion: networking.istio.io/v1\nkind: VirtualService\n"
                   "metadata: {name: reviews}\nspec:\n  hosts: [reviews]\n  http:\n"
                   "  - route: [{destination: {host: reviews}}]\n"
                   "    retries: {attempts: 1, retryRemoteLocalities: true, "
                   "retryIgnorePreviousHosts: false}\n")
    assert [e.split(": ")[1] for e in found] == [
        "spec.http[0].retries.retryRemoteLocalities",
        "spec.http[0].retries.retryIgnorePreviousHosts"], found


@pytest.mark.parametrize("part", ["abort: {httpStatus: 500}", "delay: {fixedDelay: 1s}"])
def test_a_fault_without_percentage_is_refused(part: str) -> None:
    """Istio (Envoy) injects a fault without percentage into no request; Ami's percent
    defaults to 100: taken as written it would fail or delay every request."""
    kind = part.split(":")[0]
    found = errors("apiVersion: networking.istio.io/v1\nkind: VirtualService\n"
                   "metadata: {name: reviews}\nspec:\n  hosts: [reviews]\n  http:\n"
                   f"  - route: [{{destination: {{host: reviews}}}}]\n    fault: {{{part}}}\n")
    noun = "an abort" if kind == "abort" else "a delay"
    assert found == [f"istio.yaml doc 1: spec.http[0].fault.{kind}.percentage: required by "
                     f"Ami: Istio injects {noun} without percentage into no request at all; "
                     f"write percentage: {{value: 100}} to {kind} every request, or leave the "
                     f"{kind} out"]


def test_weights_are_istios_relative_ones() -> None:
    """One destination gets everything whatever its weight; several split by weight / sum,
    written as Ami's percentages when exact, refused otherwise."""
    one = vs_rule("- route: [{destination: {host: reviews, subset: v1}, weight: 50}]")
    assert one["backends"] == [{"subset": "v1"}]
    split = vs_rule("""\
    - route:
      - {destination: {host: reviews, subset: v1}, weight: 1}
      - {destination: {host: reviews, subset: v2}, weight: 3}
      - {destination: {host: reviews, subset: v3}}
    """)
    assert split["backends"] == [{"subset": "v1", "weight": 25}, {"subset": "v2", "weight": 75},
                                 {"subset": "v3", "weight": 0}]
    found = errors("apiVersion: networking.istio.io/v1\nkind: VirtualService\n"
                   "metadata: {name: reviews}\nspec:\n  hosts: [reviews]\n  http:\n"
                   "  - route: [{destination: {host: reviews}, weight: 1}, "
                   "{destination: {host: reviews}, weight: 2}]\n")
    assert found == ["istio.yaml doc 1: spec.http[0].route: weights 1, 2 split traffic in "
                     "Istio by weight / 3, which Ami's whole percentages cannot write "
                     "exactly: give weights summing to 100"]


def test_matchers_istio_reads_as_presence_or_ignores() -> None:
    """A header regex `*` is Istio's presence match; ignoreUriCase without uri does
    nothing in Istio (Ami refuses it there), so it is left out."""
    rule = vs_rule("""\
    - match: [{headers: {x-a: {regex: "*"}}, withoutHeaders: {x-b: {regex: "*"}},
               ignoreUriCase: true}]
      route: [{destination: {host: reviews}}]
    """)
    assert rule["matches"] == [{"headers": {"x-a": {"present": True}},
                                "withoutHeaders": {"x-b": {"present": True}}}]


def test_a_rewrite_without_uri_match_replaces_the_prefix_slash() -> None:
    """Istio matches a block without uri as the prefix `/`, which rewrite.uri replaces
    (tests/test_istio_yaml_traffic.py sends the requests)."""
    rule = vs_rule("""\
    - match: [{uri: {exact: /a}}, {headers: {x: {exact: "1"}}}]
      rewrite: {uri: /b}
      route: [{destination: {host: reviews}}]
    """)
    assert rule["matches"] == [{"path": {"exact": "/a"}},
                               {"headers": {"x": {"exact": "1"}}, "path": {"prefix": "/"}}]
    alone = vs_rule("- {rewrite: {uri: /b}, route: [{destination: {host: reviews}}]}")
    assert alone["matches"] == [{"path": {"prefix": "/"}}]
    redirect = vs_rule("- {redirect: {uri: /b}}")  # a redirect's uri is the whole path
    assert "matches" not in redirect


def test_several_hosts_make_one_route_each_named_after_its_host() -> None:
    """A destination naming one of the hosts stays implicit in that host's Route only."""
    text = """\
    apiVersion: networking.istio.io/v1
    kind: VirtualService
    metadata: {name: shop}
    spec:
      hosts: [cart, checkout.default.svc.cluster.local]
      http:
      - route: [{destination: {host: cart}}]
    """
    routes = load(text)
    assert [(r.kind, r.name, r.to_dict()["spec"]) for r in routes] == [
        ("Route", "shop-cart", {"host": "cart", "rules": [{"backends": [{}]}]}),
        ("Route", "shop-checkout-default-svc-cluster-local",
         {"host": "checkout.default.svc.cluster.local",
          "rules": [{"backends": [{"service": "cart"}]}]}),
    ]
    assert {r.origin for r in routes} == {"virtualservice.networking.istio.io/shop"}
    assert routes[0].annotations == {
        "ami.mesh/translated-from": "virtualservice.networking.istio.io/shop"}


VS_REFUSALS = [
    ("gateways: [istio-system/bookinfo-gateway]", "spec.gateways[0]: not supported by Ami: "
     "Gateway 'istio-system/bookinfo-gateway' of another namespace"),
    ("exportTo: [.]", "spec.exportTo: not supported by Ami: exportTo other than"),
    ("tcp: [{route: [{destination: {host: db}}]}]", "spec.tcp: not supported by Ami: tcp routes"),
    ("tls: [{match: [{sniHosts: [a]}]}]", "spec.tls: not supported by Ami: tls (SNI) routes"),
]
RULE_REFUSALS = [
    ("delegate: {name: r}", "spec.http[0].delegate: not supported by Ami: delegate"),
    ("match: [{port: 9080}]", "spec.http[0].match[0].port: not supported by Ami"),
    ("match: [{authority: {exact: a}}]", "spec.http[0].match[0].authority: not supported"),
    ("match: [{method: {regex: G.*}}]", "spec.http[0].match[0].method: not supported by Ami: "
                                        "a method matched other than by `exact`"),
    ("match: [{gateways: [gw]}]", "spec.http[0].match[0].gateways: not supported by Ami"),
    ("retries: {attempts: 1, retryOn: retriable-4xx}",
     "spec.http[0].retries.retryOn: not supported by Ami: retry condition 'retriable-4xx'"),
    ("retries: {attempts: 1, retryOn: \"5xx,retriable-status-codes\"}",
     "spec.http[0].retries.retryOn: retriable-status-codes without a status code retries no "
     "status in Istio, and Ami needs the codes: list them (retryOn: "
     "\"retriable-status-codes,503\") or leave the word out"),
    ("fault: {abort: {http2Error: x}}", "spec.http[0].fault.abort.http2Error: not supported"),
    ("rewrite: {uriRegexRewrite: {match: a, rewrite: b}}",
     "spec.http[0].rewrite.uriRegexRewrite: not supported by Ami"),
    ("redirect: {uri: /a, derivePort: FROM_REQUEST_PORT}",
     "spec.http[0].redirect.derivePort: not supported by Ami"),
    ("mirrors: [{destination: {host: a}}, {destination: {host: b}}]",
     "spec.http[0].mirrors: not supported by Ami: more than one mirror"),
    ("corsPolicy: {allowOrigins: [{exact: a}], unmatchedPreflights: IGNORE}",
     "spec.http[0].corsPolicy.unmatchedPreflights: not supported by Ami: unmatchedPreflights: "
     "IGNORE; a preflight no origin matches is forwarded to the app (FORWARD, Istio's "
     "default)"),
]


@pytest.mark.parametrize(("field", "message"), VS_REFUSALS + [
    (f"http:\n  - route: [{{destination: {{host: reviews}}}}]\n    {field}", message)
    for field, message in RULE_REFUSALS])
def test_virtual_service_refusals(field: str, message: str) -> None:
    body = textwrap.indent(field, "  ")
    if not field.startswith("http:"):
        body += "\n  http: [{route: [{destination: {host: reviews}}]}]"
    found = errors(f"apiVersion: networking.istio.io/v1\nkind: VirtualService\n"
                   f"metadata: {{name: reviews}}\nspec:\n  hosts: [reviews]\n{body}\n")
    assert any(f"istio.yaml doc 1: {message}" in e for e in found), found


def test_destinations_outside_the_route_are_refused_by_name() -> None:
    found = errors("""\
    apiVersion: networking.istio.io/v1
    kind: VirtualService
    metadata: {name: reviews}
    spec:
      hosts: ["*.example.com", reviews]
      http:
      - route:
        - destination: {host: ratings.other.svc.cluster.local}
        - destination: {host: api.example.com}
    """)
    assert found == [
        "istio.yaml doc 1: spec.hosts[0]: not supported by Ami: wildcard host '*.example.com'; "
        "a Route is about one service (or ExternalService host): name each",
        "istio.yaml doc 1: spec.http[0].route[0].destination.host: not supported by Ami: "
        "'ratings.other.svc.cluster.local' is service ratings of namespace other, another "
        "namespace; a Route's backends are services of its own namespace, unless the "
        "destination is the Route's host",
        "istio.yaml doc 1: spec.http[0].route[1].destination.host: not supported by Ami: "
        "destination 'api.example.com', a host outside the mesh that is not the VirtualService's "
        "own; route an ExternalService host by a VirtualService of that host"]


def test_ami_errors_name_the_istio_fields() -> None:
    """What the Route parser finds is reported where the user wrote it."""
    found = errors("""\
    apiVersion: networking.istio.io/v1
    kind: VirtualService
    metadata: {name: reviews}
    spec:
      hosts: [reviews]
      http:
      - name: Not_A_Name
        match: [{uri: {regex: "[[:digit:]]"}, headers: {x: {suffix: a}}}]
        route:
        - destination: {host: reviews, subset: V1}
          weight: 90
        - destination: {host: reviews, subset: v2}
          weight: 10
        timeout: 3
        retries: {attempts: 2, perTryTimeout: soon}
        fault: {delay: {fixedDelay: 1s, percentage: {value: 150}}}
    """)
    paths = [e.split(": ")[1] for e in found]
    assert paths == ["spec.http[0].name", "spec.http[0].match[0].uri.regex",
                     "spec.http[0].match[0].headers.x", "spec.http[0].route[0].destination.subset",
                     "spec.http[0].timeout", "spec.http[0].retries.perTryTimeout",
                     "spec.http[0].fault.delay.percentage.value"], found
    assert found[-1].endswith("must be between 0 and 100, got 150")


# -- DestinationRule ---------------------------------------------------------------------------
# samples/bookinfo/networking/destination-rule-all.yaml (reviews and ratings)
DESTINATION_RULE_ALL = """\
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata:
  name: reviews
spec:
  host: reviews
  subsets:
  - name: v1
    labels:
      version: v1
  - name: v2
    labels:
      version: v2
  - name: v3
    labels:
      version: v3
---
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata:
  name: ratings
spec:
  host: ratings
  trafficPolicy:
    tls:
      mode: ISTIO_MUTUAL
  subsets:
  - name: v1
    labels:
      version: v1
  - name: v2-mysql
    labels:
      version: v2-mysql
"""
# the circuit breaking task's httpbin rule, with a subset policy and a consistent hash
CIRCUIT_BREAKER = """\
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata:
  name: httpbin
spec:
  host: httpbin
  trafficPolicy:
    loadBalancer:
      simple: LEAST_CONN
      warmupDurationSecs: 60s
      localityLbSetting:
        failover: [{from: us-east, to: us-west}]
    connectionPool:
      tcp:
        maxConnections: 1
      http:
        http1MaxPendingRequests: 1
        maxRequestsPerConnection: 1
    outlierDetection:
      consecutive5xxErrors: 1
      interval: 1s
      baseEjectionTime: 3m
      maxEjectionPercent: 100
  subsets:
  - name: v2
    labels: {version: v2}
    trafficPolicy:
      loadBalancer:
        consistentHash:
          httpCookie: {name: user, ttl: 0s}
"""

DESTINATION_RULES = [
    (DESTINATION_RULE_ALL, [
        ("DestinationPolicy", "reviews", {"host": "reviews", "subsets": [
            {"name": "v1", "labels": {"version": "v1"}},
            {"name": "v2", "labels": {"version": "v2"}},
            {"name": "v3", "labels": {"version": "v3"}}]}),
        ("DestinationPolicy", "ratings", {"host": "ratings", "subsets": [
            {"name": "v1", "labels": {"version": "v1"}},
            {"name": "v2-mysql", "labels": {"version": "v2-mysql"}}]})]),
    (CIRCUIT_BREAKER, [("DestinationPolicy", "httpbin", {
        "host": "httpbin",
        "connectionPool": {"tcp": {"maxConnections": 1},
                           "http": {"http1MaxPendingRequests": 1,
                                    "maxRequestsPerConnection": 1}},
        "outlierDetection": {"consecutive5xxErrors": 1, "interval": "1s",
                             "baseEjectionTime": "3m", "maxEjectionPercent": 100},
        "loadBalancer": "LEAST_REQUEST", "warmupDurationSecs": "60s",
        "localityLbSetting": {"failover": [{"from": "us-east", "to": "us-west"}]},
        "subsets": [{"name": "v2", "labels": {"version": "v2"}, "loadBalancer":
                     "CONSISTENT_HASH",
                     "consistentHash": {"httpCookie": {"name": "user", "ttl": "0s"}}}]})]),
]


@pytest.mark.parametrize(("istio", "ami"), DESTINATION_RULES, ids=["bookinfo-all", "httpbin"])
def test_destination_rule_becomes_a_destination_policy(istio: str, ami: list[Any]) -> None:
    assert specs(istio) == ami


@pytest.mark.parametrize(("policy", "message"), [
    ("portLevelSettings: [{port: {number: 80}}]",
     "spec.trafficPolicy.portLevelSettings: not supported by Ami: portLevelSettings; an Ami "
     "service serves one port"),
    ("loadBalancer: {simple: PASSTHROUGH}",
     "spec.trafficPolicy.loadBalancer.simple: not supported by Ami: 'PASSTHROUGH'"),
    ("loadBalancer: {consistentHash: {useSourceIp: true, ringHash: {minimumRingSize: 9}}}",
     "spec.trafficPolicy.loadBalancer.consistentHash.ringHash: not supported by Ami"),
    ("loadBalancer: {simple: RANDOM, consistentHash: {useSourceIp: true}}",
     "spec.trafficPolicy.loadBalancer.consistentHash: give simple or consistentHash, not both"),
    ("tls: {mode: SIMPLE, credentialName: x}",
     "spec.trafficPolicy.tls.credentialName: not supported by Ami"),
    ("connectionPool: {tcp: {maxConnections: 0.5}}",
     "spec.trafficPolicy.connectionPool.tcp.maxConnections: expected an integer"),
    ("outlierDetection: {consecutiveErrors: 3}",
     "spec.trafficPolicy.outlierDetection.consecutiveErrors: Istio's deprecated spelling"),
])
def test_destination_rule_refusals(policy: str, message: str) -> None:
    found = errors("apiVersion: networking.istio.io/v1\nkind: DestinationRule\n"
                   "metadata: {name: r}\nspec:\n  host: reviews\n  trafficPolicy:\n"
                   f"    {policy}\n")
    assert any(f"istio.yaml doc 1: {message}" in e for e in found), found


def test_subset_tls_other_than_istio_mutual_is_refused() -> None:
    found = errors("""\
    apiVersion: networking.istio.io/v1
    kind: DestinationRule
    metadata: {name: r}
    spec:
      host: reviews
      subsets:
      - name: v1
        labels: {version: v1}
        trafficPolicy: {tls: {mode: SIMPLE}}
    """)
    assert found == ["istio.yaml doc 1: spec.subsets[0].trafficPolicy.tls: not supported by "
                     "Ami: tls in a subset (only ISTIO_MUTUAL, which Ami's mesh hops are "
                     "anyway); set it on the host's trafficPolicy"]


def test_cors_unmatched_preflights_forward_is_the_default() -> None:
    rule = vs_rule("""\
    - route: [{destination: {host: reviews}}]
      corsPolicy: {allowOrigins: [{exact: "https://a.example"}], unmatchedPreflights: FORWARD}
    """)
    assert rule["cors"] == {"allowOrigins": [{"exact": "https://a.example"}]}


def test_a_subsets_empty_load_balancer_is_the_default_not_the_hosts() -> None:
    """Istio replaces the host's loadBalancer by a subset's whole: `{}` or UNSPECIFIED there
    is the default balancer (LEAST_REQUEST), not the host's ROUND_ROBIN."""
    ((_, _, spec),) = specs("""\
    apiVersion: networking.istio.io/v1
    kind: DestinationRule
    metadata: {name: reviews}
    spec:
      host: reviews
      trafficPolicy: {loadBalancer: {simple: ROUND_ROBIN}}
      subsets:
      - {name: v1, labels: {version: v1}, trafficPolicy: {loadBalancer: {}}}
      - {name: v2, labels: {version: v2}, trafficPolicy: {loadBalancer: {simple: UNSPECIFIED}}}
      - {name: v3, labels: {version: v3}, trafficPolicy: {connectionPool: {}}}
    """)
    assert spec["loadBalancer"] == "ROUND_ROBIN"
    assert [s.get("loadBalancer") for s in spec["subsets"]] == [
        "LEAST_REQUEST", "LEAST_REQUEST", None]


def test_tls_insecure_skip_verify_false_is_the_default() -> None:
    """insecureSkipVerify: false is what Ami does (it verifies); true is refused."""
    doc = """\
    apiVersion: networking.istio.io/v1
    kind: DestinationRule
    metadata: {name: api}
    spec:
      host: api.example.com
      trafficPolicy: {tls: {mode: SIMPLE, insecureSkipVerify: SKIP}}
    """
    ((_, _, spec),) = specs(doc.replace("SKIP", "false"))
    assert spec == {"host": "api.example.com", "tls": {"mode": "SIMPLE"}}
    assert errors(doc.replace("SKIP", "true")) == [
        "istio.yaml doc 1: spec.trafficPolicy.tls.insecureSkipVerify: not supported by Ami: "
        "tls.insecureSkipVerify"]


# -- AuthorizationPolicy ----------------------------------------------------------------------
# The authorization tasks' policies (HTTP traffic, JWT, deny, ingress)
ALLOW_NOTHING = """\
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata:
  name: allow-nothing
  namespace: default
spec:
  {}
"""
DETAILS_VIEWER = """\
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata:
  name: "details-viewer"
  namespace: default
spec:
  selector:
    matchLabels:
      app: details
  action: ALLOW
  rules:
  - from:
    - source:
        principals: ["cluster.local/ns/default/sa/bookinfo-productpage"]
    to:
    - operation:
        methods: ["GET"]
"""
REQUIRE_JWT = """\
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata:
  name: require-jwt
  namespace: foo
spec:
  selector:
    matchLabels:
      app: httpbin
  action: ALLOW
  rules:
  - from:
    - source:
       requestPrincipals: ["testing@secure.istio.io/testing@secure.istio.io"]
    when:
    - key: request.auth.claims[groups]
      values: ["group1"]
"""
DENY_GET = """\
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata:
  name: deny-method-get
  namespace: foo
spec:
  selector:
    matchLabels:
      app: httpbin
  action: DENY
  rules:
  - to:
    - operation:
        methods: ["GET"]
    when:
    - key: request.headers[x-token]
      notValues: ["admin"]
"""
INGRESS = """\
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata:
  name: ingress-policy
  namespace: foo
spec:
  selector:
    matchLabels:
      app: gateway
  action: ALLOW
  rules:
  - from:
    - source:
        remoteIpBlocks: ["1.2.3.4", "5.6.7.0/24"]
"""
# principals of two namespaces, one namespace wildcard; when conditions on the caller
CALLERS = """\
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata:
  name: callers
spec:
  selector: {matchLabels: {app: reviews}}
  action: DENY
  rules:
  - from:
    - source:
        principals: ["cluster.local/ns/a/sa/web", "cluster.local/ns/a/sa/api",
                     "cluster.local/ns/b/sa/*", "example.org/ns/c/sa/x"]
    - source:
        notPrincipals: ["cluster.local/ns/d/sa/ops"]
        ipBlocks: [10.0.0.0/8]
    to:
    - operation: {ports: ["9080"], notPaths: [/health]}
    when:
    - key: source.namespace
      notValues: [b]
    - key: destination.port
      values: ["9080", "9443"]
"""

AUTHORIZATIONS = [
    (ALLOW_NOTHING, {}),
    (DETAILS_VIEWER, {"selector": {"service": "details"}, "action": "ALLOW", "rules": [
        {"from": [{"namespaces": ["default"], "services": ["bookinfo-productpage"]}],
         "to": [{"methods": ["GET"]}]}]}),
    (REQUIRE_JWT, {"selector": {"service": "httpbin"}, "action": "ALLOW", "rules": [
        {"from": [{"requestPrincipals": ["testing@secure.istio.io/testing@secure.istio.io"]}],
         "when": [{"claim": "groups", "values": ["group1"]}]}]}),
    (DENY_GET, {"selector": {"service": "httpbin"}, "action": "DENY", "rules": [
        {"to": [{"methods": ["GET"]}],
         "when": [{"header": "x-token", "notValues": ["admin"]}]}]}),
    (INGRESS, {"selector": {"service": "gateway"}, "action": "ALLOW", "rules": [
        {"from": [{"remoteIpBlocks": ["1.2.3.4", "5.6.7.0/24"]}]}]}),
    (CALLERS, {"selector": {"service": "reviews"}, "action": "DENY", "rules": [{
        "from": [
            # b's callers are dropped by `source.namespace notValues [b]`
            {"namespaces": ["a"], "services": ["web", "api"], "notNamespaces": ["b"]},
            {"identities": ["spiffe://example.org/ns/c/sa/x"], "notNamespaces": ["b"]},
            # not d/ops: another namespace than d, or d with another account than ops
            {"ipBlocks": ["10.0.0.0/8"], "notNamespaces": ["d", "b"]},
            {"ipBlocks": ["10.0.0.0/8"], "namespaces": ["d"], "notServices": ["ops"],
             "notNamespaces": ["b"]}],
        "to": [{"notPaths": ["/health"], "ports": [9080]}]}]}),
]


@pytest.mark.parametrize(("istio", "ami"), AUTHORIZATIONS,
                         ids=["allow-nothing", "details-viewer", "require-jwt",
                              "deny-method-get", "ingress", "callers"])
def test_authorization_policy_translates(istio: str, ami: dict[str, Any]) -> None:
    ((kind, _, spec),) = specs(istio)
    assert (kind, spec) == ("AuthorizationPolicy", ami)


def test_a_rule_no_caller_can_match_is_left_out() -> None:
    """principals of namespace a, a when condition asking for namespace b: Istio's rule
    matches no one; Ami's policy has no such rule (an ALLOW policy: allows nothing)."""
    ((_, _, spec),) = specs("""\
    apiVersion: security.istio.io/v1
    kind: AuthorizationPolicy
    metadata: {name: none}
    spec:
      rules:
      - from: [{source: {principals: [cluster.local/ns/a/sa/web]}}]
        when: [{key: source.namespace, values: [b]}]
    """)
    assert spec == {"rules": []}


def test_an_audit_policy_is_ami_audit_policy() -> None:
    """Istio's AUDIT marks what its rules match and decides nothing: Ami's AUDIT is that
    (the access log line), its rules translated as a DENY policy's are."""
    audit = DENY_GET.replace("action: DENY", "action: AUDIT").replace(
        "name: deny-method-get", "name: audit-get")
    ((kind, name, spec),) = specs(audit)
    ((_, _, deny),) = specs(DENY_GET)
    assert (kind, name, spec["action"]) == ("AuthorizationPolicy", "audit-get", "AUDIT")
    assert spec["rules"] == deny["rules"]


def test_dry_run_annotation_and_labels_are_kept() -> None:
    (policy,) = load(DENY_GET.replace("  namespace: foo\n", "  namespace: foo\n  annotations:"
                                      "\n    istio.io/dry-run: \"true\"\n"))
    assert is_dry_run(policy.annotations) and policy.namespace == "foo"


@pytest.mark.parametrize(("spec", "message"), [
    ("selector: {matchLabels: {app: reviews, version: v1}}",
     "spec.selector.matchLabels.version: not supported by Ami: Ami's AuthorizationPolicy "
     "selects a whole service"),
    ("targetRefs: [{kind: Gateway, name: gw}]", "spec.targetRefs: not supported by Ami"),
    ("rules: [{from: [{source: {principals: ['*']}}]}]",
     "spec.rules[0].from[0].source.principals: not supported by Ami: principal pattern '*'"),
    ("rules: [{from: [{source: {notPrincipals: ['cluster.local/ns/a/sa/x*']}}]}]",
     "spec.rules[0].from[0].source.notPrincipals: not supported by Ami"),
    ("rules: [{when: [{key: request.auth.audiences, values: [a]}]}]",
     "spec.rules[0].when[0].key: not supported by Ami: condition key 'request.auth.audiences'"),
    ("rules: [{when: [{key: 'request.headers[x]', values: ['ab*']}]}]",
     "spec.rules[0].when[0].values: not supported by Ami: prefix, suffix or presence"),
    ("rules: [{from: [{source: {ipBlocks: [nope]}}]}]",
     "spec.rules[0].from[0].source.ipBlocks[0]: expected an IP address or a CIDR block"),
    ("rules: [{to: [{operation: {ports: ['99999']}}]}]",
     "spec.rules[0].to[0].operation.ports[0]: must be between 1 and 65535"),
    ("rules: [{when: [{key: 'request.headers[x y]', values: [a]}]}]",
     "spec.rules[0].when[0].key: invalid value 'x y', expected an HTTP header name"),
    ("selector: {matchLabels: {app: Not_A_Service}}",
     "spec.selector.matchLabels.app: invalid value 'Not_A_Service', expected a DNS-1123 label"),
    ("rules: [{from: []}]", "spec.rules[0].from: must have at least one item"),
    ("rules: [{to: [{operation: {paths: ['/api/{*}/info']}}]}]",
     "spec.rules[0].to[0].operation.paths: not supported by Ami: Istio's path template "
     "'/api/{*}/info'; Ami matches a path exactly, by prefix (`/api/*`) or any (`*`): list the "
     "paths"),
    ("rules: [{from: [{source: {namespaces: [prod-*]}}]}]",
     "spec.rules[0].from[0].source.namespaces: not supported by Ami: Istio's namespace "
     "pattern 'prod-*'; Ami compares namespaces exactly: list them"),
    ("rules: [{when: [{key: source.namespace, notValues: ['*']}]}]",
     "spec.rules[0].when[0].notValues: not supported by Ami: Istio's namespace pattern '*'"),
    ("rules: [{to: [{operation: {notPaths: [/a, '*/info']}}]}]",
     "spec.rules[0].to[0].operation.notPaths: not supported by Ami: Istio's suffix match "
     "'*/info'; Ami matches a path exactly, by prefix (`/api/*`) or any (`*`): list the paths"),
    ("rules: [{from: [{source: {ipBlocks: [10.0.0.0/8]}}], "
     "when: [{key: source.ip, values: [10.1.0.0/16]}]}]",
     "spec.rules[0].when: not supported by Ami: ipBlocks given twice for one caller"),
])
def test_authorization_policy_refusals(spec: str, message: str) -> None:
    found = errors("apiVersion: security.istio.io/v1beta1\nkind: AuthorizationPolicy\n"
                   f"metadata: {{name: p}}\nspec:\n  {spec}\n")
    assert any(f"istio.yaml doc 1: {message}" in e for e in found), found


# -- PeerAuthentication, RequestAuthentication ---------------------------------------------------
def test_peer_authentication_is_taken_as_written() -> None:
    """The mTLS migration task's policies: namespace-wide STRICT, and a workload's port."""
    assert specs("""\
    apiVersion: security.istio.io/v1
    kind: PeerAuthentication
    metadata: {name: default, namespace: foo}
    spec:
      mtls: {mode: STRICT}
    ---
    apiVersion: security.istio.io/v1beta1
    kind: PeerAuthentication
    metadata: {name: httpbin, namespace: foo}
    spec:
      selector: {matchLabels: {app: httpbin}}
      mtls: {mode: STRICT}
      portLevelMtls:
        8080: {mode: DISABLE}
    """) == [("PeerAuthentication", "default", {"mtls": {"mode": "STRICT"}}),
             ("PeerAuthentication", "httpbin", {"selector": {"matchLabels": {"app": "httpbin"}},
                                                "mtls": {"mode": "STRICT"},
                                                "portLevelMtls": {8080: {"mode": "DISABLE"}}})]


def test_request_authentication_selects_the_app_as_service() -> None:
    """The JWT task's jwt-example."""
    assert specs("""\
    apiVersion: security.istio.io/v1
    kind: RequestAuthentication
    metadata:
      name: "jwt-example"
      namespace: foo
    spec:
      selector:
        matchLabels:
          app: httpbin
      jwtRules:
      - issuer: "testing@secure.istio.io"
        jwksUri: "https://raw.githubusercontent.com/istio/istio/release-1.27/security/tools/jwt/samples/jwks.json"
        forwardOriginalToken: true
    """) == [("RequestAuthentication", "jwt-example", {
        "selector": {"service": "httpbin"},
        "jwtRules": [{"issuer": "testing@secure.istio.io",
                      "jwksUri": "https://raw.githubusercontent.com/istio/istio/release-1.27/"
                                 "security/tools/jwt/samples/jwks.json",
                      "forwardOriginalToken": True}]})]


@pytest.mark.parametrize(("doc", "message"), [
    ("kind: PeerAuthentication\nmetadata: {name: default, namespace: istio-system}\n"
     "spec: {mtls: {mode: STRICT}}",
     "metadata.namespace: a PeerAuthentication in istio-system, Istio's root namespace, is "
     "mesh-wide in Istio; Ami has no root namespace: the mesh-wide mode is MeshConfig's "
     "spec.mtls.mode"),
    ("kind: PeerAuthentication\nmetadata: {name: p}\nspec: {mtls: {mode: SOMETIMES}}",
     "spec.mtls.mode: unknown value 'SOMETIMES'"),
    ("kind: RequestAuthentication\nmetadata: {name: r}\n"
     "spec: {jwtRules: [{issuer: i, jwksUri: 'https://a/k', fromCookies: [session]}]}",
     "spec.jwtRules[0].fromCookies: not supported by Ami: tokens in cookies"),
    ("kind: RequestAuthentication\nmetadata: {name: r}\n"
     "spec: {jwtRules: [{issuer: i}]}",
     "spec.jwtRules[0]: set jwks (an inline JWK Set) or jwksUri"),
])
def test_security_refusals(doc: str, message: str) -> None:
    found = errors(f"apiVersion: security.istio.io/v1\n{doc}\n")
    assert any(f"istio.yaml doc 1: {message}" in e for e in found), found


# -- documents ---------------------------------------------------------------------------------
def test_other_istio_kinds_and_versions_are_refused_with_what_to_write() -> None:
    found = errors("""\
    apiVersion: networking.istio.io/v1alpha3
    kind: EnvoyFilter
    metadata: {name: lua}
    spec: {configPatches: []}
    ---
    apiVersion: security.istio.io/v1alpha1
    kind: PeerAuthentication
    metadata: {name: p}
    spec: {}
    """)
    assert found[0].startswith(
        "istio.yaml doc 1: kind: Istio's 'EnvoyFilter' of networking.istio.io is not "
        "translated by Ami: Ami's proxies are no Envoy; what they do is set by Ami's kinds; "
        "Ami translates VirtualService (networking.istio.io), DestinationRule")
    assert found[1] == ("istio.yaml doc 2: apiVersion: unsupported 'security.istio.io/v1alpha1' "
                        "for kind PeerAuthentication, expected security.istio.io/v1 or "
                        "security.istio.io/v1beta1")


def test_translations_are_checked_together_with_ami_documents() -> None:
    """The cross-document checks see the translation, and report on the Istio fields: the
    90/10 split names subsets no DestinationRule defines; with Istio's rule, all is well."""
    resources = load(REVIEWS_90_10)
    issues = [str(i) for i in validate_set(resources)]
    assert issues == ["istio.yaml doc 1: spec.http[0].route[0].destination.subset: unknown "
                      "subset 'v1' for host reviews (known: none, no DestinationPolicy defines "
                      "any)",
                      "istio.yaml doc 1: spec.http[0].route[1].destination.subset: unknown "
                      "subset 'v2' for host reviews (known: none, no DestinationPolicy defines "
                      "any)"]
    with_rule = load(REVIEWS_90_10 + "---\n" + DESTINATION_RULE_ALL)
    assert validate_set(with_rule) == []


def test_a_list_of_istio_documents() -> None:
    """`kind: List` (kubectl get -o yaml) holding Istio items."""
    items = [yaml.safe_load(REVIEWS_90_10), yaml.safe_load(DESTINATION_RULE_ALL.split("---")[0])]
    text = yaml.safe_dump({"apiVersion": "v1", "kind": "List", "items": items})
    assert [(r.kind, r.origin) for r in load_documents(text, "list.yaml", lists=True)] == [
        ("Route", "virtualservice.networking.istio.io/reviews"),
        ("DestinationPolicy", "destinationrule.networking.istio.io/reviews")]


async def test_the_directory_store_loads_istio_files(tmp_path: Path) -> None:
    """A VirtualService and a DestinationRule dropped into the config dir go live as a
    Route and a DestinationPolicy; a bad edit is refused on the Istio field."""
    store = DirStore(tmp_path / "store")
    await store.start()
    try:
        async with store.watch() as watch:
            (store.root / "bookinfo.yaml").write_text(
                REVIEWS_90_10 + "---\n" + DESTINATION_RULE_ALL)
            events = [await next_event(watch) for _ in range(3)]
        assert sorted(e.object.key for e in events if e.object) == [
            ("DestinationPolicy", "default", "ratings"),
            ("DestinationPolicy", "default", "reviews"), ("Route", "default", "reviews")]
        route = await store.get("Route", "default", "reviews")
        assert route is not None and route.source == "bookinfo.yaml"
        bad = tmp_path / "bad.yaml"
        bad.write_text(REVIEWS_90_10.replace("weight: 10", "weight: 20"))
        with pytest.raises(ValidationError) as err:
            load_documents(bad.read_text(), "bad.yaml")
        assert str(err.value) == (
            "bad.yaml doc 1: spec.http[0].route: weights 90, 20 split traffic in Istio by "
            "weight / 110, which Ami's whole percentages cannot write exactly: give weights "
            "summing to 100")
    finally:
        await store.close()


def test_two_spellings_of_one_service_make_one_route() -> None:
    """Istio reads `reviews` and its full name as one host: one Route per service, of its
    first spelling (Ami refuses two Routes of one service)."""
    routes = load("""\
    apiVersion: networking.istio.io/v1
    kind: VirtualService
    metadata: {name: shop}
    spec:
      hosts: [reviews, reviews.default.svc.cluster.local, ratings.default]
      http:
      - route: [{destination: {host: reviews}}]
    """)
    assert [(r.name, r.to_dict()["spec"]) for r in routes] == [
        ("shop-reviews", {"host": "reviews", "rules": [{"backends": [{}]}]}),
        ("shop-ratings-default", {"host": "ratings.default",
                                  "rules": [{"backends": [{"service": "reviews"}]}]})]
    assert validate_set(routes) == []


def test_without_headers_of_the_empty_value_keep_out_requests_without_the_header() -> None:
    """Istio (Envoy's treat_missing_header_as_empty) reads a missing header as empty in
    withoutHeaders: a matcher of the empty value keeps out requests without the header, which
    Ami's block says with a presence match beside it."""
    rule = vs_rule("""\
    - match: [{withoutHeaders: {x-a: {exact: ""}, x-b: {regex: "[0-9]*"}, x-c: {exact: v}}}]
      route: [{destination: {host: reviews}}]
    """)
    assert rule["matches"] == [{
        "withoutHeaders": {"x-a": {"exact": ""}, "x-b": {"regex": "[0-9]*"},
                           "x-c": {"exact": "v"}},
        "headers": {"x-a": {"present": True}, "x-b": {"present": True}}}]


def test_an_allow_condition_of_not_values_alone_is_refused() -> None:
    """Istio's ALLOW `notValues: [mallory]` admits a request without the header; Ami's
    condition admits none it cannot see: refused in ALLOW, taken as written in DENY (the
    two agree there) and with values beside it."""
    policy = ("apiVersion: security.istio.io/v1\nkind: AuthorizationPolicy\n"
              "metadata: {name: p}\nspec:\n  ACTION\n  rules:\n  - when:\n"
              "    - {key: 'request.headers[x-user]', WHEN}\n"
              "    - {key: 'request.auth.claims[group]', notValues: [guests]}\n")
    found = errors(policy.replace("ACTION", "action: ALLOW").replace("WHEN",
                                                                     "notValues: [mallory]"))
    assert found == [
        "istio.yaml doc 1: spec.rules[0].when[0].notValues: not supported by Ami in an ALLOW "
        "policy: notValues without values; Istio's admits a request without the header, Ami's "
        "admits none it knows nothing of: give the values to allow, or deny the notValues as "
        "values of a DENY policy",
        "istio.yaml doc 1: spec.rules[0].when[1].notValues: not supported by Ami in an ALLOW "
        "policy: notValues without values; Istio's admits a request without the claim (or "
        "token), Ami's admits none it knows nothing of: give the values to allow, or deny the "
        "notValues as values of a DENY policy"]
    no_action = policy.replace("ACTION", "selector: {matchLabels: {app: reviews}}")
    assert len(errors(no_action.replace("WHEN", "notValues: [m]"))) == 2  # (ALLOW)
    ((_, _, deny),) = specs(policy.replace("ACTION", "action: DENY")
                            .replace("WHEN", "notValues: [mallory]"))
    assert deny["rules"] == [{"when": [{"header": "x-user", "notValues": ["mallory"]},
                                       {"claim": "group", "notValues": ["guests"]}]}]
    both = policy.replace("ACTION", "action: ALLOW").replace(
        "WHEN", "values: [alice, mallory], notValues: [mallory]").replace(
        "notValues: [guests]", "values: [staff]")
    ((_, _, allow),) = specs(both)
    assert allow["rules"][0]["when"][0] == {"header": "x-user", "values": ["alice", "mallory"],
                                            "notValues": ["mallory"]}
