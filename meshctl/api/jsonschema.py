"""JSON Schema (draft 2020-12) of each resource kind, for editors; mirrors the parser's rules.

The parser is the authority: a few checks (weights summing to 100, regexes compiling, unique
names, minimum certificate TTL) cannot be said in JSON Schema and are only made by the parser.
"""

from __future__ import annotations

import copy
from typing import Any

from meshctl.api import fields as F
from meshctl.api.annotations import DRY_RUN, DRY_RUN_TRUE, DRY_RUN_VALUES
from meshctl.api.authn import JWKS_URI
from meshctl.api.authz import (
    ACTIONS,
    AUTHZ_HOST,
    AUTHZ_PATH,
    CLAIM,
    OPERATION_FIELDS,
    PRINCIPAL,
    SOURCE_FIELDS,
)
from meshctl.api.canary import HOOK_TYPES, HOOK_URL
from meshctl.api.durations import DURATION_PATTERN, ZERO_DURATION_PATTERN
from meshctl.api.extauthz import EXTENSION_NAME, HEADER_PATTERN, PATH_PREFIX, STATUS_TEXT
from meshctl.api.external import ENDPOINT_ADDRESS, EXTERNAL_HOST, PROTOCOLS
from meshctl.api.grpcroute import GRPC_FILTER_TYPES
from meshctl.api.httproute import (
    FILTER_TYPES,
    GATEWAY_DURATION,
    MAX_WEIGHT,
    PATH_TYPES,
    REDIRECT_STATUS,
    VALUE_TYPES,
)
from meshctl.api.kinds import (
    GATEWAY_HOST,
    KINDS,
    MESH_CONFIG_NAME,
    MTLS_MODES,
    OUTBOUND_TRAFFIC_MODES,
)
from meshctl.api.locality import LOCALITY_PATTERN, REGION
from meshctl.api.matches import MATCHERS, PATH_MATCHERS, SCHEMES
from meshctl.api.peerauthn import PEER_MODES
from meshctl.api.policy import (
    COOKIE_NAME,
    COOKIE_PATH,
    H2_UPGRADE_POLICIES,
    ISTIO_POOL_SPELLINGS,
    LOAD_BALANCERS,
    TLS_MODES,
    WARMUP_BALANCERS,
)
from meshctl.api.resources import API_VERSION, FOREIGN_KINDS
from meshctl.api.rules import (
    AUTHORITY,
    DIRECT_BODY_MAX,
    GRPC_CODES,
    REDIRECT_CODES,
    RETRY_ON,
    URI_PATH,
)
from meshctl.api.sidecar import EGRESS_HOST
from meshctl.api.xfcc import WORKLOAD_ID

Schema = dict[str, Any]
DIALECT = "https://json-schema.org/draft/2020-12/schema"
BASE_ID = "https://ami.mesh/schemas/v1alpha1/"


def _obj(properties: Schema, required: tuple[str, ...] = (), **extra: Any) -> Schema:
    schema: Schema = {"type": "object", "properties": properties, "additionalProperties": False}
    if required:
        schema["required"] = list(required)
    return schema | extra


def _str(pattern: str | None = None, **extra: Any) -> Schema:
    schema: Schema = {"type": "string", "minLength": 1}
    if pattern:
        schema["pattern"] = pattern
    return schema | extra


def _int(minimum: int | None = None, maximum: int | None = None) -> Schema:
    return _range({"type": "integer"}, minimum, maximum)


def _num(minimum: float | None = None, maximum: float | None = None) -> Schema:
    return _range({"type": "number"}, minimum, maximum)


def _range(schema: Schema, minimum: float | None, maximum: float | None) -> Schema:
    if minimum is not None:
        schema["minimum"] = minimum
    if maximum is not None:
        schema["maximum"] = maximum
    return schema


def _list(items: Schema, min_items: int = 0) -> Schema:
    schema: Schema = {"type": "array", "items": items}
    return schema | ({"minItems": min_items} if min_items else {})


def _map(values: Schema, key_pattern: str | None = None) -> Schema:
    schema: Schema = {"type": "object", "additionalProperties": values}
    return schema | ({"propertyNames": {"pattern": key_pattern}} if key_pattern else {})


def _ref(name: str) -> Schema:
    return {"$ref": f"#/$defs/{name}"}


def _duration(description: str = "", *, zero: bool = False) -> Schema:
    schema: Schema = {"type": "string", "pattern": DURATION_PATTERN}
    if not zero:
        schema["not"] = {"pattern": ZERO_DURATION_PATTERN}
    return schema | ({"description": description} if description else {})


