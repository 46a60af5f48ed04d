"""HTTPRoutes attached to a Service (GAMMA) as Ami Routes: one engine, the Route's.

The HTTPRoutes of one namespace for one parent Service become one Route of that namespace for
that service (a producer route when it is the service's namespace, a consumer route, for its
own namespace's callers, otherwise: what Route lookup already does). Their matches, across
all those HTTPRoutes, are ordered as the Gateway API says (Exact path, then the longest
PathPrefix, then regex; then method, most header matches, most query matches; then by
namespace/name, as Ami keeps no creation time; then rule order) and each becomes Route rules,
first match wins.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Container, Iterable, Mapping
from typing import Any

from meshctl.api.durations import format_duration
from meshctl.api.errors import Issue, ValidationError
from meshctl.api.hostnames import service_of
from meshctl.api.httproute import (
    HeaderModifier,
    HTTPRouteSpec,
    RouteMatch,
    RouteRule,
    ServiceRef,
)
from meshctl.api.kinds import RouteSpec
from meshctl.api.resources import Resource
from meshctl.api.rules import parse_rules

log = logging.getLogger(__name__)
Parent = tuple[str, str]  # (service, namespace)


def parents_of(r: Resource) -> list[Parent]:
    """The Services an HTTPRoute attaches to, each once, in order."""
    assert isinstance(r.spec, HTTPRouteSpec)
    found = [(p.name, p.namespace or r.namespace) for p in r.spec.parents]
    return list(dict.fromkeys(found))


def httproute_issues(r: Resource) -> list[Issue]:
    """What the parser cannot check alone: references to another namespace's backends."""
    assert isinstance(r.spec, HTTPRouteSpec)
    issues = []
    for i, rule in enumerate(r.spec.rules):
        refs = [(f"spec.rules[{i}].backendRefs[{j}]", b) for j, b in enumerate(rule.backends)]
        if rule.mirror is not None:
            refs.append((f"spec.rules[{i}].filters.requestMirror.backendRef",
                         rule.mirror.backend))
        issues += [Issue(r.source, r.doc, f"{where}.namespace",
                         "not supported by Ami: a backend in another namespace (Gateway API "
                         "needs a ReferenceGrant for it, which Ami does not implement); use "
                         "a Service of the route's namespace")
                   for where, ref in refs if ref.namespace not in (None, r.namespace)]
    return issues


def routes_of(resources: Iterable[Resource],
              services: Container[Parent] | None = None) -> list[Resource]:
    """The Route each (namespace, parent Service) of the HTTPRoutes among ``resources``
    makes, except where the namespace has an Ami Route for that service (validation refuses
    that; the Route wins if it slips in, e.g. in a hand-edited directory) and, given
    ``services`` (those with a registered sidecar), for a parent not among them: a route
    whose parent Service does not exist is not in effect (status NoMatchingParent), and
    takes effect when the Service's first sidecar registers."""
    items = list(resources)
    routed = {(r.namespace, service_key(r.spec.host, r.namespace)) for r in items
              if isinstance(r.spec, RouteSpec)}
    groups: dict[tuple[str, Parent], list[Resource]] = {}
    for r in sorted((r for r in items if isinstance(r.spec, HTTPRouteSpec)),
                    key=lambda r: (r.namespace, r.name)):
        for parent in parents_of(r):
            if services is None or parent in services:
                groups.setdefault((r.namespace, parent), []).append(r)
    out = []
    for (namespace, parent), routes in sorted(groups.items()):
        if (namespace, f"{parent[0]}.{parent[1]}") in routed:
            continue
        try:
            out.append(route_for(namespace, parent, routes))
        except ValidationError:  # a bug here: the other services' routes still apply
            log.exception("HTTPRoutes %s of namespace %s: no Route for %s.%s",
                          ",".join(r.name for r in routes), namespace, *parent)
    return out


