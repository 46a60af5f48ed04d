"""The OpenAPI 3.1 description of the control plane's HTTP API, built from the kind table."""

from __future__ import annotations

from typing import Any

from meshctl.controlplane.store import KIND_PLURALS

_REF = "#/components/schemas/"


def _json(schema_name: str, description: str) -> dict[str, Any]:
    return {"description": description,
            "content": {"application/json": {"schema": {"$ref": _REF + schema_name}}}}


def _errors(*codes: int) -> dict[str, Any]:
    words = {400: "malformed request", 401: "missing or wrong bearer token", 404: "not found",
             409: "already exists, or stale resourceVersion", 422: "validation failed"}
    return {str(code): _json("Error", words[code]) for code in codes}


def _body(description: str) -> dict[str, Any]:
    return {"required": True, "description": description, "content": {
        "application/json": {"schema": {"$ref": _REF + "Resource"}},
        "application/yaml": {"schema": {"$ref": _REF + "Resource"}}}}


def _kind_paths(kind: str, plural: str) -> dict[str, Any]:
    ns = {"name": "ns", "in": "path", "required": True, "schema": {"type": "string"}}
    name = {"name": "name", "in": "path", "required": True, "schema": {"type": "string"}}
    rv = {"name": "resourceVersion", "in": "query", "required": False,
          "schema": {"type": "string"}, "description": "delete only if still at this version"}
    tag = [kind]
    return {
        f"/api/v1/{plural}": {"get": {
            "operationId": f"list{kind}AllNamespaces", "tags": tag,
            "summary": f"List {kind} objects in every namespace",
            "responses": {"200": _json("ResourceList", "the objects")}}},
        f"/api/v1/namespaces/{{ns}}/{plural}": {
            "parameters": [ns],
            "get": {"operationId": f"list{kind}", "tags": tag,
                    "summary": f"List {kind} objects in a namespace",
                    "responses": {"200": _json("ResourceList", "the objects")}},
            "post": {"operationId": f"create{kind}", "tags": tag, "summary": f"Create a {kind}",
                     "security": [{"bearer": []}], "requestBody": _body(f"the new {kind}"),
                     "responses": {"201": _json("Resource", "created"),
                                   **_errors(400, 401, 409, 422)}}},
        f"/api/v1/namespaces/{{ns}}/{plural}/{{name}}": {
            "parameters": [ns, name],
            "get": {"operationId": f"read{kind}", "tags": tag, "summary": f"Read a {kind}",
                    "responses": {"200": _json("Resource", "the object, with status"),
                                  **_errors(404)}},
            "put": {"operationId": f"replace{kind}", "tags": tag,
                    "summary": f"Replace a {kind} (409 if metadata.resourceVersion is stale)",
                    "security": [{"bearer": []}], "requestBody": _body(f"the whole {kind}"),
                    "responses": {"200": _json("Resource", "updated"),
                                  **_errors(400, 401, 404, 409, 422)}},
            "delete": {"operationId": f"delete{kind}", "tags": tag, "summary": f"Delete a {kind}",
                       "security": [{"bearer": []}], "parameters": [rv],
                       "responses": {"200": _json("Resource", "its last state"),
                                     **_errors(401, 404, 409)}}},
    }


_SCHEMAS: dict[str, Any] = {
    "Resource": {"type": "object", "required": ["apiVersion", "kind", "metadata", "spec"],
                 "properties": {
                     "apiVersion": {"const": "ami.mesh/v1alpha1"},
                     "kind": {"enum": list(KIND_PLURALS)},
                     "metadata": {"type": "object", "required": ["name"], "properties": {
                         "name": {"type": "string"}, "namespace": {"type": "string"},
                         "labels": {"type": "object",
                                    "additionalProperties": {"type": "string"}},
                         "resourceVersion": {"type": "string"}}},
                     "spec": {"type": "object"},
                     "status": {"type": "object", "readOnly": True}}},
    "ResourceList": {"type": "object", "properties": {
        "kind": {"type": "string"},
        "items": {"type": "array", "items": {"$ref": _REF + "Resource"}}}},
    "ApplyResult": {"type": "object", "properties": {"results": {"type": "array", "items": {
        "type": "object", "properties": {
            "kind": {"type": "string"}, "namespace": {"type": "string"}, "name": {"type": "string"},
            "result": {"enum": ["created", "configured", "unchanged"]},
            "resourceVersion": {"type": "string"},
            "object": {"$ref": _REF + "Resource",
                       "description": "dry run only: the object as the apply would store it"},
            "live": {"oneOf": [{"$ref": _REF + "Resource"}, {"type": "null"}],
                     "description": "dry run only: the object as stored now (null: new)"}}}},
        "dryRun": {"type": "boolean"}}},
    "Error": {"type": "object", "required": ["error", "reason"], "properties": {
        "error": {"type": "string"},
        "reason": {"enum": ["BadRequest", "Unauthorized", "NotFound", "Conflict", "Invalid",
                            "MethodNotAllowed"]}}},
}


def openapi_document() -> dict[str, Any]:
    """The whole OpenAPI 3.1 document served at ``/openapi.json``."""
    paths: dict[str, Any] = {}
    for kind, plural in KIND_PLURALS.items():
        paths.update(_kind_paths(kind, plural))
    paths["/api/v1/apply"] = {"post": {
        "operationId": "apply", "summary": "Create or update many documents, all or nothing",
        "security": [{"bearer": []}],
        "parameters": [{"name": "source", "in": "query", "required": False,
                        "schema": {"type": "string"}, "description": "file name used in errors"},
                       {"name": "dryRun", "in": "query", "required": False,
                        "schema": {"const": "All"},
                        "description": "server-side dry run: every check, nothing written"}],
        "requestBody": {"required": True, "content": {
            "application/yaml": {"schema": {"type": "string"}},
            "application/json": {"schema": {"type": "array",
                                            "items": {"$ref": _REF + "Resource"}}}}},
        "responses": {"200": _json("ApplyResult", "per object: created, configured or unchanged"),
                      **_errors(400, 401, 409, 422)}}}
    paths["/api/v1/watch"] = {"get": {
        "operationId": "watch", "summary": "Server-sent events: ADDED, MODIFIED, DELETED, ERROR",
        "parameters": [{"name": n, "in": "query", "required": False, "schema": {"type": "string"}}
                       for n in ("kind", "namespace", "replay")],
        "responses": {"200": {"description": "an event stream; data is the object as JSON",
                              "content": {"text/event-stream": {"schema": {"type": "string"}}}}}}}
    paths["/api/v1/errors"] = {"get": {
        "operationId": "listErrors", "summary": "Hand edits the store rejected",
        "responses": {"200": {"description": "rejected sources with their precise errors",
                              "content": {"application/json": {"schema": {"type": "object"}}}}}}}
    return {
        "openapi": "3.1.0",
        "info": {"title": "Ami control plane API", "version": "v1"},
        "paths": paths,
        "components": {"schemas": _SCHEMAS,
                       "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer"}}},
    }