def _matcher(kinds: tuple[str, ...], path: bool) -> Schema:
    text = _str("^/") if path else {"type": "string"}
    props: Schema = {"exact": text, "prefix": _str("^/") if path else _str(),
                     "regex": _str(), "present": {"type": "boolean"}}
    return _obj({k: props[k] for k in kinds}, minProperties=1, maxProperties=1)


_SERVICE = _str(F.DNS_LABEL, description="service name (DNS-1123 label)")
_HOST = _str(F.DNS_SUBDOMAIN, maxLength=253,
             description="service name, or the DNS name of an ExternalService host")
_PERCENT = _num(0, 100)
_STATUS = _int(200, 599)
_METHOD = _str(F.METHOD)
IP_BLOCK = "an IP address or a CIDR block, like 10.0.0.0/8 (checked by the parser)"
_HEADER_VALUES = _map({"type": "string", "pattern": F.HEADER_FIELD_VALUE}, F.HEADER_NAME)
_HEADER_EDITS = _obj({"set": _HEADER_VALUES, "add": _HEADER_VALUES,
                      "remove": _list(_str(F.HEADER_NAME))})

DEFS: Schema = {
    "labels": _map({"type": "string", "pattern": F.LABEL_VALUE}, F.LABEL_KEY),
    "metadata": _obj({
        "name": _str(F.DNS_SUBDOMAIN, maxLength=253),
        "namespace": _str(F.DNS_LABEL),
        "labels": _ref("labels"),
        "annotations": _map({"type": "string"}, F.LABEL_KEY),
        "resourceVersion": _str(),
    }, ("name",)),
    "pathMatch": _matcher(PATH_MATCHERS, path=True),
    "stringMatch": _matcher(MATCHERS, path=False),
    "originMatch": _matcher(PATH_MATCHERS, path=False),
    "match": _obj({
        "path": _ref("pathMatch"),
        "method": _METHOD,
        "methods": _list(_METHOD, 1),
        "headers": _map(_ref("stringMatch"), F.HEADER_NAME),
        "query": _map(_ref("stringMatch")) | {"propertyNames": {"minLength": 1}},
        "sourceLabels": _ref("labels"),
        "sourceNamespace": _str(F.DNS_LABEL),
        "scheme": _ref("stringMatch"),
        "withoutHeaders": _map(_ref("stringMatch"), F.HEADER_NAME),
        "ignoreUriCase": {"type": "boolean"},
    }) | {"not": {"required": ["method", "methods"]}, "allOf": [
        # ignoreUriCase: true needs a path, exact or prefix
        {"if": {"required": ["ignoreUriCase"], "properties": {"ignoreUriCase": {"const": True}}},
         "then": {"required": ["path"], "properties": {"path": {"not": {
             "required": ["regex"]}}}}}]},
    "backend": _obj({"service": _SERVICE, "subset": _str(F.DNS_LABEL), "weight": _int(0, 100)}),
    "retries": _obj({
        "attempts": _int(0),
        "perTryTimeout": _duration(),
        "retryOn": _list({"enum": list(RETRY_ON)}, 1),
        "retriableStatusCodes": _list(_STATUS, 1),
        "backoff": _obj({"baseInterval": _duration(), "maxInterval": _duration()}),
        "allowNonIdempotent": {"type": "boolean"},
    }, ("attempts",)) | {
        # retriableStatusCodes if and only if retryOn names retriable-status-codes
        "dependentSchemas": {"retriableStatusCodes": {"required": ["retryOn"], "properties": {
            "retryOn": {"contains": {"const": "retriable-status-codes"}}}}},
        "if": {"required": ["retryOn"], "properties": {
            "retryOn": {"contains": {"const": "retriable-status-codes"}}}},
        "then": {"required": ["retriableStatusCodes"]}},
    "fault": _obj({
        "delay": _obj({"fixedDelay": _duration(), "percent": _PERCENT}, ("fixedDelay",)),
        "abort": _obj({"httpStatus": _STATUS, "percent": _PERCENT, "grpcStatus": {"anyOf": [
            {"enum": list(GRPC_CODES)}, _int(1, 16), {"type": "string",
                                                      "pattern": "^([1-9]|1[0-6])$"}]}},
            oneOf=[{"required": ["httpStatus"]}, {"required": ["grpcStatus"]}]),
    }, anyOf=[{"required": ["delay"]}, {"required": ["abort"]}]),
    # DestinationPolicy's (the destination's sidecars) and a Route rule's (the proxy applying it)
    "rateLimit": _obj({"requestsPerSecond": _num(0.001), "burst": _int(1),
                       "perSource": {"type": "boolean"}}, ("requestsPerSecond",)),
    "rule": _obj({
        "name": _str(F.DNS_SUBDOMAIN),
        "matches": _list(_ref("match")),
        "backends": _list(_ref("backend"), 1) | {
            "if": {"minItems": 2}, "then": {"items": {"required": ["weight"]}},
            "description": "weights must sum to 100 (checked by the parser)"},
        "timeout": _duration(),
        "retries": _ref("retries"),
        "fault": _ref("fault"),
        "mirror": _obj({"service": _SERVICE, "subset": _str(F.DNS_LABEL),
                        "percent": _PERCENT}),
        "headers": _obj({"request": _HEADER_EDITS, "response": _HEADER_EDITS}),
        "rewrite": _obj({"uri": _str(URI_PATH), "authority": _str(AUTHORITY)},
                        anyOf=[{"required": ["uri"]}, {"required": ["authority"]}]),
        "cors": _obj({"allowOrigins": _list(_ref("originMatch"), 1),
                      "allowMethods": _list(_METHOD), "allowHeaders": _list(_str(F.HEADER_NAME)),
                      "exposeHeaders": _list(_str(F.HEADER_NAME)), "maxAge": _duration(),
                      "allowCredentials": {"type": "boolean"}}, ("allowOrigins",)),
        "rateLimit": _ref("rateLimit"),
        "redirect": _obj({"uri": _str(URI_PATH), "authority": _str(AUTHORITY),
                          "scheme": {"enum": list(SCHEMES)}, "port": _int(1, 65535),
                          "redirectCode": {"enum": list(REDIRECT_CODES)}},
                         anyOf=[{"required": [k]} for k in ("uri", "authority", "scheme", "port")]),
        "directResponse": _obj({
            "status": _STATUS,
            "body": _obj({"string": {"type": "string"},
                          "bytes": {"type": "string", "pattern": r"^[A-Za-z0-9+/]*={0,2}$"}},
                         minProperties=1, maxProperties=1,
                         description=f"at most {DIRECT_BODY_MAX} bytes")}, ("status",)),
    }) | {
        # forward to backends, answer with a redirect and nothing else, or answer directly
        # (with the response's header edits, CORS, a rate limit)
        "oneOf": [{"required": ["backends"], "not": {"anyOf": [
                      {"required": ["redirect"]}, {"required": ["directResponse"]}]}},
                  {"required": ["redirect"], "not": {"anyOf": [
                      {"required": [k]} for k in ("backends", "timeout", "retries", "fault",
                                                  "mirror", "headers", "rewrite", "cors",
                                                  "rateLimit", "directResponse")]}},
                  {"required": ["directResponse"], "not": {"anyOf": [
                      *({"required": [k]} for k in ("backends", "timeout", "retries", "fault",
                                                    "mirror", "rewrite", "redirect")),
                      {"required": ["headers"],
                       "properties": {"headers": {"required": ["request"]}}}]}}]},
}