def service_key(host: str, namespace: str) -> str:
    """`name.ns` of a Route host written in ``namespace`` (an outside host: itself)."""
    found = service_of(host, namespace)
    return host if found is None else f"{found[0]}.{found[1]}"


def route_for(namespace: str, parent: Parent, routes: list[Resource]) -> Resource:
    """The Route of ``namespace`` for ``parent`` made of ``routes`` (sorted by name)."""
    host = parent[0] if parent[1] == namespace else f"{parent[0]}.{parent[1]}"
    ordered = []
    for rank, r in enumerate(routes):
        assert isinstance(r.spec, HTTPRouteSpec)
        for i, rule in enumerate(r.spec.rules):
            for j, match in enumerate(rule.matches):
                ordered.append((_precedence(match), rank, i, j, match, rule))
    ordered.sort(key=lambda item: item[:4])
    rules: list[dict[str, Any]] = []
    for *_, match, rule in ordered:
        rules.extend(_rules(match, rule, parent[0]))
    raw = {"apiVersion": "ami.mesh/v1alpha1", "kind": "Route",
           "metadata": {"name": parent[0], "namespace": namespace},
           "spec": {"host": host, "rules": rules}}
    spec = RouteSpec(host, parse_rules(rules, "spec.rules"))  # a bug if this raises
    names = ",".join(r.name for r in routes)
    return Resource("Route", f"httproute:{names}", namespace, {}, None, spec, raw)


def _precedence(m: RouteMatch) -> tuple[int, int, int, int, int]:
    """Sorts first what the Gateway API says wins (smaller = earlier); a GRPCRoute's match by
    the characters of its service, then of its method, then its header matches."""
    if m.grpc_rank is not None:
        return (1, -m.grpc_rank[0], -m.grpc_rank[1], -len(m.headers), 0)
    kind = {"Exact": 0, "PathPrefix": 1, "RegularExpression": 2}[m.path_type]
    return (kind, -len(m.path), 0 if m.method else 1, -len(m.headers), -len(m.query))


def _rules(m: RouteMatch, rule: RouteRule, service: str) -> list[dict[str, Any]]:
    """The Route rules of one match of ``rule``: one, or two for a PathPrefix other than `/`
    (the path itself, and below it: a Gateway prefix matches whole path segments, `/a`
    matches `/a` and `/a/b` but not `/ab`), each with its own rewritten path."""
    conditions: dict[str, Any] = {}
    if m.method:
        conditions["method"] = m.method
    if m.headers:
        conditions["headers"] = {h.name.lower(): _matcher(h.type, h.value) for h in m.headers}
    if m.query:
        conditions["query"] = {q.name: _matcher(q.type, q.value) for q in m.query}
    full = _replaces_full_path(rule)
    variants: list[tuple[dict[str, str], str | None]]
    if m.path_type == "Exact":
        variants = [({"exact": m.path}, m.path)]
    elif m.path_type == "RegularExpression":
        variants = [({"regex": m.path}, None)]
    elif m.path == "/":
        variants = [({"regex": "/.*"} if full else {"prefix": "/"}, "/")]
    else:
        below = m.path + "/"
        variants = [({"exact": m.path}, m.path),
                    ({"regex": re.escape(below) + ".*"} if full else {"prefix": below}, below)]
    out = []
    for path, prefix in variants:
        out.append(_actions({"matches": [{"path": path, **conditions}]}, rule, prefix, service))
    if len(out) == 2 and out[0].keys() == out[1].keys() and "rewrite" not in out[0] \
            and "redirect" not in out[0]:
        # Same actions: one rule with both blocks (fewer rules in every snapshot).
        out[0]["matches"] += out[1]["matches"]
        out = out[:1]
    return out


def _replaces_full_path(rule: RouteRule) -> bool:
    modifiers = (rule.rewrite.path if rule.rewrite else None,
                 rule.redirect.path if rule.redirect else None)
    return any(m is not None and m.type == "ReplaceFullPath" for m in modifiers)


