"""Tests that the published JSON Schema agrees with the parser (meshctl.api.jsonschema)."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import jsonschema
import pytest
import yaml

from meshctl.api.errors import ValidationError
from meshctl.api.jsonschema import all_schemas, schema_for
from meshctl.api.resources import parse_document

DOCS = Path(__file__).resolve().parent.parent / "docs" / "resources.md"


def doc_examples() -> list[Any]:
    """Every YAML document in docs/resources.md that is a resource (has an apiVersion) of a
    kind with a schema: not Istio's own YAML, which is translated into those kinds."""
    blocks = re.findall(r"```yaml\n(.*?)```", DOCS.read_text(), flags=re.S)
    return [d for block in blocks for d in yaml.safe_load_all(block)
            if isinstance(d, dict) and "apiVersion" in d
            and not str(d["apiVersion"]).split("/")[0].endswith(".istio.io")]


def schema_accepts(document: dict[str, Any]) -> bool:
    """Whether the JSON Schema of the document's kind accepts it."""
    validator = jsonschema.Draft202012Validator(schema_for(document["kind"]))
    return bool(validator.is_valid(document))


def parser_accepts(document: dict[str, Any]) -> bool:
    """Whether parse_document accepts the document."""
    try:
        parse_document(document)
    except ValidationError:
        return False
    return True


def test_schemas_are_valid_draft_2020_12() -> None:
    """Every kind's schema is itself a valid draft 2020-12 schema."""
    schemas = all_schemas()
    assert set(schemas) == {"Route", "DestinationPolicy", "AuthorizationPolicy",
                            "RequestAuthentication", "PeerAuthentication", "MeshConfig",
                            "Gateway", "ExternalService", "Telemetry",
                            "Sidecar", "Canary", "HTTPRoute", "GRPCRoute"}
    for schema in schemas.values():
        jsonschema.Draft202012Validator.check_schema(schema)


def test_docs_cover_every_kind() -> None:
    """docs/resources.md has at least one example of every kind."""
    assert {d["kind"] for d in doc_examples()} == set(all_schemas())


@pytest.mark.parametrize("document", doc_examples(), ids=lambda d: d["metadata"]["name"])
def test_doc_examples_pass_parser_and_schema(document: dict[str, Any]) -> None:
    """Each documented example is accepted by both the parser and the JSON Schema."""
    parse_document(document)
    jsonschema.validate(document, schema_for(document["kind"]),
                        cls=jsonschema.Draft202012Validator)


ROUTE = {"apiVersion": "ami.mesh/v1alpha1", "kind": "Route", "metadata": {"name": "r"},
         "spec": {"host": "reviews", "rules": [{"backends": [{"subset": "v1"}]}]}}


def with_rule(**rule: Any) -> dict[str, Any]:
    """The ROUTE document with its only rule extended by ``rule``."""
    return {**ROUTE, "spec": {"host": "reviews", "rules": [
        {"backends": [{"subset": "v1"}], **rule}]}}