# A Gateway rule: `destination` (that service's Route applies), or the fields of a Route
# rule (`match` for its matches), whose backends and mirror name their service.
_ROUTE_RULE = DEFS["rule"]
_GATEWAY_RULE: Schema = _obj({
    "hosts": _list(_str(GATEWAY_HOST)), "match": _list(_ref("match")),
    "destination": _SERVICE,
    **{k: v for k, v in _ROUTE_RULE["properties"].items() if k != "matches"},
    "backends": {**_ROUTE_RULE["properties"]["backends"], "items": _obj(
        {"service": _SERVICE, "subset": _str(F.DNS_LABEL), "weight": _int(0, 100)},
        ("service",))},
    "mirror": _obj({"service": _SERVICE, "subset": _str(F.DNS_LABEL), "percent": _PERCENT},
                   ("service",)),
}) | {"oneOf": [{"required": ["destination"], "not": {"anyOf": [
    {"required": [k]} for k in _ROUTE_RULE["properties"] if k != "matches"]}},
    {"not": {"required": ["destination"]}, **{k: v for k, v in _ROUTE_RULE.items()
                                              if k == "oneOf"}}]}


_TCP_KEEPALIVE: Schema = _obj({"time": _duration(), "interval": _duration(),
                               "probes": _int(1, 127)})