def _matcher(type_: str, value: str) -> dict[str, str]:
    return {"exact": value} if type_ == "Exact" else {"regex": value}


def _actions(out: dict[str, Any], rule: RouteRule, prefix: str | None,
             service: str) -> dict[str, Any]:
    """``out`` with what ``rule`` does; ``prefix``: the path this variant matched by (a
    ReplacePrefixMatch replaces it)."""
    if rule.redirect is not None:
        r = rule.redirect
        redirect: dict[str, Any] = {"redirectCode": r.status_code}
        if r.path is not None:
            redirect["uri"] = r.path.value
        if r.hostname is not None:
            redirect["authority"] = r.hostname
        if r.scheme is not None:
            redirect["scheme"] = r.scheme
        if r.port is not None:
            redirect["port"] = r.port
        elif r.scheme is not None:
            # The Gateway API: with a scheme and no port, the scheme's well-known port (the
            # request's own port means nothing to it), which the Location then leaves out.
            redirect["port"] = 443 if r.scheme == "https" else 80
        out["redirect"] = redirect
        return out
    headers: dict[str, Any] = {}
    if rule.request_headers is not None and rule.backends:
        headers["request"] = _edits(rule.request_headers)
    if rule.response_headers is not None:
        headers["response"] = _edits(rule.response_headers)
    backends = _backends(rule.backends, service)
    if backends is None:
        # No backend, or all of weight 0: the spec's 500 (nothing to send the request to).
        out["directResponse"] = {"status": 500}
        if "response" in headers:
            out["headers"] = {"response": headers["response"]}
        return out
    out["backends"] = backends
    out.update(_deadlines(rule))
    if rule.mirror is not None:
        mirror = {"service": rule.mirror.backend.name}
        out["mirror"] = mirror | ({"percent": rule.mirror.percent}
                                  if rule.mirror.percent != 100 else {})
    if headers:
        out["headers"] = headers
    rewrite: dict[str, str] = {}
    if rule.rewrite is not None and rule.rewrite.hostname is not None:
        rewrite["authority"] = rule.rewrite.hostname
    modifier = rule.rewrite.path if rule.rewrite is not None else None
    if modifier is not None and modifier.type == "ReplaceFullPath":
        rewrite["uri"] = modifier.value
    elif modifier is not None and prefix is not None:
        # the proxy replaces the matched prefix with uri; below a prefix, the '/' after it
        # stays (`/a` -> `/b`: `/a/x` -> `/b/x`; `/a` -> `/`: `/a/x` -> `/x`)
        value = modifier.value
        rewrite["uri"] = value if not prefix.endswith("/") or value.endswith("/") \
            else value + "/"
    if rewrite:
        out["rewrite"] = rewrite
    return out


def _deadlines(rule: RouteRule) -> dict[str, Any]:
    """timeouts and retry as a Route rule's `timeout` and `retries`: backendRequest is each
    try's deadline (`perTryTimeout`) when there are retries; without, the shorter of the two
    timeouts is the one request's."""
    out: dict[str, Any] = {}
    retry, request, backend = rule.retry, rule.timeout, rule.backend_timeout
    if retry is None or retry.attempts == 0:
        limits = [t for t in (request, backend) if t is not None]
        if limits:
            out["timeout"] = format_duration(min(limits))
        return out
    if request is not None:
        out["timeout"] = format_duration(request)
    retries: dict[str, Any] = {"attempts": retry.attempts}
    if backend is not None:
        retries["perTryTimeout"] = format_duration(backend)
    if retry.codes:
        retries["retryOn"] = ["connect-failure", "reset", "retriable-status-codes"]
        retries["retriableStatusCodes"] = list(retry.codes)
    if retry.backoff is not None:
        retries["backoff"] = {"baseInterval": format_duration(retry.backoff),
                              "maxInterval": format_duration(retry.backoff * 10)}
    out["retries"] = retries
    return out


