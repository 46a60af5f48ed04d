"""OpenAPI operations of the control plane's status, describe, version and observability paths.

(The resource paths are built from the kind table in meshctl.controlplane.openapi.)
"""

from __future__ import annotations

from typing import Any

from meshctl.controlplane.openapischemas import ref

# Reads are open to loopback peers (and to all with --open-reads); elsewhere they need the
# token. Writes and privileged reads (tap, top, config_dump show request data) always do.
READ: list[dict[str, list[str]]] = [{}, {"bearer": []}]
TOKEN: list[dict[str, list[str]]] = [{"bearer": []}]


def json_body(schema: str | dict[str, Any], description: str) -> dict[str, Any]:
    return {"description": description, "content": {"application/json": {
        "schema": ref(schema) if isinstance(schema, str) else schema}}}


_WORDS = {400: "malformed request", 401: "missing or wrong bearer token", 404: "not found",
          409: "already exists, or stale resourceVersion", 422: "validation failed",
          502: "the proxy's admin listener did not answer"}


def errors(*codes: int, **special: dict[str, Any]) -> dict[str, Any]:
    """Error responses (the Error schema) by status code; ``special``: own responses by code
    (``_404=...``) for errors that carry more fields."""
    out = {str(code): json_body("Error", _WORDS[code]) for code in codes}
    out.update({key.lstrip("_"): value for key, value in special.items()})
    return out


def query(name: str, description: str, schema: dict[str, Any] | None = None,
          required: bool = False) -> dict[str, Any]:
    return {"name": name, "in": "query", "required": required, "description": description,
            "schema": schema or {"type": "string"}}


def path_param(name: str, description: str) -> dict[str, Any]:
    return {"name": name, "in": "path", "required": True, "description": description,
            "schema": {"type": "string"}}


def op(operation_id: str, summary: str, responses: dict[str, Any], *, tag: str,
       security: list[dict[str, list[str]]] | None = None,
       parameters: list[dict[str, Any]] | None = None, **more: Any) -> dict[str, Any]:
    out: dict[str, Any] = {"operationId": operation_id, "tags": [tag], "summary": summary,
                           "security": security or READ, "responses": responses}
    if parameters:
        out["parameters"] = parameters
    out.update(more)
    return out


_WINDOW = query("window", "how far back: 30s, 5m, 1h or seconds (1s to 10m; default 30s)")
_SERVICE = query("service", "a service name (its metrics name, e.g. reviews or api.b)")
_PROXY = path_param("name", "a proxy's name, as `meshctl proxy-status` lists it")
_SSE = {"text/event-stream": {"schema": {"type": "string"}}}


def _status_paths() -> dict[str, Any]:
    return {
        "/api/v1/proxies": {"get": op(
            "listProxies", "Every registered proxy and its sync state (meshctl proxy-status)",
            {"200": json_body("ProxyList", "the proxies")}, tag="Status")},
        "/api/v1/sync": {"get": op(
            "waitSynced", "Wait until every connected proxy ACKed a store revision",
            {"200": json_body("Synced", "every connected proxy runs that revision or later"),
             **errors(400), "504": json_body("NotSynced", "timed out; names the lagging "
                                             "proxies")},
            tag="Status", parameters=[
                query("storeVersion", "the store revision (default: the latest)",
                      {"type": "integer"}),
                query("timeout", "seconds to wait, up to 300 (default 30)",
                      {"type": "number"})])},
        "/api/v1/version": {"get": op(
            "getVersion", "The control plane's version and the proxies per Ami version",
            {"200": json_body("Version", "versions")}, tag="Status")},
        "/api/v1/services/{ns}/{name}/describe": {"get": op(
            "describeService", "What shapes one service's (or external host's) traffic "
            "(meshctl describe service)",
            {"200": json_body("ServiceDescription", "the description"),
             "404": json_body("UnknownService", "no such service or host; `known` lists "
                              "those there are, close matches first")},
            tag="Status", parameters=[path_param("ns", "the namespace"),
                                      path_param("name", "the service, or an ExternalService "
                                                 "host")])},
        "/metrics": {"get": op(
            "controlPlaneMetrics", "The control plane's own Prometheus metrics",
            {"200": {"description": "Prometheus text exposition format",
                     "content": {"text/plain": {"schema": {"type": "string"}}}}},
            tag="Status")},
    }