# The policy fields a DestinationPolicy's subset may set too (each replacing the host's).
_SUBSET_POLICY: Schema = {
    "loadBalancer": {"enum": list(LOAD_BALANCERS)},
    "consistentHash": _obj({"header": _str(F.HEADER_NAME),
                            "queryParameter": _str(r"^[^\s&=#]+$"),
                            "sourceIp": {"const": True},
                            "httpCookie": _obj({
                                "name": _str(COOKIE_NAME),
                                "path": _str(COOKIE_PATH, maxLength=1024),
                                "ttl": _duration("set the cookie on a client without it; "
                                                 "0s: a session cookie", zero=True)},
                                ("name",))},
                           minProperties=1, maxProperties=1),
    "warmup": _obj({"duration": _duration(), "minimumPercent": _num(0, 100),
                    "aggression": {"type": "number", "exclusiveMinimum": 0}}, ("duration",)),
    "warmupDurationSecs": _duration("Istio's older spelling of warmup: {duration}"),
    "connectionPool": _obj({
        "maxConnections": _int(1), "maxPendingRequests": _int(0),
        "maxRequestsPerConnection": _int(0), "maxConcurrentRequests": _int(1),
        "idleTimeout": _duration(), "connectTimeout": _duration(),
        "tcpIdleTimeout": _duration("a TCP service's connection; 0s: never", zero=True),
        "tcpKeepalive": _TCP_KEEPALIVE,
        "maxConnectionDuration": _duration("a pooled HTTP connection's age limit"),
        "maxRetries": _int(0),
        # Istio's DestinationRule spelling of the same settings (each given once)
        # (Istio's 0 for tcp.maxConnections, http1MaxPendingRequests, http2MaxRequests: the
        # default)
        "tcp": _obj({"maxConnections": _int(0), "connectTimeout": _duration(),
                     "idleTimeout": _duration("a TCP service's connection; 0s: never",
                                              zero=True),
                     "tcpKeepalive": _TCP_KEEPALIVE,
                     "maxConnectionDuration": _duration()}),
        "http": _obj({"http1MaxPendingRequests": _int(0), "http2MaxRequests": _int(0),
                      "maxRequestsPerConnection": _int(0), "maxRetries": _int(0),
                      "idleTimeout": _duration(),
                      "h2UpgradePolicy": {"enum": list(H2_UPGRADE_POLICIES)},
                      # false (Istio's default) only: true is refused (policy.py)
                      "useClientProtocol": {"const": False}})},
        # a setting given both ways (flat, and in Istio's group) is refused, as by the parser
        allOf=[{"not": {"required": [flat, group],
                        "properties": {group: {"required": [name]}}}}
               for group, name, flat in ISTIO_POOL_SPELLINGS]),
    "outlierDetection": _obj({
        "consecutive5xxErrors": _int(0), "consecutiveGatewayErrors": _int(0),
        "interval": _duration(), "baseEjectionTime": _duration(),
        "maxEjectionPercent": _int(0, 100), "minHealthPercent": _int(0, 100),
        "splitExternalLocalOriginErrors": {"type": "boolean"},
        "consecutiveLocalOriginFailures": _int(0)},
        # (only with splitExternalLocalOriginErrors: true)
        dependentSchemas={"consecutiveLocalOriginFailures": {
            "required": ["splitExternalLocalOriginErrors"],
            "properties": {"splitExternalLocalOriginErrors": {"const": True}}}}),
}
_WARMUP_KEYS: Schema = {"anyOf": [{"required": ["warmup"]}, {"required": ["warmupDurationSecs"]}]}
# In the same mapping: consistentHash if and only if loadBalancer is CONSISTENT_HASH; warmup or
# warmupDurationSecs (not both) with ROUND_ROBIN or LEAST_REQUEST (the default) only
_BALANCER_RULE: Schema = {"allOf": [
    {"if": {"required": ["loadBalancer"],
            "properties": {"loadBalancer": {"const": "CONSISTENT_HASH"}}},
     "then": {"required": ["consistentHash"]},
     "else": {"not": {"required": ["consistentHash"]}}},
    {"not": {"required": ["warmup", "warmupDurationSecs"]}},
    {"if": {"required": ["loadBalancer"], "properties": {"loadBalancer": {
        "enum": [b for b in LOAD_BALANCERS if b not in WARMUP_BALANCERS]}}},
     "then": {"not": _WARMUP_KEYS}}]}

# Istio's localityLbSetting: a DestinationPolicy's, and MeshConfig's default
_LOCALITY_LB: Schema = _obj({
    "enabled": {"type": "boolean"},
    "distribute": _list(_obj({"from": _str(LOCALITY_PATTERN),
                              "to": _map(_int(1, 100), LOCALITY_PATTERN) | {
                                  "minProperties": 1}}, ("from", "to")), 1),
    "failover": _list(_obj({"from": _str(REGION), "to": _str(REGION)},
                           ("from", "to")), 1),
    "failoverPriority": _list(_str(r"^[^=\s]+(=[^=\s]*)?$"), 1)})

_GW_VALUE_MATCH = _obj({"type": {"enum": list(VALUE_TYPES)}, "name": _str(F.HEADER_NAME),
                        "value": {"type": "string"}}, ("name", "value"))