def _edits(m: HeaderModifier) -> dict[str, Any]:
    edits: dict[str, Any] = {}
    if m.set:
        edits["set"] = dict(m.set)
    if m.add:
        edits["add"] = dict(m.add)
    if m.remove:
        edits["remove"] = list(m.remove)
    return edits


def _backends(refs: tuple[ServiceRef, ...], service: str) -> list[dict[str, Any]] | None:
    """Relative weights as Ami's integer percentages (largest remainder: they sum to 100);
    one Service named twice counts once with both weights. None: nothing to send to."""
    weights: dict[str, int] = {}
    for ref in refs:
        weights[ref.name] = weights.get(ref.name, 0) + ref.weight
    total = sum(weights.values())
    if total == 0:
        return None
    if len(weights) == 1:
        (name,) = weights
        return [{"service": name}]
    exact = {name: 100 * w / total for name, w in weights.items()}
    shares = {name: int(v) for name, v in exact.items()}
    for name in sorted(exact, key=lambda n: shares[n] - exact[n])[:100 - sum(shares.values())]:
        shares[name] += 1
    return [{"service": name, "weight": shares[name]} for name in weights]


def parent_status(r: Resource, services: Mapping[Parent, object] | Iterable[Parent],
                  routes: Iterable[Resource]) -> dict[str, Any]:
    """status.parents of an HTTPRoute: per parent Service, `Accepted` (False: the Service is
    unknown to the mesh, or an Ami Route of the route's namespace has it) and `ResolvedRefs`
    (False, BackendNotFound: a backend Service with no registered sidecar)."""
    assert isinstance(r.spec, HTTPRouteSpec)
    known = set(services)
    routed = {(x.namespace, service_key(x.spec.host, x.namespace)): x for x in routes
              if isinstance(x.spec, RouteSpec)}
    missing = sorted({b.name for rule in r.spec.rules
                      for b in (*rule.backends,
                                *((rule.mirror.backend,) if rule.mirror else ()))
                      if (b.name, r.namespace) not in known})
    parents = []
    # One entry per parentRef as written (its port too): a client finds the status of a
    # parentRef of its spec by comparing the whole reference, as the Gateway API's own
    # conformance helpers do.
    for group, name, namespace, port in dict.fromkeys(
            (p.group, p.name, p.namespace or r.namespace, p.port) for p in r.spec.parents):
        ref: dict[str, Any] = {"group": group, "kind": "Service", "name": name,
                               "namespace": namespace}
        if port is not None:
            ref["port"] = port
        other = routed.get((r.namespace, f"{name}.{namespace}"))
        if other is not None:
            accepted = _condition("Accepted", False, "Conflicted",
                                  f"Route {other.namespace}/{other.name} already routes "
                                  f"{name}.{namespace} for this namespace; it is in effect, "
                                  "this HTTPRoute is not")
        elif (name, namespace) not in known:
            accepted = _condition("Accepted", False, "NoMatchingParent",
                                  f"no sidecar of service {name} in namespace {namespace} "
                                  "is registered; the route applies once one is")
        else:
            accepted = _condition("Accepted", True, "Accepted",
                                  "in effect for callers of "
                                  + ("every namespace" if namespace == r.namespace else
                                     f"namespace {r.namespace}"))
        resolved = (_condition("ResolvedRefs", False, "BackendNotFound",
                               "no sidecar registered for backend service(s) "
                               + ", ".join(missing) + ": their requests get 503")
                    if missing else _condition("ResolvedRefs", True, "ResolvedRefs",
                                               "every backend service is registered"))
        parents.append({"parentRef": ref, "controllerName": CONTROLLER,
                        "conditions": [accepted, resolved]})
    return {"parents": parents}


CONTROLLER = "ami.mesh/controlplane"


def _condition(type_: str, ok: bool, reason: str, message: str) -> dict[str, str]:
    return {"type": type_, "status": "True" if ok else "False", "reason": reason,
            "message": message}