def _observe_paths() -> dict[str, Any]:
    return {
        "/api/v1/stat": {"get": op(
            "stat", "Golden metrics per service version (meshctl stat)",
            {"200": json_body("Stat", "a row per service version"), **errors(400)},
            tag="Observe", parameters=[_SERVICE, query("from", "only requests from this "
                                                       "workload"), _WINDOW])},
        "/api/v1/edges": {"get": op(
            "edges", "Who calls whom, with the mTLS share (meshctl edges)",
            {"200": json_body("Edges", "an edge per (source, destination) version pair"),
             **errors(400)}, tag="Observe", parameters=[_WINDOW])},
        "/api/v1/authz": {"get": op(
            "authz", "Requests allowed and denied per AuthorizationPolicy of a service "
            "(meshctl authz)",
            {"200": json_body("AuthzStats", "a row per policy, and [none]"),
             **errors(400, 404)},
            tag="Observe", parameters=[
                {**_SERVICE, "required": True},
                query("namespace", "the service's namespace (default)"), _WINDOW])},
        "/api/v1/top": {"get": op(
            "top", "Busiest paths from a short tap (meshctl top; privileged)",
            {"200": json_body("Top", "paths, busiest first"), **errors(401)},
            tag="Observe", security=TOKEN, parameters=[
                _SERVICE, query("seconds", "how long to tap, 0.1 to 10 (default 2)",
                                {"type": "number"})])},
        "/api/v1/tap": {"get": op(
            "tap", "Live requests as server-sent events (meshctl tap; privileged)",
            {"200": {"description": "an event stream; each data line is one request as JSON",
                     "content": _SSE}, **errors(401)},
            tag="Observe", security=TOKEN, parameters=[
                _SERVICE, query("path", "only paths starting with this"),
                query("method", "only this method"),
                query("n", "stop after this many requests (default: never)",
                      {"type": "integer"})])},
        "/api/v1/check": {"get": op(
            "check", "Grouped health checks of the mesh (meshctl check)",
            {"200": json_body("Check", "the groups of checks")}, tag="Observe")},
        "/api/v1/dashboard/state": {"get": op(
            "dashboardState", "Everything the dashboard page draws",
            {"200": json_body("DashboardState", "nodes, edges, series, routes, proxies"),
             **errors(400)}, tag="Observe", parameters=[
                query("window", "how far back (default 10s)")])},
        "/api/v1/proxies/{name}/config_dump": {"get": op(
            "proxyConfigDump", "A sidecar's running configuration (meshctl proxy-config; "
            "privileged)",
            {"200": json_body("ConfigDump", "its config"), **errors(401, 404, 502),
             "409": json_body("Error", "the proxy registered no admin address")},
            tag="Observe", security=TOKEN, parameters=[_PROXY])},
        "/api/v1/proxies/{name}/logging": {
            "parameters": [_PROXY],
            "get": op("getProxyLogging", "A sidecar's log levels",
                      {"200": json_body("ProxyLogging", "its loggers and levels"),
                       **errors(404, 502)}, tag="Observe"),
            "post": op("setProxyLogging", "Set a sidecar's log levels "
                       "(meshctl proxy-config log)",
                       {"200": json_body("ProxyLogging", "its loggers and levels now"),
                        **errors(400, 401, 404, 502)},
                       tag="Observe", security=TOKEN, parameters=[
                           query("level", "every logger's level (debug, info, warning, "
                                 "error)"),
                           query("reset", "true: back to the levels it started with")],
                       description="Any other query parameter sets the level of the logger "
                       "it names, e.g. `?proxy.tap=debug`.")},
        "/": {"get": _page("dashboardRoot")},
        "/dashboard": {"get": _page("dashboard")},
        "/static/{path}": {"get": op(
            "dashboardAsset", "The dashboard's scripts and styles",
            {"200": {"description": "the file"}, "404": {"description": "no such file"}},
            tag="Dashboard", parameters=[path_param("path", "the file")])},
    }


def _page(operation_id: str) -> dict[str, Any]:
    return op(operation_id, "The dashboard: a web page with the live service graph",
              {"200": {"description": "the page",
                       "content": {"text/html": {"schema": {"type": "string"}}}}},
              tag="Dashboard")


def extra_paths() -> dict[str, Any]:
    """The paths that ``meshctl serve`` mounts beside the resource API."""
    return {**_status_paths(), **_observe_paths()}