_GW_BACKEND = _obj({"group": {"enum": ["", "core"]}, "kind": {"const": "Service"},
                    "name": _str(F.DNS_LABEL), "namespace": _str(F.DNS_LABEL),
                    "port": _int(1, 65535), "weight": _int(0, MAX_WEIGHT)}, ("name",))
_GW_PAIRS = _list(_obj({"name": _str(F.HEADER_NAME), "value": {"type": "string"}},
                       ("name", "value")))
_GW_HEADER_MODIFIER = _obj({"set": _GW_PAIRS, "add": _GW_PAIRS,
                            "remove": _list(_str(F.HEADER_NAME))})
_GW_PATH_MODIFIER = _obj({"type": {"enum": ["ReplaceFullPath", "ReplacePrefixMatch"]},
                          "replaceFullPath": _str(URI_PATH),
                          "replacePrefixMatch": _str(URI_PATH)}, ("type",))

_GW_PARENTS = _list(_obj({
    "group": {"enum": ["", "core"], "description": "the core group: a Service"},
    "kind": {"const": "Service"},
    "name": _str(F.DNS_LABEL), "namespace": _str(F.DNS_LABEL),
    "port": _int(1, 65535)}, ("name", "kind")), 1)
_GW_HOSTNAMES = _list({"type": "string"}) | {"description": "ignored for Service parents "
                                                           "(GAMMA)"}
_GW_MIRROR = _obj({"backendRef": _GW_BACKEND, "percent": _int(0, 100),
                   "fraction": _obj({"numerator": _int(0), "denominator": _int(1)},
                                    ("numerator",))}, ("backendRef",))

