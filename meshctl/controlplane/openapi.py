"""The OpenAPI 3.1 description of the control plane's HTTP API (``GET /openapi.json``).

One catalog describes every operation: the resource paths built from the kind table, the
others from meshctl.controlplane.openapiops. The document served lists what the app's router
actually serves (meshctl.controlplane.routetable): a catalog operation the app does not mount
is left out, and a mounted route the catalog lacks still appears, marked
``x-ami-undocumented`` (tests/test_openapi.py fails on one).
"""

from __future__ import annotations

import re
from typing import Any

from aiohttp import web

from meshctl.api.build import VERSION
from meshctl.api.kindnames import KIND_PLURALS
from meshctl.controlplane.openapiops import READ, TOKEN, errors, extra_paths, op, path_param
from meshctl.controlplane.openapiops import json_body as _json
from meshctl.controlplane.openapischemas import REF as _REF
from meshctl.controlplane.openapischemas import SCHEMAS
from meshctl.controlplane.routetable import served_operations

_METHODS = ("get", "put", "post", "delete", "patch", "options", "head", "trace")
BEARER = {"type": "http", "scheme": "bearer", "description":
          "The control plane's token (<state-dir>/token; meshctl reads AMI_TOKEN or "
          ".ami/token). Writes need it; reads need it only from outside the control plane's "
          "machine (unless it runs with --open-reads); tap, top and config_dump always do."}


def _body(description: str) -> dict[str, Any]:
    return {"required": True, "description": description, "content": {
        "application/json": {"schema": {"$ref": _REF + "Resource"}},
        "application/yaml": {"schema": {"$ref": _REF + "Resource"}}}}


def _kind_paths(kind: str, plural: str) -> dict[str, Any]:
    ns, name = path_param("ns", "the namespace"), path_param("name", f"the {kind}'s name")
    rv = {"name": "resourceVersion", "in": "query", "required": False,
          "schema": {"type": "string"}, "description": "delete only if still at this version"}
    listed = _json("ResourceList", f"a {kind}List")
    return {
        f"/api/v1/{plural}": {"get": op(
            f"list{kind}AllNamespaces", f"List {kind} objects in every namespace",
            {"200": listed}, tag=kind)},
        f"/api/v1/namespaces/{{ns}}/{plural}": {
            "parameters": [ns],
            "get": op(f"list{kind}", f"List {kind} objects in a namespace", {"200": listed},
                      tag=kind),
            "post": op(f"create{kind}", f"Create a {kind}",
                       {"201": _json("Resource", "created"), **errors(400, 401, 409, 422)},
                       tag=kind, security=TOKEN, requestBody=_body(f"the new {kind}"))},
        f"/api/v1/namespaces/{{ns}}/{plural}/{{name}}": {
            "parameters": [ns, name],
            "get": op(f"read{kind}", f"Read a {kind}",
                      {"200": _json("Resource", "the object, with status"), **errors(404)},
                      tag=kind),
            "put": op(f"replace{kind}",
                      f"Replace a {kind} (409 if metadata.resourceVersion is stale)",
                      {"200": _json("Resource", "updated"),
                       **errors(400, 401, 404, 409, 422)},
                      tag=kind, security=TOKEN, requestBody=_body(f"the whole {kind}")),
            "delete": op(f"delete{kind}", f"Delete a {kind}",
                         {"200": _json("Resource", "its last state"),
                          **errors(401, 404, 409, 422)},
                         tag=kind, security=TOKEN, parameters=[rv])},
    }


def _route_list_or_stats() -> dict[str, Any]:
    """GET /api/v1/routes is two things on one path: every namespace's Routes (no query), and
    golden metrics per named Route rule of a service (`meshctl routes SERVICE`)."""
    return op("listRouteAllNamespaces", "List Route objects in every namespace; with "
              "?service=, golden metrics per Route rule of that service (meshctl routes)",
              {"200": _json({"oneOf": [{"$ref": _REF + "ResourceList"},
                                       {"$ref": _REF + "RouteStats"}]},
                            "without a query: a RouteList; with service: the rule metrics"),
               **errors(400, 404)},
              tag="Route", parameters=[
                  {"name": "service", "in": "query", "required": False,
                   "schema": {"type": "string"}, "description": "the service whose rules"},
                  {"name": "namespace", "in": "query", "required": False,
                   "schema": {"type": "string"}, "description": "its namespace (default)"},
                  {"name": "window", "in": "query", "required": False,
                   "schema": {"type": "string"}, "description": "how far back (30s)"}])


