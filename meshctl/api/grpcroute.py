"""Gateway API GRPCRoute attached to Services (GAMMA): parsed into the HTTPRoute model, a gRPC
method match being a path match (`/<service>/<method>`), so one translation serves both."""

from __future__ import annotations

import re

from meshctl.api import fields as F
from meshctl.api.fields import Fields
from meshctl.api.httproute import (
    VALUE_TYPES,
    GRPCRouteSpec,
    RouteMatch,
    RouteRule,
    _parse_backend,
    _parse_filter,
    _parse_parent,
    _refuse,
    _value_match,
)
from meshctl.api.matches import compile_regex

GRPC_FILTER_TYPES = ("RequestHeaderModifier", "ResponseHeaderModifier", "RequestMirror")
# a gRPC service (`package.Service`) and method name: what a request path is made of
GRPC_NAME = r"^[A-Za-z_][A-Za-z0-9_.]*$"
_NAME = F.string(GRPC_NAME, "a gRPC service or method name like ami.test.Echo")
_EVERY = RouteMatch(grpc_rank=(0, 0))  # no match: every call, ranked last


def _parse_method(data: object, path: str) -> tuple[str, str, tuple[int, int]]:
    """(path type, path, rank) of a GRPCMethodMatch."""
    f = Fields(data, path)
    type_ = f.value("type", F.enum(VALUE_TYPES), "Exact")
    conv = _NAME if type_ == "Exact" else F.string()
    service = f.optional("service", conv)
    method = f.optional("method", conv)
    if type_ == "RegularExpression":
        for key, value in (("service", service), ("method", method)):
            if value is not None and not _compiles(value):
                f.add(f.at(key), f"invalid regex {value!r}")
    if not f.has("service") and not f.has("method"):
        f.add(path, "set service, method or both")
    f.finish()
    rank = (len(service or ""), len(method or ""))
    if type_ == "RegularExpression":
        return "RegularExpression", f"/({service or '[^/]+'})/({method or '[^/]+'})", rank
    if service and method:
        return "Exact", f"/{service}/{method}", rank
    if service:
        return "PathPrefix", f"/{service}", rank
    return "RegularExpression", f"/[^/]+/{re.escape(method or '')}", rank


def _compiles(pattern: str) -> bool:
    try:
        compile_regex(pattern)
    except re.error:
        return False
    return True


def _parse_match(data: object, path: str) -> RouteMatch:
    f = Fields(data, path)
    path_type, value, rank = f.value("method", _parse_method, ("PathPrefix", "/", (0, 0)))
    headers = f.value("headers", F.list_of(_value_match), ())
    f.finish()
    return RouteMatch(path_type, value, headers, grpc_rank=rank)


def _parse_rule(data: object, path: str) -> RouteRule:
    f = Fields(data, path)
    matches = f.value("matches", F.list_of(_parse_match), ()) or (_EVERY,)
    backends = f.value("backendRefs", F.list_of(_parse_backend), ())
    filters = f.value("filters", F.list_of(_parse_filter), ())
    f.raw("name")  # accepted, not used
    _refuse(f, "sessionPersistence", "use a DestinationPolicy's consistentHash on the backend "
                                     "Service")
    by_type: dict[str, object] = {}
    for i, (type_, value) in enumerate(filters):
        where = f"{f.at('filters')}[{i}]"
        if type_ not in GRPC_FILTER_TYPES and type_:
            f.add(f"{where}.type", f"a GRPCRoute has no filter {type_}; supported: "
                                   f"{', '.join(GRPC_FILTER_TYPES)}")
        elif type_ in by_type:
            f.add(where, f"filter {type_} appears twice; Ami allows each filter type once "
                         "per rule")
        by_type.setdefault(type_, value)
    f.finish()
    return RouteRule(matches, backends,
                     by_type.get("RequestHeaderModifier"),  # type: ignore[arg-type]
                     by_type.get("ResponseHeaderModifier"),  # type: ignore[arg-type]
                     None, None,
                     by_type.get("RequestMirror"))  # type: ignore[arg-type]


def parse_grpcroute(data: object, path: str) -> GRPCRouteSpec:
    """Parse GRPCRoute.spec."""
    f = Fields(data, path)
    parents = f.required("parentRefs", F.list_of(_parse_parent, 1, "at least one parentRef "
                                                 "(a Service) is required"), ())
    f.value("hostnames", F.list_of(F.string()), ())  # ignored for Service parents (GAMMA)
    rules = f.value("rules", F.list_of(_parse_rule, 1), ()) or (RouteRule((_EVERY,), ()),)
    f.finish()
    return GRPCRouteSpec(parents, rules)