_SPECS: dict[str, Schema] = {
    "Route": _obj({"host": _HOST, "rules": _list(_ref("rule"), 1)}, ("host", "rules")),
    "DestinationPolicy": _obj({
        "host": _HOST,
        "subsets": _list(_obj({"name": _str(F.DNS_LABEL), "labels": _ref("labels"),
                               **_SUBSET_POLICY}, ("name", "labels")) | _BALANCER_RULE),
        **_SUBSET_POLICY,
        "localityLbSetting": _LOCALITY_LB,
        "rateLimit": _ref("rateLimit"),
        "tls": _obj({"mode": {"enum": list(TLS_MODES)}, "sni": _str(F.DNS_SUBDOMAIN),
                     "caCertificates": _str(r"^/.*"), "clientCertificate": _str(r"^/.*"),
                     "privateKey": _str(r"^/.*")}) | {
            # clientCertificate and privateKey if and only if mode is MUTUAL
            "if": {"required": ["mode"], "properties": {"mode": {"const": "MUTUAL"}}},
            "then": {"required": ["clientCertificate", "privateKey"]},
            "else": {"not": {"anyOf": [{"required": ["clientCertificate"]},
                                       {"required": ["privateKey"]}]}}},
    }, ("host",)) | _BALANCER_RULE,
    "AuthorizationPolicy": _obj({
        "selector": _obj({"service": _SERVICE}, ("service",)),
        "action": {"enum": list(ACTIONS)},
        "provider": _obj({"name": _str()}, ("name",)),  # action CUSTOM's, and only its
        "rules": _list(_obj({
            "from": _list(_obj({
                "identities": _list(_str(F.SPIFFE_ID), 1),
                "notIdentities": _list(_str(F.SPIFFE_ID), 1),
                "services": _list(_str(F.DNS_LABEL), 1),
                "notServices": _list(_str(F.DNS_LABEL), 1),
                "namespaces": _list(_str(F.DNS_LABEL), 1),
                "notNamespaces": _list(_str(F.DNS_LABEL), 1),
                "ipBlocks": _list(_str(description=IP_BLOCK), 1),
                "notIpBlocks": _list(_str(description=IP_BLOCK), 1),
                "remoteIpBlocks": _list(_str(description=IP_BLOCK), 1),
                "notRemoteIpBlocks": _list(_str(description=IP_BLOCK), 1),
                "requestPrincipals": _list(_str(PRINCIPAL), 1),
                "notRequestPrincipals": _list(_str(PRINCIPAL), 1),
            }, anyOf=[{"required": [k]} for k in SOURCE_FIELDS]), 1),
            "to": _list(_obj({"paths": _list(_str(AUTHZ_PATH), 1),
                              "notPaths": _list(_str(AUTHZ_PATH), 1),
                              "methods": _list(_METHOD, 1), "notMethods": _list(_METHOD, 1),
                              "ports": _list(_int(1, 65535), 1),
                              "notPorts": _list(_int(1, 65535), 1),
                              "hosts": _list(_str(AUTHZ_HOST), 1),
                              "notHosts": _list(_str(AUTHZ_HOST), 1)},
                             anyOf=[{"required": [k]} for k in OPERATION_FIELDS]), 1),
            "when": _list(_obj({"header": _str(F.HEADER_NAME), "claim": _str(CLAIM),
                                "values": _list(_str(F.HEADER_VALUE), 1),
                                "notValues": _list(_str(F.HEADER_VALUE), 1)},
                               oneOf=[{"required": ["header"]}, {"required": ["claim"]}],
                               anyOf=[{"required": ["values"]}, {"required": ["notValues"]}]),
                          1),
        })),
    }),
    "RequestAuthentication": _obj({
        "selector": _obj({"service": _SERVICE}, ("service",)),
        "jwtRules": _list(_obj({
            "issuer": _str(F.HEADER_VALUE),
            "audiences": _list(_str(F.HEADER_VALUE)),
            "jwks": _str(description="a JWK Set as a JSON string: RSA, EC (P-256/384/521) or "
                                     "OKP (Ed25519/Ed448) public keys (checked by the parser)"),
            "jwksUri": _str(JWKS_URI),
            "fromHeaders": _list(_obj({"name": _str(F.HEADER_NAME),
                                       "prefix": {"type": "string",
                                                  "pattern": F.HEADER_VALUE}}, ("name",)), 1),
            "fromParams": _list(_str(r"^[^\s&=#]+$"), 1),
            "forwardOriginalToken": {"type": "boolean"},
            "outputPayloadToHeader": _str(F.HEADER_NAME),
        }, ("issuer",), oneOf=[{"required": ["jwks"]}, {"required": ["jwksUri"]}])),
    }),
    "PeerAuthentication": _obj({
        # Ami's `service`, or Istio's `matchLabels` (`app` is the service), not both
        "selector": _obj({"service": _SERVICE, "matchLabels": _ref("labels")},
                         oneOf=[{"required": ["service"]}, {"required": ["matchLabels"]}]),
        "mtls": _obj({"mode": {"enum": list(PEER_MODES)}}),
        "portLevelMtls": _map(_obj({"mode": {"enum": list(PEER_MODES)}}),
                              r"^[1-9][0-9]{0,4}$") | {
            "minProperties": 1,
            "description": "by the port of the workload's app (1-65535, checked by the "
                           "parser); needs a selector"},
    }, dependentRequired={"portLevelMtls": ["selector"]}),
    "MeshConfig": _obj({
        "trustDomain": _str(F.DNS_SUBDOMAIN, maxLength=253),
        "mtls": _obj({"mode": {"enum": list(MTLS_MODES)}}),
        "certificateTTL": _duration("at least 1m (checked by the parser)"),
        "accessLog": {"type": "boolean"},
        "retryBudget": _obj({"percent": _num(0, 100), "minRetriesPerSecond": _num(0)}),
        "tracing": _obj({"sampling": _num(0, 1), "otlpEndpoint": _str(F.HOST_PORT)}),
        "outboundTrafficPolicy": _obj({"mode": {"enum": list(OUTBOUND_TRAFFIC_MODES)}},
                                      ("mode",)),
        "trustedXfccIdentities": _list(_str(
            WORKLOAD_ID, description="of the mesh's trust domain (checked by the parser)")),
        "localityLbSetting": _LOCALITY_LB,
        "extensionProviders": _list(_obj({
            "name": _str(EXTENSION_NAME),
            "envoyExtAuthzHttp": _obj({
                "service": _str(F.DNS_SUBDOMAIN, maxLength=253), "port": _int(1, 65535),
                "timeout": _duration(), "pathPrefix": _str(PATH_PREFIX),
                "failOpen": {"type": "boolean"}, "statusOnError": {"anyOf": [
                    _int(200, 599), _str(STATUS_TEXT)]},
                "includeRequestHeadersInCheck": _list(_str(HEADER_PATTERN)),
                "includeHeadersInCheck": _list(_str(HEADER_PATTERN)),
                "includeAdditionalHeadersInCheck": _map(_str(F.HEADER_FIELD_VALUE),
                                                        F.HEADER_NAME),
                "headersToUpstreamOnAllow": _list(_str(HEADER_PATTERN)),
                "headersToDownstreamOnAllow": _list(_str(HEADER_PATTERN)),
                "headersToDownstreamOnDeny": _list(_str(HEADER_PATTERN)),
                "clearRouteCache": {"type": "boolean"},
            }, ("service", "port")),
            "envoyExtAuthzGrpc": _obj({
                "service": _str(F.DNS_SUBDOMAIN, maxLength=253), "port": _int(1, 65535),
                "timeout": _duration(), "failOpen": {"type": "boolean"},
                "statusOnError": {"anyOf": [_int(200, 599), _str(STATUS_TEXT)]},
                "clearRouteCache": {"type": "boolean"},
            }, ("service", "port")),
        }, ("name",)) | {"oneOf": [{"required": ["envoyExtAuthzHttp"]},
                                   {"required": ["envoyExtAuthzGrpc"]}]}),
    }),
    "Gateway": _obj({
        "listen": _str(F.HOST_PORT),
        "hosts": _list(_str(GATEWAY_HOST), 1),
        "gateway": _str(F.DNS_SUBDOMAIN, maxLength=253),
        "rules": _list(_GATEWAY_RULE, 1),
        "passthrough": _list(_obj({"sniHosts": _list(_str(GATEWAY_HOST), 1),
                                   "destination": _SERVICE}, ("sniHosts", "destination")), 1),
    }) | {"anyOf": [{"required": ["rules"]}, {"required": ["passthrough"]},
                    {"required": ["hosts"]}],
          # bound to another Gateway: rules only (its hosts and passthrough are the other's)
          "if": {"required": ["gateway"]},
          "then": {"required": ["rules"], "not": {"anyOf": [
              {"required": ["hosts"]}, {"required": ["passthrough"]}]}}},
    "ExternalService": _obj({
        "hosts": _list(_str(EXTERNAL_HOST, maxLength=253), 1) | {"uniqueItems": True},
        "ports": _list(_obj({"number": _int(1, 65535), "protocol": {"enum": list(PROTOCOLS)},
                             "targetPort": _int(1, 65535)}, ("number", "protocol")), 1),
        "endpoints": _list(_obj({"address": _str(ENDPOINT_ADDRESS, maxLength=253)},
                                ("address",))),
    }, ("hosts", "ports")),
    "Telemetry": _obj({
        "selector": _obj({"matchLabels": _ref("labels") | {"minProperties": 1}},
                         ("matchLabels",)),
        "accessLogging": _list(_obj({
            "disabled": {"type": "boolean"},
            "filter": _obj({"expression": _str(description=(
                "CEL subset: response.code, response.flags, request.method, request.path, "
                "request.host; == != < <= > >=, &&, ||, !, (), startsWith/endsWith/contains "
                "(checked by the parser)"))}, ("expression",)),
        }), 1) | {"maxItems": 1},
        "tracing": _list(_obj({"randomSamplingPercentage": _num(0, 100),
                               "disableSpanReporting": {"type": "boolean"}}), 1)
        | {"maxItems": 1},
    }),
    "Sidecar": _obj({
        "workloadSelector": _obj({"labels": _ref("labels") | {"minProperties": 1}},
                                 ("labels",)),
        "egress": _list(_obj({"hosts": _list(_str(EGRESS_HOST), 1)}, ("hosts",)), 1),
        "outboundTrafficPolicy": _obj({"mode": {"enum": list(OUTBOUND_TRAFFIC_MODES)}},
                                      ("mode",)),
    }) | {"anyOf": [{"required": ["egress"]}, {"required": ["outboundTrafficPolicy"]}]},
    "Canary": _obj({
        "service": _SERVICE,
        "route": _str(F.DNS_SUBDOMAIN, maxLength=253,
                      description="the Route's name (default: the Route for the service)"),
        "rule": _str(description="the named rule to step (default: the last rule)"),
        "stable": _str(F.DNS_LABEL, description="the stable subset"),
        "canary": _str(F.DNS_LABEL, description="the canary subset"),
        "stepWeight": _int(1, 100),
        "maxWeight": _int(1, 100),
        "interval": _duration("time between analyses (at least 100ms)"),
        "thresholds": _obj({"minSuccessRate": _num(0, 100), "maxP99Ms": _num(0),
                            "minRequests": _int(1)}),
        "failures": _int(1),
        "maxHolds": _int(0),
        "webhooks": _list(_obj({
            "name": _str(description="unique among the Canary's webhooks"),
            "type": {"enum": list(HOOK_TYPES)},
            "url": _str(HOOK_URL, description="an http:// or https:// URL the control plane "
                                              "POSTs Flagger's payload to"),
            "timeout": _duration("default 10s"),
            "metadata": {"type": "object", "additionalProperties": {"type": "string"},
                         "propertyNames": {"minLength": 1}},
        }, ("name", "type", "url"))),
    }, ("service", "stable", "canary")),
    "HTTPRoute": _obj({
        "parentRefs": _GW_PARENTS,
        "hostnames": _GW_HOSTNAMES,
        "rules": _list(_obj({
            "name": {"type": "string", "description": "accepted, not used"},
            "matches": _list(_obj({
                "path": _obj({"type": {"enum": list(PATH_TYPES)}, "value": _str()}),
                "headers": _list(_GW_VALUE_MATCH),
                "queryParams": _list(_GW_VALUE_MATCH),
                "method": _str("^[A-Z]+$")})),
            "backendRefs": _list(_GW_BACKEND),
            "filters": _list(_obj({
                "type": {"enum": list(FILTER_TYPES)},
                "requestHeaderModifier": _GW_HEADER_MODIFIER,
                "responseHeaderModifier": _GW_HEADER_MODIFIER,
                "requestRedirect": _obj({
                    "scheme": {"enum": ["http", "https"]}, "hostname": _str(),
                    "path": _obj({"type": {"const": "ReplaceFullPath"},
                                  "replaceFullPath": _str(URI_PATH)}, ("type",)),
                    "port": _int(1, 65535), "statusCode": {"enum": list(REDIRECT_STATUS)}}),
                "urlRewrite": _obj({"hostname": _str(), "path": _GW_PATH_MODIFIER}),
                "requestMirror": _GW_MIRROR,
            }, ("type",))),
            "timeouts": _obj({"request": _str(GATEWAY_DURATION),
                              "backendRequest": _str(GATEWAY_DURATION)}),
            "retry": _obj({"attempts": _int(0, 100), "codes": _list(_int(400, 599)),
                           "backoff": _str(GATEWAY_DURATION)}),
        })),
    }, ("parentRefs",)),
    "GRPCRoute": _obj({
        "parentRefs": _GW_PARENTS,
        "hostnames": _GW_HOSTNAMES,
        "rules": _list(_obj({
            "name": {"type": "string", "description": "accepted, not used"},
            "matches": _list(_obj({
                "method": _obj({"type": {"enum": list(VALUE_TYPES)}, "service": _str(),
                                "method": _str()}, minProperties=1),
                "headers": _list(_GW_VALUE_MATCH)})),
            "backendRefs": _list(_GW_BACKEND),
            "filters": _list(_obj({
                "type": {"enum": list(GRPC_FILTER_TYPES)},
                "requestHeaderModifier": _GW_HEADER_MODIFIER,
                "responseHeaderModifier": _GW_HEADER_MODIFIER,
                "requestMirror": _GW_MIRROR,
            }, ("type",))),
        })),
    }, ("parentRefs",)),
}