@pytest.mark.parametrize("document", [
    {**ROUTE, "apiVersion": "v1"},
    {**ROUTE, "metadata": {"name": "Bad_Name"}},
    {**ROUTE, "metadata": {"name": "r", "labels": {"version": 1}}},
    {**ROUTE, "spec": {"host": "reviews", "rules": []}},
    {**ROUTE, "extra": 1},
    with_rule(timeout="0s"),
    with_rule(timeout="3"),
    with_rule(weigth=1),
    with_rule(backends=[{"subset": "v1", "weight": 50}, {"subset": "v2"}]),
    with_rule(matches=[{"method": "GET", "methods": ["GET"]}]),
    with_rule(matches=[{"path": {"prefix": "api"}}]),
    with_rule(matches=[{"headers": {"a": {"exact": "x", "prefix": "y"}}}]),
    with_rule(matches=[{"headers": {"a b": {"exact": "x"}}}]),
    with_rule(retries={"attempts": 1, "retriableStatusCodes": [503]}),
    with_rule(retries={"attempts": 1, "retryOn": ["retriable-status-codes"]}),
    with_rule(fault={}),
    with_rule(mirror={"percent": 101}),
    with_rule(headers={"request": {"set": {"x": "a\nb"}}}),
    with_rule(rewrite={}),
    with_rule(rateLimit={"burst": 3}),
    with_rule(rateLimit={"requestsPerSecond": 0}),
    with_rule(rateLimit={"requestsPerSecond": 1, "burst": 0}),
    with_rule(rateLimit={"requestsPerSecond": 1, "perSource": "yes"}),
    {**ROUTE, "spec": {"host": "reviews", "rules": [
        {"redirect": {"scheme": "https"}, "rateLimit": {"requestsPerSecond": 1}}]}},
    with_rule(cors={}),
    with_rule(cors={"allowOrigins": []}),
    with_rule(cors={"allowOrigins": [{"present": True}]}),
    with_rule(cors={"allowOrigins": [{"exact": "*"}], "maxAge": "0s"}),
    with_rule(matches=[{"sourceNamespace": "Not_A_Namespace"}]),
    with_rule(matches=[{"sourceLabels": {"app": 7}}]),
    with_rule(rewrite={"uri": "no-slash"}),
    with_rule(rewrite={"uri": "/\u65e5\u672c"}),  # not ASCII: percent-encode it
    with_rule(rewrite={"uri": "/a\tb"}),
    with_rule(rewrite={"authority": "api.internal:99999"}),
    {**ROUTE, "spec": {"host": "reviews", "rules": [
        {"redirect": {"uri": "/x\u0000y"}}]}},  # a NUL in the Location header
    {**ROUTE, "spec": {"host": "reviews", "rules": [
        {"redirect": {"uri": "/caf\u00e9"}}]}},
    {**ROUTE, "spec": {"host": "reviews", "rules": [
        {"redirect": {"authority": "a.example:65536"}}]}},
    with_rule(redirect={"scheme": "https"}),  # a redirect rule has no backends
    {**ROUTE, "spec": {"host": "reviews", "rules": [{"redirect": {}}]}},
    {**ROUTE, "spec": {"host": "reviews", "rules": [
        {"redirect": {"uri": "/x", "redirectCode": 200}}]}},
    {**ROUTE, "spec": {"host": "reviews", "rules": [
        {"redirect": {"scheme": "ftp"}}]}},
    {**ROUTE, "spec": {"host": "reviews", "rules": [
        {"redirect": {"port": 0}}]}},
    {**ROUTE, "spec": {"host": "reviews", "rules": [
        {"redirect": {"uri": "/x"}, "timeout": "1s"}]}},
    {**ROUTE, "spec": {"host": "reviews", "rules": [{"matches": [{"method": "GET"}]}]}},
    {**ROUTE, "kind": "MeshConfig", "metadata": {"name": "mesh"}, "spec": {}},
    {**ROUTE, "kind": "MeshConfig", "metadata": {"name": "default"},
     "spec": {"tracing": {"sampling": 1.5}}},
    {**ROUTE, "kind": "Gateway", "spec": {"listen": "0.0.0.0:70000", "rules": [
        {"destination": "web"}]}},
    {**ROUTE, "kind": "Gateway", "spec": {"listen": "0.0.0.0:8443"}},  # no rules, no passthrough
    # a rule with a destination and a Route rule's field; an inline backend without service
    {**ROUTE, "kind": "Gateway", "spec": {"rules": [{"destination": "web", "timeout": "1s"}]}},
    {**ROUTE, "kind": "Gateway", "spec": {"rules": [{"backends": [{"subset": "v1"}]}]}},
    {**ROUTE, "kind": "Gateway", "spec": {"rules": [{"timeout": "1s"}]}},  # forwards nowhere
    {**ROUTE, "kind": "Gateway", "spec": {"rules": [
        {"redirect": {"uri": "/x"}, "backends": [{"service": "web"}]}]}},
    {**ROUTE, "kind": "Gateway", "spec": {"rules": [{"matches": [], "destination": "web"}]}},
    # bound to another Gateway: rules only
    {**ROUTE, "kind": "Gateway", "spec": {"gateway": "gw", "hosts": ["a.example.com"],
                                          "rules": [{"destination": "web"}]}},
    {**ROUTE, "kind": "Gateway", "spec": {"gateway": "gw"}},
    {**ROUTE, "kind": "Gateway", "spec": {"hosts": []}},
    {**ROUTE, "kind": "Gateway", "spec": {"listen": "0.0.0.0:8443", "passthrough": []}},
    {**ROUTE, "kind": "Gateway", "spec": {"listen": "0.0.0.0:8443", "passthrough": [
        {"sniHosts": [], "destination": "db"}]}},
    {**ROUTE, "kind": "Gateway", "spec": {"listen": "0.0.0.0:8443", "passthrough": [
        {"sniHosts": ["db.*.example.com"], "destination": "db"}]}},
    {**ROUTE, "kind": "Gateway", "spec": {"listen": "0.0.0.0:8443", "passthrough": [
        {"sniHosts": ["db.example.com"]}]}},
    {**ROUTE, "kind": "Gateway", "spec": {"listen": "0.0.0.0:8443", "passthrough": [
        {"sniHosts": ["db.example.com"], "destination": "db", "port": 443}]}},
    {**ROUTE, "kind": "AuthorizationPolicy", "spec": {"rules": [{"from": [{}]}]}},
    {**ROUTE, "kind": "PeerAuthentication", "spec": {"mtls": {"mode": "OFF"}}},
    {**ROUTE, "kind": "PeerAuthentication", "spec": {"mtls": {"mode": "strict"}}},
    {**ROUTE, "kind": "PeerAuthentication", "spec": {"selector": {}}},
    {**ROUTE, "kind": "PeerAuthentication", "spec": {"selector": {"service": "Reviews"}}},
    {**ROUTE, "kind": "PeerAuthentication", "spec": {"selector": {
        "service": "a", "matchLabels": {"app": "a"}}}},
    {**ROUTE, "kind": "PeerAuthentication", "spec": {"portLevelMtls": {
        "9080": {"mode": "DISABLE"}}}},  # Istio's rule: needs a selector
    {**ROUTE, "kind": "PeerAuthentication", "spec": {"selector": {"service": "a"},
                                                     "portLevelMtls": {}}},
    {**ROUTE, "kind": "PeerAuthentication", "spec": {"selector": {"service": "a"},
                                                     "portLevelMtls": {"http": {}}}},
    {**ROUTE, "kind": "AuthorizationPolicy", "spec": {"rules": [{"to": [{"paths": ["a"]}]}]}},
    {**ROUTE, "kind": "DestinationPolicy", "spec": {"host": "r", "loadBalancer": "FAST"}},
    {**ROUTE, "kind": "DestinationPolicy", "spec": {"host": "r", "connectionPool": {
        "idleTimeout": "0s"}}},
    {**ROUTE, "kind": "DestinationPolicy", "spec": {"host": "r", "connectionPool": {
        "tcpIdleTimeout": "-1s"}}},
    {**ROUTE, "kind": "DestinationPolicy", "spec": {"host": "r",
                                                    "loadBalancer": "CONSISTENT_HASH"}},
    {**ROUTE, "kind": "DestinationPolicy", "spec": {"host": "r",
                                                    "consistentHash": {"header": "x"}}},
    {**ROUTE, "kind": "DestinationPolicy", "spec": {
        "host": "r", "loadBalancer": "CONSISTENT_HASH",
        "consistentHash": {"header": "x", "sourceIp": True}}},
    {**ROUTE, "kind": "DestinationPolicy", "spec": {
        "host": "r", "loadBalancer": "CONSISTENT_HASH", "consistentHash": {"sourceIp": False}}},
    *({**ROUTE, "kind": "DestinationPolicy", "spec": {"host": "r", "subsets": [
        {"name": "v2", "labels": {"version": "v2"}, **own}]}} for own in (
        {"rateLimit": {"requestsPerSecond": 1}},  # enforced by the destination: not per subset
        {"tls": {"mode": "SIMPLE"}},
        {"trafficPolicy": {"loadBalancer": "RANDOM"}},  # Istio's nesting: the fields are flat
        {"consistentHash": {"header": "x"}},  # without its own loadBalancer CONSISTENT_HASH
        {"loadBalancer": "CONSISTENT_HASH"},
        {"connectionPool": {"maxConnections": 0}},
        {"outlierDetection": {"maxEjectionPercent": 101}},
        {"localityLbSetting": {}})),  # the host's orders every subset: not per subset
    *({**ROUTE, "kind": "DestinationPolicy", "spec": {
        "host": "r", "outlierDetection": {}, "localityLbSetting": setting}} for setting in (
        {"failover": [{"from": "r1/a", "to": "r2"}]},  # region to region
        {"failover": [{"from": "r1"}]},
        {"failover": []},
        {"distribute": [{"from": "r1/*/s", "to": {"*": 100}}]},  # '*' last only
        {"distribute": [{"from": "r1", "to": {"r2": 0, "r1": 100}}]},
        {"distribute": [{"from": "r1", "to": {}}]},
        {"enabled": "yes"},
        {"failoverPriority": ["a=b=c"]})),
    {**ROUTE, "kind": "Route", "spec": {"host": "API.example.com", "rules": [{"backends": [{}]}]}},
    {**ROUTE, "kind": "ExternalService", "spec": {"hosts": [], "ports": [{"number": 80,
                                                                          "protocol": "HTTP"}]}},
    {**ROUTE, "kind": "ExternalService", "spec": {"hosts": ["a.example"], "ports": []}},
    {**ROUTE, "kind": "ExternalService", "spec": {"hosts": ["a.example"],
                                                  "ports": [{"number": 80}]}},
    {**ROUTE, "kind": "ExternalService", "spec": {
        "hosts": ["a.example"], "ports": [{"number": 0, "protocol": "HTTP"}]}},
    {**ROUTE, "kind": "ExternalService", "spec": {
        "hosts": ["a.example"], "ports": [{"number": 80, "protocol": "UDP"}]}},
    {**ROUTE, "kind": "ExternalService", "spec": {
        "hosts": ["a.example"], "ports": [{"number": 80, "protocol": "grpc"}]}},
    {**ROUTE, "kind": "ExternalService", "spec": {
        "hosts": ["*"], "ports": [{"number": 80, "protocol": "HTTP"}]}},
    {**ROUTE, "kind": "ExternalService", "spec": {
        "hosts": ["a.example", "a.example"], "ports": [{"number": 80, "protocol": "HTTP"}]}},
    {**ROUTE, "kind": "ExternalService", "spec": {
        "hosts": ["a.example"], "ports": [{"number": 80, "protocol": "HTTP"}],
        "endpoints": [{"address": "not an address"}]}},
    {**ROUTE, "kind": "Telemetry", "spec": {"selector": {}}},
    {**ROUTE, "kind": "Telemetry", "spec": {"selector": {"matchLabels": {}}}},
    {**ROUTE, "kind": "Telemetry", "spec": {"selector": {"service": "reviews"}}},
    {**ROUTE, "kind": "Telemetry", "spec": {"accessLogging": []}},
    {**ROUTE, "kind": "Telemetry", "spec": {"accessLogging": [{}, {"disabled": True}]}},
    {**ROUTE, "kind": "Telemetry", "spec": {"accessLogging": [{"filter": {}}]}},
    {**ROUTE, "kind": "Telemetry", "spec": {"accessLogging": [{"providers": [{"name": "x"}]}]}},
    {**ROUTE, "kind": "Telemetry", "spec": {"tracing": [{"randomSamplingPercentage": 101}]}},
    {**ROUTE, "kind": "Telemetry", "spec": {"tracing": [{"disableSpanReporting": "yes"}]}},
    {**ROUTE, "kind": "Sidecar", "spec": {}},
    {**ROUTE, "kind": "Sidecar", "spec": {"egress": []}},
    {**ROUTE, "kind": "Sidecar", "spec": {"egress": [{"hosts": []}]}},
    *({**ROUTE, "kind": "Sidecar", "spec": {"egress": [{"hosts": [host]}]}}
      for host in ("b", "./", "B/*", "~/api", "a/b/c", "./api_x", "**/*")),
    {**ROUTE, "kind": "Sidecar", "spec": {"workloadSelector": {"labels": {}},
                                          "egress": [{"hosts": ["./*"]}]}},
    {**ROUTE, "kind": "Sidecar", "spec": {"outboundTrafficPolicy": {}}},
    {**ROUTE, "kind": "Canary", "spec": {"service": "reviews", "stable": "v1"}},
    {**ROUTE, "kind": "Canary", "spec": {"service": "reviews", "stable": "v1", "canary": "v3",
                                         "stepWeight": 0}},
    {**ROUTE, "kind": "Canary", "spec": {"service": "reviews", "stable": "v1", "canary": "v3",
                                         "interval": "0s"}},
    {**ROUTE, "kind": "Canary", "spec": {"service": "reviews", "stable": "v1", "canary": "v3",
                                         "thresholds": {"minSuccessRate": 101}}},
    {**ROUTE, "kind": "Canary", "spec": {"service": "reviews", "stable": "v1", "canary": "v3",
                                         "thresholds": {"minRequests": 0}}},
    {**ROUTE, "kind": "Canary", "spec": {"service": "Reviews", "stable": "v1", "canary": "v3"}},
    *({**ROUTE, "kind": "Canary", "spec": {"service": "reviews", "stable": "v1", "canary": "v3",
                                           "webhooks": [hook]}}
      for hook in ({"name": "a", "type": "rollout", "url": "ftp://x/"},
                   {"name": "a", "type": "pre-deploy", "url": "http://x/"},
                   {"name": "a", "type": "event", "url": "http://x/", "metadata": {"n": 1}},
                   {"name": "a", "type": "event", "url": "http://x/", "timeout": "0s"},
                   {"name": "a", "type": "event"},
                   {"name": "a", "type": "event", "url": "http://x/", "retries": 3})),
    # istio.io/dry-run: "true" or "false", on an AuthorizationPolicy, not a CUSTOM one
    *({**ROUTE, "kind": "AuthorizationPolicy",
       "metadata": {"name": "p", "annotations": {"istio.io/dry-run": value}},
       "spec": {"action": "DENY", "rules": [{}]}} for value in ("yes", "on", "", " true")),
    {**ROUTE, "metadata": {"name": "r", "annotations": {"istio.io/dry-run": "true"}}},
    *({**ROUTE, "kind": "AuthorizationPolicy",
       "metadata": {"name": "p", "annotations": {"istio.io/dry-run": value}},
       "spec": {"action": "CUSTOM", "provider": {"name": "ext"}, "rules": [{}]}}
      for value in ("true", "True", "1")),
    # an extension provider has one kind; a gRPC one takes no HTTP provider's fields
    *({**ROUTE, "kind": "MeshConfig", "metadata": {"name": "default"},
       "spec": {"extensionProviders": [provider]}} for provider in (
           {"name": "x"},
           {"name": "x", "envoyExtAuthzHttp": {"service": "a", "port": 1},
            "envoyExtAuthzGrpc": {"service": "a", "port": 1}},
           {"name": "x", "envoyExtAuthzGrpc": {"service": "a", "port": 1,
                                               "pathPrefix": "/check"}},
           {"name": "x", "envoyExtAuthzGrpc": {"service": "a"}},
           {"name": "x", "envoyExtAuthzGrpc": {"service": "a", "port": 1,
                                               "includeRequestBodyInCheck": {}}})),
])
def test_invalid_documents_are_rejected_by_both(document: dict[str, Any]) -> None:
    """Mistakes that JSON Schema can express are rejected by the parser and the schema alike."""
    assert not parser_accepts(document)
    assert not schema_accepts(document)


