"""JSON Schemas (OpenAPI components) of the control plane API's request and response bodies.

Each names the fields clients read; objects stay open (no ``additionalProperties: false``)
so a field added to a response is no breaking change for a generated client. ``tests/
test_openapi.py`` validates real responses against these.
"""

from __future__ import annotations

from typing import Any

from meshctl.api.httproute import GATEWAY_API_VERSIONS
from meshctl.api.kindnames import KIND_PLURALS

REF = "#/components/schemas/"


def ref(name: str) -> dict[str, str]:
    return {"$ref": REF + name}


def _obj(required: tuple[str, ...] = (), **properties: Any) -> dict[str, Any]:
    schema: dict[str, Any] = {"type": "object", "properties": properties}
    if required:
        schema["required"] = list(required)
    return schema


def _array(items: dict[str, Any]) -> dict[str, Any]:
    return {"type": "array", "items": items}


def _nullable(kind: str | list[str]) -> dict[str, Any]:
    kinds = [kind] if isinstance(kind, str) else kind
    return {"type": [*kinds, "null"]}


_STR = {"type": "string"}
_INT = {"type": "integer"}
_NUM = {"type": "number"}
_BOOL = {"type": "boolean"}
_OBJ = {"type": "object"}
_STRINGS = {"type": "object", "additionalProperties": _STR}
_NUM_OR_NULL = _nullable("number")
_STR_OR_NULL = _nullable("string")

# The golden figures of a row of stat, edges and the dashboard (meshctl.observe.golden),
# plus the TCP figures every row carries (null without TCP traffic).
_GOLDEN = {"rps": _NUM, "successRate": _NUM_OR_NULL, "p50": _NUM_OR_NULL,
           "p95": _NUM_OR_NULL, "p99": _NUM_OR_NULL, "mtlsShare": _NUM_OR_NULL,
           "tcpConnections": _nullable("integer"), "tcpReadBytesPerSec": _NUM_OR_NULL,
           "tcpWriteBytesPerSec": _NUM_OR_NULL}
# translatedFrom: the Istio document an object was translated from (absent otherwise)
_REF_FIELDS = {"name": _STR, "namespace": _STR, "resourceVersion": _STR, "translatedFrom": _STR}
_OBJECT_REF = _obj(("name", "namespace", "resourceVersion"), **_REF_FIELDS)