def schema_for(kind: str) -> Schema:
    """The JSON Schema of one kind's documents; raises KeyError for an unknown kind."""
    if kind not in KINDS:
        raise KeyError(f"unknown kind {kind!r}, expected one of {', '.join(KINDS)}")
    metadata = _ref("metadata")
    if kind == "MeshConfig":
        metadata = {"allOf": [metadata, {"properties": {"name": {"const": MESH_CONFIG_NAME}}}]}
    # `istio.io/dry-run` (meshctl.api.annotations): "true" or "false" on an
    # AuthorizationPolicy, not "true" on a CUSTOM one; on no other kind
    dry_run: Schema = {"enum": list(DRY_RUN_VALUES)} if kind == "AuthorizationPolicy" \
        else {"not": {}, "description": "only an AuthorizationPolicy can be dry-run"}
    metadata = {"allOf": [metadata, {"properties": {"annotations": {
        "properties": {DRY_RUN: dry_run}}}}]}
    required = ["apiVersion", "kind", "metadata"] + (["spec"] if KINDS[kind].spec_required else [])
    extra: Schema = {}
    if kind == "AuthorizationPolicy":
        extra = {"if": {"required": ["metadata"], "properties": {"metadata": {
                    "required": ["annotations"], "properties": {"annotations": {
                        "required": [DRY_RUN],
                        "properties": {DRY_RUN: {"enum": list(DRY_RUN_TRUE)}}}}}}},
                 "then": {"properties": {"spec": {"properties": {"action": {
                     "not": {"const": "CUSTOM"},
                     "description": "a CUSTOM policy cannot be dry-run"}}}}}}
    return extra | {
        "$schema": DIALECT,
        "$id": f"{BASE_ID}{kind.lower()}.json",
        "title": kind,
        "type": "object",
        "required": required,
        "additionalProperties": False,
        "properties": {
            "apiVersion": ({"enum": list(FOREIGN_KINDS[kind])} if kind in FOREIGN_KINDS
                           else {"const": API_VERSION}),
            "kind": {"const": kind},
            "metadata": metadata,
            "spec": copy.deepcopy(_SPECS[kind]),
            "status": {"description": "written by the control plane; ignored on input"},
        },
        "$defs": copy.deepcopy(DEFS),
    }


def all_schemas() -> dict[str, Schema]:
    """Every kind's schema, by kind name."""
    return {kind: schema_for(kind) for kind in KINDS}