def _resource_paths() -> dict[str, Any]:
    paths: dict[str, Any] = {}
    for kind, plural in KIND_PLURALS.items():
        paths.update(_kind_paths(kind, plural))
    paths["/api/v1/routes"]["get"] = _route_list_or_stats()
    paths["/api/v1/apply"] = {"post": op(
        "apply", "Create or update many documents, all or nothing",
        {"200": _json("ApplyResult", "per object: created, configured or unchanged, and "
                                     "pruned for what an Istio document's earlier "
                                     "translation made and its new one does not"),
         **errors(400, 401, 409, 422)},
        tag="Apply", security=TOKEN,
        parameters=[{"name": "source", "in": "query", "required": False,
                     "schema": {"type": "string"}, "description": "file name used in errors"},
                    {"name": "dryRun", "in": "query", "required": False,
                     "schema": {"const": "All"},
                     "description": "server-side dry run: every check, nothing written"}],
        requestBody={"required": True, "content": {
            "application/yaml": {"schema": {"type": "string"}},
            "application/json": {"schema": {"oneOf": [
                {"type": "array", "items": {"$ref": _REF + "Resource"}},
                {"type": "object", "required": ["items"], "properties": {
                    "items": {"type": "array", "items": {"$ref": _REF + "Resource"}},
                    "origins": {"type": "array", "items": {
                        "type": "object", "properties": {
                            "source": {"type": "string"}, "doc": {"type": "integer"},
                            "translatedFrom": {
                                "type": "string",
                                "description": "the Istio document the item was translated "
                                               "from"}}}}}}]}}}})}
    paths["/api/v1/watch"] = {"get": op(
        "watch", "Server-sent events: ADDED, MODIFIED, DELETED, ERROR",
        {"200": {"description": "an event stream; data is the object as JSON",
                 "content": {"text/event-stream": {"schema": {"type": "string"}}}},
         **errors(400)},
        tag="Watch", parameters=[
            {"name": "kind", "in": "query", "required": False, "schema": {"type": "string"},
             "description": "only this kind (singular or plural)"},
            {"name": "namespace", "in": "query", "required": False,
             "schema": {"type": "string"}, "description": "only this namespace"},
            {"name": "replay", "in": "query", "required": False,
             "schema": {"type": "string"},
             "description": "true: first an ADDED event for every existing object"},
            {"name": "status", "in": "query", "required": False,
             "schema": {"type": "string"},
             "description": "true: also a MODIFIED event when an object's status changes "
                            "(a Canary's steps); every object is sent with its status"}])}
    paths["/api/v1/errors"] = {"get": op(
        "listErrors", "Hand edits the store rejected",
        {"200": _json("StoreErrors", "rejected sources with their precise errors")},
        tag="Status")}
    paths["/openapi.json"] = {"get": op(
        "openapi", "This document", {"200": _json({"type": "object"}, "OpenAPI 3.1")},
        tag="Status")}
    return paths


def catalog() -> dict[str, Any]:
    """Every path the control plane can serve, with its operations."""
    return {**_resource_paths(), **extra_paths()}


def _undocumented(path: str, method: str) -> dict[str, Any]:
    params = [path_param(name, name) for name in re.findall(r"\{(\w+)\}", path)]
    return {"summary": f"{method.upper()} {path} (not described yet)",
            "x-ami-undocumented": True, "security": READ,
            **({"parameters": params} if params else {}),
            "responses": {"default": {"description": "unknown"}}}


def openapi_document(router: web.UrlDispatcher | None = None) -> dict[str, Any]:
    """The OpenAPI 3.1 document of what ``router`` serves (None: the whole catalog)."""
    described = catalog()
    paths: dict[str, Any] = described
    if router is not None:
        served = served_operations(router)
        paths = {}
        for path, item in described.items():
            kept = {k: v for k, v in item.items() if k not in _METHODS or (path, k) in served}
            if any(k in _METHODS for k in kept):
                paths[path] = kept
        for path, method in sorted(served):
            if method not in described.get(path, {}):
                paths.setdefault(path, {})[method] = _undocumented(path, method)
    return {
        "openapi": "3.1.0",
        "info": {"title": "Ami control plane API", "version": VERSION,
                 "description": "Every error answers the Error schema. Reads are open to "
                                "loopback clients; see the bearer scheme."},
        "security": READ,
        "paths": paths,
        "components": {"schemas": SCHEMAS, "securitySchemes": {"bearer": BEARER}},
    }
