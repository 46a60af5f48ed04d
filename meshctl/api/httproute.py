"""Gateway API HTTPRoute (gateway.networking.k8s.io/v1) attached to Services (GAMMA): the parser.

Only what Ami can do is accepted; every other field is refused by name with the reason, so an
HTTPRoute never applies with part of it silently dropped. meshctl.api.gamma turns the parsed
routes into Ami Route rules.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from meshctl.api import fields as F
from meshctl.api.errors import fail
from meshctl.api.fields import Fields
from meshctl.api.matches import compile_regex
from meshctl.api.rules import editable_header_name, header_value

GATEWAY_API_VERSIONS = ("gateway.networking.k8s.io/v1", "gateway.networking.k8s.io/v1beta1")
PATH_TYPES = ("PathPrefix", "Exact", "RegularExpression")
VALUE_TYPES = ("Exact", "RegularExpression")
FILTER_TYPES = ("RequestHeaderModifier", "ResponseHeaderModifier", "RequestRedirect",
                "URLRewrite", "RequestMirror")
REDIRECT_STATUS = (301, 302, 303, 307, 308)
MAX_WEIGHT = 1_000_000
# GEP-2257 durations: up to four number+unit parts, `0s` allowed (no timeout)
GATEWAY_DURATION = r"^([0-9]{1,5}(h|m|s|ms)){1,4}$"
_NAME = F.string(F.DNS_LABEL, "a Service name (DNS-1123 label)")
_NAMESPACE = F.string(F.DNS_LABEL, "a namespace (DNS-1123 label)")
_PORT = F.integer(1, 65535)
_HEADER_NAME = F.string(F.HEADER_NAME, "an HTTP header name")
_METHOD = F.enum(("GET", "HEAD", "POST", "PUT", "DELETE", "CONNECT", "OPTIONS", "TRACE",
                  "PATCH"))
_URI = F.string(r'^/[!-"$->@-~]*$', "a path starting with '/', in visible ASCII without '?' "
                                    "or '#'")
_HOSTNAME = F.string(r"^[a-z0-9]([-a-z0-9.]*[a-z0-9])?$", "a lower-case host name")


@dataclass(frozen=True, slots=True)
class ServiceRef:
    """A Service: a parentRef or a backendRef (``weight`` for backends only)."""

    name: str
    namespace: str | None = None
    port: int | None = None
    weight: int = 1
    group: str = ""  # as written: "" or "core" (a parentRef's status echoes it)


@dataclass(frozen=True, slots=True)
class ValueMatch:
    """A header or query parameter matcher: `Exact` or `RegularExpression`."""

    name: str
    type: str
    value: str


@dataclass(frozen=True, slots=True)
class RouteMatch:
    """One HTTPRouteMatch (all of it must hold); no path in the document = PathPrefix `/`."""

    path_type: str = "PathPrefix"
    path: str = "/"
    headers: tuple[ValueMatch, ...] = ()
    query: tuple[ValueMatch, ...] = ()
    method: str | None = None
    # a GRPCRoute's: characters of its service and method match (what ranks it, the spec's)
    grpc_rank: tuple[int, int] | None = None


@dataclass(frozen=True, slots=True)
class HeaderModifier:
    """set / add (name, value) pairs and names to remove."""

    set: tuple[tuple[str, str], ...] = ()
    add: tuple[tuple[str, str], ...] = ()
    remove: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class PathModifier:
    """`ReplaceFullPath` or `ReplacePrefixMatch` and its value."""

    type: str
    value: str


@dataclass(frozen=True, slots=True)
class RedirectFilter:
    scheme: str | None = None
    hostname: str | None = None
    path: PathModifier | None = None
    port: int | None = None
    status_code: int = 302


@dataclass(frozen=True, slots=True)
class RewriteFilter:
    hostname: str | None = None
    path: PathModifier | None = None


@dataclass(frozen=True, slots=True)
class MirrorFilter:
    backend: ServiceRef
    percent: float = 100.0


@dataclass(frozen=True, slots=True)
class Retry:
    """HTTPRouteRetry (GEP-1731): up to ``attempts`` retries on ``codes`` (none: Ami's
    default conditions), ``backoff`` the first interval."""

    attempts: int
    codes: tuple[int, ...] = ()
    backoff: float | None = None


@dataclass(frozen=True, slots=True)
class RouteRule:
    """One HTTPRouteRule, its filters by type (each at most once)."""

    matches: tuple[RouteMatch, ...]
    backends: tuple[ServiceRef, ...]
    request_headers: HeaderModifier | None = None
    response_headers: HeaderModifier | None = None
    redirect: RedirectFilter | None = None
    rewrite: RewriteFilter | None = None
    mirror: MirrorFilter | None = None
    timeout: float | None = None  # timeouts.request; None = no timeout
    backend_timeout: float | None = None  # timeouts.backendRequest: each try's
    retry: Retry | None = None


@dataclass(frozen=True, slots=True)
class HTTPRouteSpec:
    """spec of an HTTPRoute: the Services it attaches to and its rules."""

    parents: tuple[ServiceRef, ...]
    rules: tuple[RouteRule, ...]


def _refuse(f: Fields, key: str, why: str) -> None:
    if f.has(key):
        f.add(f.at(key), f"not supported by Ami: {why}")


def _service_kind(f: Fields, default_gateway: bool) -> str:
    """group and kind of a reference: only the core group's Service; the group as written
    (`""`, or `core`, as the Gateway API's own GAMMA examples and Linkerd's write it)."""
    group = f.value("group", F.string(), None) if f.has("group") and f.raw("group") != "" \
        else ""
    written = group or ""
    if group == "core":
        group = ""
    kind = f.value("kind", F.string(), None)
    if kind is None and default_gateway:
        kind = "Gateway"  # the API's default for a parentRef
    kind = kind or "Service"
    if kind == "Service" and group == "":
        return written
    where = f.at("kind") if f.has("kind") or not default_gateway else f.path
    if kind == "Gateway" or group == "gateway.networking.k8s.io":
        f.add(where, "not supported by Ami: parentRefs to a Gateway (north-south); attach the "
                     "route to a Service (`group: \"\"`, `kind: Service`) and use Ami's Gateway "
                     "kind for ingress")
    else:
        f.add(where, f"not supported by Ami: {kind} of group {group or 'core'!r}; only a "
                     "Service (`group: \"\"`, `kind: Service`) can be referenced")
    return written


def _parse_parent(data: object, path: str) -> ServiceRef:
    f = Fields(data, path)
    group = _service_kind(f, default_gateway=True)
    name = f.required("name", _NAME, "")
    namespace = f.optional("namespace", _NAMESPACE)
    port = f.optional("port", _PORT)
    _refuse(f, "sectionName", "a Service parent is named by its port; use port")
    f.finish()
    return ServiceRef(name, namespace, port, group=group)


def _parse_backend(data: object, path: str) -> ServiceRef:
    f = Fields(data, path)
    _service_kind(f, default_gateway=False)
    name = f.required("name", _NAME, "")
    namespace = f.optional("namespace", _NAMESPACE)
    port = f.optional("port", _PORT)
    weight = f.value("weight", F.integer(0, MAX_WEIGHT), 1)
    _refuse(f, "filters", "filters per backendRef; put them on the rule")
    f.finish()
    return ServiceRef(name, namespace, port, weight)


def _value_match(data: object, path: str) -> ValueMatch:
    f = Fields(data, path)
    type_ = f.value("type", F.enum(VALUE_TYPES), "Exact")
    name = f.required("name", _HEADER_NAME, "")
    value = f.required("value", F.string(), "")
    if type_ == "RegularExpression":
        _compiles(f, value, f.at("value"))
    f.finish()
    return ValueMatch(name, type_, value)


def _compiles(f: Fields, pattern: str, where: str) -> None:
    try:
        compile_regex(pattern)
    except re.error as err:
        f.add(where, f"invalid regex {pattern!r}: {err}")


def _parse_path(data: object, path: str) -> tuple[str, str]:
    f = Fields(data, path)
    type_ = f.value("type", F.enum(PATH_TYPES), "PathPrefix")
    value = f.value("value", F.string(), "/")
    if type_ != "RegularExpression" and not value.startswith("/"):
        f.add(f.at("value"), f"must start with '/', got {value!r}")
    elif type_ == "RegularExpression":
        _compiles(f, value, f.at("value"))
    elif not _uri_ok(value):
        f.add(f.at("value"), "a path in visible ASCII without '?' or '#'")
    f.finish()
    if type_ == "PathPrefix" and len(value) > 1:
        value = value.rstrip("/") or "/"  # a trailing '/' of a prefix is ignored (the spec's)
    return type_, value


def _uri_ok(value: str) -> bool:
    try:
        _URI(value, "")
    except Exception:
        return False
    return True


def _parse_match(data: object, path: str) -> RouteMatch:
    f = Fields(data, path)
    path_type, value = f.value("path", _parse_path, ("PathPrefix", "/"))
    headers = f.value("headers", F.list_of(_value_match), ())
    query = f.value("queryParams", F.list_of(_value_match), ())
    method = f.optional("method", _METHOD)
    f.finish()
    # The spec: of matchers with one name, the first counts (headers regardless of case).
    return RouteMatch(path_type, value, _first(headers, lower=True), _first(query, lower=False),
                      method)


def _first(items: tuple[ValueMatch, ...], lower: bool) -> tuple[ValueMatch, ...]:
    seen: dict[str, ValueMatch] = {}
    for item in items:
        seen.setdefault(item.name.lower() if lower else item.name, item)
    return tuple(seen.values())


def _parse_header_modifier(data: object, path: str) -> HeaderModifier:
    f = Fields(data, path)
    pairs = F.list_of(_header_pair)
    set_ = f.value("set", pairs, ())
    add = f.value("add", pairs, ())
    remove = f.value("remove", F.list_of(editable_header_name), ())
    f.finish()
    return HeaderModifier(set_, add, tuple(name.lower() for name in remove))


def _header_pair(data: object, path: str) -> tuple[str, str]:
    f = Fields(data, path)
    name = f.required("name", editable_header_name, "")
    value = f.required("value", header_value, "")
    f.finish()
    return name.lower(), value


def _parse_path_modifier(data: object, path: str) -> PathModifier:
    f = Fields(data, path)
    type_ = f.required("type", F.enum(("ReplaceFullPath", "ReplacePrefixMatch")), "")
    key = "replaceFullPath" if type_ == "ReplaceFullPath" else "replacePrefixMatch"
    other = "replacePrefixMatch" if key == "replaceFullPath" else "replaceFullPath"
    value = f.required(key, _URI, "/") if type_ else "/"
    if f.has(other):
        f.add(f.at(other), f"only {key} goes with type {type_}")
    f.finish()
    return PathModifier(type_, value)


def _parse_redirect(data: object, path: str) -> RedirectFilter:
    f = Fields(data, path)
    scheme = f.optional("scheme", F.enum(("http", "https")))
    hostname = f.optional("hostname", _HOSTNAME)
    modifier = f.optional("path", _parse_path_modifier)
    if modifier is not None and modifier.type == "ReplacePrefixMatch":
        f.add(f.at("path") + ".type", "not supported by Ami: a redirect replaces the whole "
                                      "path; use ReplaceFullPath")
    port = f.optional("port", _PORT)
    code = f.value("statusCode", F.integer(), 302)
    if code not in REDIRECT_STATUS:
        f.add(f.at("statusCode"), f"must be one of {', '.join(map(str, REDIRECT_STATUS))}, "
                                  f"got {code}")
    if not any(f.has(k) for k in ("scheme", "hostname", "path", "port")):
        f.add(path, "set at least one of scheme, hostname, path, port (a redirect to the "
                    "request's own URL would loop)")
    f.finish()
    return RedirectFilter(scheme, hostname, modifier, port, code)


def _parse_rewrite(data: object, path: str) -> RewriteFilter:
    f = Fields(data, path)
    hostname = f.optional("hostname", _HOSTNAME)
    modifier = f.optional("path", _parse_path_modifier)
    if not f.has("hostname") and not f.has("path"):
        f.add(path, "set hostname, path or both")
    f.finish()
    return RewriteFilter(hostname, modifier)


def _parse_mirror(data: object, path: str) -> MirrorFilter:
    f = Fields(data, path)
    backend = f.required("backendRef", _parse_backend, ServiceRef(""))
    percent = f.optional("percent", F.integer(0, 100))
    fraction = f.optional("fraction", _parse_fraction)
    if f.has("percent") and f.has("fraction"):
        f.add(f.at("fraction"), "set percent or fraction, not both")
    f.finish()
    share = 100.0 if percent is None and fraction is None else (
        float(percent) if percent is not None else fraction or 0.0)
    return MirrorFilter(backend, share)


def _parse_fraction(data: object, path: str) -> float:
    f = Fields(data, path)
    numerator = f.required("numerator", F.integer(0), 0)
    denominator = f.value("denominator", F.integer(1), 100)
    if numerator > denominator:
        f.add(f.at("numerator"), "must not exceed denominator")
    f.finish()
    return 100.0 * numerator / denominator


def _parse_filter(data: object, path: str) -> tuple[str, object]:
    f = Fields(data, path)
    type_ = f.required("type", F.string(), "")
    fields = {"RequestHeaderModifier": ("requestHeaderModifier", _parse_header_modifier),
              "ResponseHeaderModifier": ("responseHeaderModifier", _parse_header_modifier),
              "RequestRedirect": ("requestRedirect", _parse_redirect),
              "URLRewrite": ("urlRewrite", _parse_rewrite),
              "RequestMirror": ("requestMirror", _parse_mirror)}
    value: object = None
    if type_ in fields:
        key, parse = fields[type_]
        value = f.required(key, parse, None)
        for other, _ in fields.values():
            if other != key and f.has(other):
                f.add(f.at(other), f"only {key} goes with type {type_}")
    elif type_:
        f.add(f.at("type"), f"not supported by Ami: filter {type_}; supported: "
                            f"{', '.join(FILTER_TYPES)}")
        for key in ("extensionRef", "cors", "externalAuth"):
            f.raw(key)  # refused through its type above, not once more as unknown
    f.finish()
    return type_, value


def _parse_timeouts(data: object, path: str) -> tuple[float | None, float | None]:
    """(request, backendRequest); 0s = none (the spec's)."""
    f = Fields(data, path)
    request = f.optional("request", _gateway_duration)
    backend = f.optional("backendRequest", _gateway_duration)
    if request and backend and backend > request:
        f.add(f.at("backendRequest"), "must not be longer than request")
    f.finish()
    return request or None, backend or None


def _parse_retry(data: object, path: str) -> Retry:
    f = Fields(data, path)
    attempts = f.value("attempts", F.integer(0, 100), 1)
    codes = f.value("codes", F.list_of(F.integer(400, 599)), ())
    backoff = f.optional("backoff", _gateway_duration)
    f.finish()
    return Retry(attempts, tuple(dict.fromkeys(codes)), backoff or None)


def _gateway_duration(data: object, path: str) -> float:
    text = F.string()(data, path)
    if not re.fullmatch(GATEWAY_DURATION, text):
        fail(path, f"expected a Gateway API duration like 10s, 500ms or 1m30s, got {text!r}")
    return F.duration(zero="no timeout")(text, path)


def _parse_rule(data: object, path: str) -> RouteRule:
    f = Fields(data, path)
    matches = f.value("matches", F.list_of(_parse_match), ()) or (RouteMatch(),)
    backends = f.value("backendRefs", F.list_of(_parse_backend), ())
    filters = f.value("filters", F.list_of(_parse_filter), ())
    request, backend = f.value("timeouts", _parse_timeouts, (None, None))
    retry = f.optional("retry", _parse_retry)
    f.raw("name")  # a rule's name (sectionName target): accepted, not used
    _refuse(f, "sessionPersistence", "use a DestinationPolicy's consistentHash (cookie) "
                                     "on the backend Service")
    by_type: dict[str, object] = {}
    for i, (type_, value) in enumerate(filters):
        where = f"{f.at('filters')}[{i}]"
        if type_ in by_type:
            f.add(where, f"filter {type_} appears twice; Ami allows each filter type once "
                         "per rule (RequestMirror too: one mirror per rule)")
        by_type.setdefault(type_, value)
    rewrite = by_type.get("URLRewrite")
    if (isinstance(rewrite, RewriteFilter) and rewrite.path is not None
            and rewrite.path.type == "ReplacePrefixMatch"
            and any(m.path_type != "PathPrefix" for m in matches)):
        f.add(f.at("matches"), "URLRewrite with ReplacePrefixMatch needs PathPrefix matches "
                               "only: the prefix is what it replaces")
    redirect = by_type.get("RequestRedirect")
    if redirect is not None:
        for key, what in (("URLRewrite", "filter URLRewrite"),
                          ("RequestHeaderModifier", "filter RequestHeaderModifier"),
                          ("ResponseHeaderModifier", "filter ResponseHeaderModifier"),
                          ("RequestMirror", "filter RequestMirror")):
            if key in by_type:
                f.add(f.at("filters"), f"{what} with RequestRedirect: Ami's redirect answers "
                                       "the request itself, with nothing else")
        if f.has("backendRefs"):
            f.add(f.at("backendRefs"), "a rule with RequestRedirect answers the request "
                                       "itself: remove backendRefs or the redirect")
    f.finish()
    return RouteRule(matches, backends,
                     by_type.get("RequestHeaderModifier"),  # type: ignore[arg-type]
                     by_type.get("ResponseHeaderModifier"),  # type: ignore[arg-type]
                     redirect,  # type: ignore[arg-type]
                     by_type.get("URLRewrite"),  # type: ignore[arg-type]
                     by_type.get("RequestMirror"),  # type: ignore[arg-type]
                     request, backend, retry)


def parse_httproute(data: object, path: str) -> HTTPRouteSpec:
    """Parse HTTPRoute.spec."""
    f = Fields(data, path)
    parents = f.required("parentRefs", F.list_of(_parse_parent, 1, "at least one parentRef "
                                                 "(a Service) is required"), ())
    # GAMMA: a route attached to a Service matches the Service's traffic whatever its Host
    # header; hostnames are accepted (routes shared with a Gateway carry them) and ignored.
    f.value("hostnames", F.list_of(F.string()), ())
    rules = f.value("rules", F.list_of(_parse_rule, 1), ()) or (
        RouteRule((RouteMatch(),), ()),)
    _refuse(f, "useDefaultGateways", "default Gateways (this route attaches to Services)")
    f.finish()
    return HTTPRouteSpec(parents, rules)


@dataclass(frozen=True, slots=True)
class GRPCRouteSpec(HTTPRouteSpec):
    """spec of a GRPCRoute: an HTTPRoute whose matches name gRPC methods (each a path,
    `/<service>/<method>`), so everything else about it is an HTTPRoute's."""