@pytest.mark.parametrize("document", [
    ROUTE,
    with_rule(matches=[{"headers": {"x": {"exact": ""}}, "query": {"q": {"present": False}}}]),
    with_rule(retries={"attempts": 0}, timeout="1m30s"),
    {"apiVersion": "ami.mesh/v1alpha1", "kind": "MeshConfig", "metadata": {"name": "default"}},
    {**ROUTE, "kind": "AuthorizationPolicy", "spec": {}},
    {**ROUTE, "kind": "AuthorizationPolicy",
     "metadata": {"name": "p", "annotations": {"istio.io/dry-run": "true", "team": "x"}},
     "spec": {"action": "DENY", "rules": [{}]}},
    {**ROUTE, "kind": "AuthorizationPolicy",
     "metadata": {"name": "p", "annotations": {"istio.io/dry-run": "false"}},
     "spec": {"action": "CUSTOM", "provider": {"name": "ext"}, "rules": [{}]}},
    {**ROUTE, "metadata": {"name": "r", "annotations": {"example.com/owner": "team-a"}}},
    # Istio reads the value with Go's strconv.ParseBool: its spellings apply as written
    *({**ROUTE, "kind": "AuthorizationPolicy",
       "metadata": {"name": "p", "annotations": {"istio.io/dry-run": value}},
       "spec": {"action": "DENY", "rules": [{}]}} for value in ("True", "TRUE", "1", "t", "0",
                                                                 "False", "f")),
    {**ROUTE, "kind": "PeerAuthentication", "spec": {}},  # UNSET, namespace-wide: a no-op
    {**ROUTE, "kind": "PeerAuthentication", "spec": {"mtls": {}}},
    {**ROUTE, "kind": "PeerAuthentication",
     "spec": {"selector": {"service": "legacy"}, "mtls": {"mode": "UNSET"}}},
    {**ROUTE, "kind": "PeerAuthentication",  # as Istio users write it
     "spec": {"selector": {"matchLabels": {"app": "reviews", "version": "v3"}},
              "mtls": {"mode": "STRICT"}, "portLevelMtls": {"9080": {"mode": "DISABLE"}}}},
    {**ROUTE, "kind": "Gateway", "spec": {"listen": "[::1]:0", "rules": [{"destination": "w"}]}},
    {**ROUTE, "kind": "Gateway", "spec": {"hosts": ["*"]}},  # an Istio Gateway's
    {**ROUTE, "kind": "Gateway", "spec": {"gateway": "gw", "rules": [
        {"hosts": ["*"], "match": [{"path": {"prefix": "/a"}}], "name": "a",
         "backends": [{"service": "web", "subset": "v1", "weight": 90},
                      {"service": "web", "subset": "v2", "weight": 10}],
         "retries": {"attempts": 2}, "mirror": {"service": "shadow"}},
        {"redirect": {"scheme": "https"}, "match": [{"scheme": {"exact": "http"}}]},
        {"directResponse": {"status": 404}, "headers": {"response": {"set": {"x": "y"}}}}]}},
    {**ROUTE, "kind": "Gateway", "spec": {"listen": "0.0.0.0:8443", "passthrough": [
        {"sniHosts": ["db.example.com", "*.apps.example.com", "*"], "destination": "db"}]}},
    {**ROUTE, "metadata": {"name": "r", "labels": {"a.b/c": ""}}, "status": {"any": "thing"}},
    with_rule(rewrite={"uri": "/", "authority": "reviews.internal:9080"}),
    with_rule(matches=[{"path": {"exact": "/login"}, "method": "POST"}],
              rateLimit={"requestsPerSecond": 0.01, "burst": 3, "perSource": True}),
    with_rule(rewrite={"uri": "/caf%C3%A9/a;b=1,c@d:e!$&'()*+~_.-"}),
    with_rule(matches=[{"sourceLabels": {"app": "gateway"}, "sourceNamespace": "edge"}]),
    with_rule(cors={"allowOrigins": [{"exact": "*"}, {"regex": "https://.*[.]example"}],
                    "allowMethods": ["GET", "POST"], "allowHeaders": ["x-token"],
                    "exposeHeaders": ["x-request-id"], "maxAge": "24h",
                    "allowCredentials": True}),
    {**ROUTE, "kind": "DestinationPolicy", "spec": {
        "host": "r", "loadBalancer": "CONSISTENT_HASH",
        "consistentHash": {"queryParameter": "session"}}},
    *({**ROUTE, "kind": "DestinationPolicy", "spec": {
        "host": "r", "loadBalancer": "CONSISTENT_HASH", "consistentHash": {"httpCookie": c}}}
      for c in ({"name": "session"}, {"name": "JSESSIONID", "path": "/cart", "ttl": "0s"},
                {"name": "__Host-sticky", "path": "/", "ttl": "1h"})),
    {**ROUTE, "spec": {"host": "reviews", "rules": [
        {"matches": [{"path": {"prefix": "/old"}}],
         "redirect": {"uri": "/new", "redirectCode": 308}},
        {"backends": [{"subset": "v1"}]}]}},
    {**ROUTE, "spec": {"host": "reviews", "rules": [
        {"redirect": {"scheme": "https", "port": 8443, "authority": "a.example"}}]}},
    {**ROUTE, "spec": {"host": "api.github.com", "rules": [{"backends": [{}], "timeout": "1s"}]}},
    {**ROUTE, "kind": "DestinationPolicy", "spec": {"host": "api.github.com"}},
    {**ROUTE, "kind": "DestinationPolicy", "spec": {
        "host": "r", "loadBalancer": "CONSISTENT_HASH", "consistentHash": {"sourceIp": True},
        "subsets": [{"name": "v1", "labels": {"version": "v1"}},
                    {"name": "v2", "labels": {"version": "v2"}, "loadBalancer": "ROUND_ROBIN",
                     "connectionPool": {"maxConnections": 1, "maxPendingRequests": 0},
                     "outlierDetection": {"consecutive5xxErrors": 1}},
                    {"name": "v3", "labels": {"version": "v3"}, "loadBalancer": "CONSISTENT_HASH",
                     "consistentHash": {"header": "x-user"}}]}},
    {**ROUTE, "kind": "DestinationPolicy", "spec": {
        "host": "r", "subsets": [{"name": "v1", "labels": {"version": "v1"},
                                  "outlierDetection": {"consecutive5xxErrors": 1}}],
        "localityLbSetting": {"enabled": True, "failover": [{"from": "us-east", "to": "eu"}],
                              "failoverPriority": ["env", "tier=gold"]}}},
    {**ROUTE, "kind": "DestinationPolicy", "spec": {"host": "r", "localityLbSetting": {
        "distribute": [{"from": "*", "to": {"r1/z.1/*": 60, "r2/z/s": 40}}]}}},
    {**ROUTE, "kind": "DestinationPolicy", "spec": {"host": "db", "connectionPool": {
        "tcpIdleTimeout": "0s"}}},  # never
    {**ROUTE, "kind": "DestinationPolicy", "spec": {"host": "db", "connectionPool": {
        "tcpIdleTimeout": "1h30m"}}},
    {**ROUTE, "kind": "ExternalService", "spec": {
        "hosts": ["api.github.com", "*.example.com"],
        "ports": [{"number": 443, "protocol": "TLS"}, {"number": 80, "protocol": "HTTP"},
                  {"number": 8443, "protocol": "HTTPS"}, {"number": 5432, "protocol": "TCP"},
                  {"number": 50051, "protocol": "GRPC"},
                  {"number": 8080, "protocol": "HTTP2", "targetPort": 443}]}},
    {**ROUTE, "kind": "ExternalService", "spec": {
        "hosts": ["db.internal"], "ports": [{"number": 5432, "protocol": "TCP"}],
        "endpoints": [{"address": "203.0.113.7"}, {"address": "2001:db8::7"},
                      {"address": "db-1.example.net"}]}},
    {**ROUTE, "kind": "Sidecar", "spec": {"egress": [
        {"hosts": ["./*", "~/*", "*/*.example.com", "b/api", "*/api.b.svc.cluster.local"]}]}},
    {**ROUTE, "kind": "Sidecar", "spec": {"workloadSelector": {"labels": {"app": "web"}},
                                          "outboundTrafficPolicy": {"mode": "ALLOW_ANY"}}},
    {**ROUTE, "kind": "MeshConfig", "metadata": {"name": "default"}, "spec": {
        "extensionProviders": [{"name": "opa", "envoyExtAuthzGrpc": {
            "service": "opa", "port": 9191, "timeout": "250ms", "failOpen": True,
            "statusOnError": "503"}}]}},
    {**ROUTE, "kind": "Canary", "spec": {"service": "reviews", "stable": "v1", "canary": "v3"}},
    {**ROUTE, "kind": "Canary", "spec": {
        "service": "reviews", "route": "reviews", "rule": "beta", "stable": "v1",
        "canary": "v3", "stepWeight": 100, "maxWeight": 100, "interval": "500ms",
        "thresholds": {"minSuccessRate": 0, "maxP99Ms": 0, "minRequests": 1},
        "failures": 1, "maxHolds": 0}},
    {**ROUTE, "kind": "Canary", "spec": {
        "service": "reviews", "stable": "v1", "canary": "v3", "webhooks": [
            {"name": "gate", "type": "confirm-rollout", "url": "https://gate.example/approve"},
            {"name": "load", "type": "rollout", "url": "http://loadtester.test:8080/",
             "timeout": "500ms", "metadata": {"cmd": "hey -z 1m http://reviews/"}}]}},
])
def test_edge_documents_are_accepted_by_both(document: dict[str, Any]) -> None:
    """Unusual but valid documents are accepted by the parser and the schema alike."""
    assert parser_accepts(document)
    assert schema_accepts(document)


def test_unknown_kind_has_no_schema() -> None:
    """Asking for the schema of an unknown kind raises KeyError naming the known kinds."""
    with pytest.raises(KeyError, match="expected one of Route"):
        schema_for("VirtualService")


@pytest.mark.parametrize(("value", "dry_run"), [
    ("true", True), ("True", True), ("TRUE", True), ("1", True), ("t", True), ("T", True),
    ("false", False), ("False", False), ("FALSE", False), ("0", False), ("f", False)])
def test_the_dry_run_annotation_reads_as_istio_reads_it(value: str, dry_run: bool) -> None:
    """Istio reads `istio.io/dry-run` with strconv.ParseBool: an Istio policy annotated
    "True" or "1" is dry-run there, so it is here too (sent to the sidecars as such)."""
    from meshctl.controlplane.snapshots import _policy_item

    resource = parse_document({
        "apiVersion": "ami.mesh/v1alpha1", "kind": "AuthorizationPolicy",
        "metadata": {"name": "p", "annotations": {"istio.io/dry-run": value}},
        "spec": {"selector": {"service": "reviews"}, "action": "DENY", "rules": [{}]}})
    assert _policy_item(resource).get("dryRun", False) is dry_run