SCHEMAS: dict[str, Any] = {
    "Error": {**_obj(("error", "reason"), error={**_STR, "description": "what went wrong, in "
                                                  "words"},
                     reason={**_STR, "description": "one word: BadRequest, Unauthorized, "
                             "NotFound, Conflict, Invalid, MethodNotAllowed, BadGateway, "
                             "Timeout, InternalError, ..."}),
              "description": "The one error shape of the API (some errors add fields)."},
    "Resource": {"type": "object", "required": ["apiVersion", "kind", "metadata", "spec"],
                 "properties": {
                     "apiVersion": {"enum": ["ami.mesh/v1alpha1", *GATEWAY_API_VERSIONS]},
                     "kind": {"enum": list(KIND_PLURALS)},
                     "metadata": _obj(("name",), name=_STR, namespace=_STR, labels=_STRINGS,
                                      resourceVersion=_STR),
                     "spec": _OBJ,
                     "status": {"type": "object", "readOnly": True}}},
    "ResourceList": _obj(("kind", "items"), apiVersion=_STR, kind=_STR,
                         items=_array(ref("Resource"))),
    "ApplyResult": _obj(("results",), results=_array(_obj(
        ("kind", "namespace", "name", "result"),
        kind=_STR, namespace=_STR, name=_STR,
        result={"enum": ["created", "configured", "unchanged", "pruned"]},
        resourceVersion={**_STR, "description": "the version stored (a dry run: the live one)"},
        origin={**_STR, "description": "pruned only: the Istio document whose earlier "
                                        "translation made the object"},
        object={"oneOf": [ref("Resource"), {"type": "null"}],
                "description": "dry run only: the object as the apply would store it "
                               "(null: pruned)"},
        live={"oneOf": [ref("Resource"), {"type": "null"}],
              "description": "dry run only: the object as stored now (null: new)"})),
        dryRun={"type": "boolean"}),
    "StoreErrors": _obj(("items",), items=_array(_obj(
        ("source", "message", "objects"), source=_STR, message=_STR, objects=_array(_STR)))),
    "Proxy": {**_obj(
        ("name", "service", "version", "inbound", "admin", "configVersion", "synced",
         "certExpiry"),
        name=_STR, service=_STR, namespace=_STR, version=_STR, labels=_STRINGS,
        mode={"enum": ["sidecar", "gateway"]}, trustedGateway=_nullable("boolean"),
        gatewayCertificate=_nullable("boolean"), inbound=_STR_OR_NULL, outbound=_STR_OR_NULL,
        admin=_STR_OR_NULL, configVersion=_STR_OR_NULL, sentVersion=_STR_OR_NULL,
        synced=_BOOL, nack=_STR_OR_NULL, lastAck=_STR_OR_NULL, connected=_BOOL, ready=_BOOL,
        certExpiry={**_STR_OR_NULL, "description": "RFC 3339"}, certIssued=_STR_OR_NULL,
        app=_STR_OR_NULL, appProtocol=_STR_OR_NULL, appPort=_nullable("integer"),
        locality=_STR_OR_NULL, proxyVersion=_STR, proxyBuild=_STR_OR_NULL),
        "description": "One proxy, as `meshctl proxy-status -o json` prints it."},
    "ProxyList": _obj(("storeVersion", "proxies"), storeVersion=_INT,
                      proxies=_array(ref("Proxy"))),
    "Synced": _obj(("synced", "proxies", "elapsed_ms"), synced={"const": True},
                   proxies=_INT, elapsed_ms=_NUM, converged_ms=_NUM,
                   phases_ms=_obj(("pushes",), pushes=_INT, pass_started=_NUM, queued=_NUM,
                                  last_written=_NUM, last_acked=_NUM)),
    "NotSynced": {"allOf": [ref("Error"), _obj(
        ("synced", "elapsed_ms", "lagging"), synced={"const": False}, elapsed_ms=_NUM,
        lagging=_array(ref("Proxy")))]},
    "Version": _obj(("version", "build", "dataPlane"), version=_STR, build=_STR,
                    dataPlane=_array(_obj(("version", "proxies"), version=_STR,
                                          proxies=_INT))),
    "StatRow": _obj(("service", "version", "rps"), service=_STR, version=_STR, **_GOLDEN),
    "Stat": _obj(("window", "scrapeInterval", "rows"), window=_NUM, scrapeInterval=_NUM,
                 rows=_array(ref("StatRow"))),
    "Edge": _obj(("source", "sourceVersion", "destination", "destinationVersion", "secured"),
                 source=_STR, sourceVersion=_STR, destination=_STR, destinationVersion=_STR,
                 secured=_BOOL, **_GOLDEN),
    "Edges": _obj(("window", "edges"), window=_NUM, edges=_array(ref("Edge"))),
    "RouteStats": _obj(
        ("service", "namespace", "window", "routes", "rows"),
        service=_STR, namespace=_STR, window=_NUM,
        routes=_array(_obj(("route", "rules"), route=_STR, rules=_array(_STR),
                           unnamedRules=_INT)),
        rows=_array(_obj(("route", "rule"), route=_STR_OR_NULL, rule=_STR_OR_NULL,
                         rps=_NUM, successRate=_NUM_OR_NULL, p50=_NUM_OR_NULL,
                         p95=_NUM_OR_NULL, p99=_NUM_OR_NULL, share=_NUM_OR_NULL,
                         backends={**_STR, "description": "e.g. v1=90,v2=10"})),
        message=_STR_OR_NULL),
    "AuthzStats": _obj(
        ("service", "namespace", "window", "policies", "rows"),
        service=_STR, namespace=_STR, window=_NUM,
        policies=_array(_obj(("policy", "action", "dryRun"), policy=_STR, action=_STR,
                             dryRun=_BOOL)),
        rows=_array(_obj(("policy", "action", "dryRun", "allowed", "denied", "rps"),
                         policy={**_STR, "description": "namespace/name, or [none]"},
                         action=_STR_OR_NULL, dryRun=_BOOL, allowed=_INT, denied=_INT,
                         audited={**_INT, "description": "requests an AUDIT policy marked"},
                         rps=_NUM)),
        message=_STR_OR_NULL),
    "Top": _obj(("seconds", "rows"), seconds=_NUM, rows=_array(_obj(
        ("destination", "method", "path", "count", "successRate"),
        destination=_STR, method=_STR, path=_STR, count=_INT, successRate=_NUM, best=_NUM,
        worst=_NUM, mean=_NUM))),
    "Check": _obj(("groups",), groups=_array(_obj(("title", "checks"), title=_STR,
                                                  checks=_array(_obj(
        ("name", "state", "detail", "hint"), name=_STR, state={"enum": ["ok", "warn", "fail"]},
        detail=_STR, hint=_STR))))),
    "DashboardState": _obj(
        ("time", "window", "nodes", "edges", "services", "proxies"),
        time=_NUM, window=_NUM, nodes=_array(ref("StatRow")), edges=_array(ref("Edge")),
        services=_array(_STR), series={"type": "object", "additionalProperties": _array(_OBJ)},
        seriesSpan=_NUM, seriesStep=_NUM,
        routes=_array(_OBJ), canaries=_array(_OBJ), proxies=_array(_OBJ), scrapeErrors=_OBJ,
        counters=_OBJ),
    "ProxyLogging": _obj(("proxy", "loggers"), proxy=_STR, loggers=_STRINGS),
    "ConfigDump": {**_obj(sidecarScope=_OBJ), "description": "The sidecar's running "
                   "configuration (its admin /config_dump), plus the Sidecar scoping it."},
    "ServiceDescription": _obj(
        ("service", "namespace", "kind", "storeVersion", "instances", "routes",
         "destinationPolicies"),
        service=_STR, namespace=_STR, storeVersion=_INT, metricsName=_STR,
        kind={"enum": ["mesh", "external"], "description": "a mesh service, or a host an "
              "ExternalService declares"},
        instances=_array(ref("Proxy")),
        routes=_array({**_obj(("name", "namespace", "resourceVersion", "via", "host", "rules"),
                              **_REF_FIELDS, via={"enum": ["host", "backend"]}, host=_STR,
                              callers=_array(_STR), rules=_array(_OBJ))}),
        destinationPolicies=_array(_obj(
            ("name", "namespace", "resourceVersion", "host", "subsets"), **_REF_FIELDS,
            host=_STR, callers=_array(_STR), policy=_OBJ,
            subsets=_array(_obj(("name", "labels", "endpoints"), name=_STR, labels=_STRINGS,
                                endpoints=_array(_STR))))),
        externalServices=_array(_obj(
            ("name", "namespace", "resourceVersion", "host", "ports", "endpoints",
             "resolution"), **_REF_FIELDS, host=_STR, ports=_array(_OBJ),
            endpoints=_array(_STR), resolution={"enum": ["DNS", "STATIC"]})),
        authorizationPolicies=_array(_OBJECT_REF), requestAuthentications=_array(_OBJECT_REF),
        peerAuthentication=_OBJ, telemetries=_array(_OBJECT_REF), sidecars=_array(_OBJECT_REF),
        gateways=_array(_OBJECT_REF)),
    "UnknownService": {"allOf": [ref("Error"), _obj(
        ("known",), known={**_array(_STR), "description": "services and hosts it knows, "
                           "close matches first"})]},
}
