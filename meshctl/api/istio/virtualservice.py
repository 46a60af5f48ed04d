"""Istio VirtualService -> Ami Route: one Route per host, its `http` routes as Route rules."""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

from meshctl.api import fields as F
from meshctl.api.fields import Fields
from meshctl.api.hostnames import service_of
from meshctl.api.istio.bound import bound_gateway, gateway_rules
from meshctl.api.istio.common import (
    Translation,
    ami_doc,
    done,
    items,
    metadata,
    namespace_of,
    nested,
    refuse,
)

# Istio's retryOn conditions Ami has (refused-stream: an HTTP/2 stream reset, Ami's `reset`)
RETRY_ON = {"5xx": "5xx", "gateway-error": "gateway-error", "reset": "reset",
            "connect-failure": "connect-failure", "refused-stream": "reset",
            "retriable-status-codes": "retriable-status-codes", "cancelled": "cancelled",
            "deadline-exceeded": "deadline-exceeded", "internal": "internal",
            "resource-exhausted": "resource-exhausted", "unavailable": "unavailable"}
# match fields written the same way in an Ami match block
SAME_MATCH = {"uri": "path", "scheme": "scheme", "headers": "headers", "queryParams": "query",
              "withoutHeaders": "withoutHeaders", "ignoreUriCase": "ignoreUriCase",
              "sourceLabels": "sourceLabels", "sourceNamespace": "sourceNamespace"}


def translate(doc: Mapping[str, Any], origin: str) -> list[Translation]:
    """The Routes of a VirtualService for the mesh: one per host; named as it, or
    `<name>-<host>` (dots as dashes) when it has several hosts; and for each Istio Gateway
    it is bound to, an Ami Gateway `<gateway>.<name>` bound to it (meshctl.api.istio.bound)."""
    meta = metadata(doc)
    namespace = namespace_of(meta)
    f = Fields(doc.get("spec"), "spec")
    mesh, bound = _gateways(f, namespace)
    hosts = _hosts(f, mesh)
    _export_to(f)
    refuse(f, "tcp", "tcp routes; an Ami Route of a TCP service splits its connections by "
                     "weight: write that Route")
    refuse(f, "tls", "tls (SNI) routes; a Gateway's passthrough entries route TLS by server "
                     "name at the edge")
    refuse(f, "delegate", "delegate VirtualServices; write the delegate's http routes in "
                          "the VirtualService of the host")
    rules: list[dict[str, Any]] = []
    paths: list[tuple[str, str]] = []
    http = items(f, "http")
    if f.has("http") and not http:
        f.add(f.at("http"), "at least one http route is required")
    elif not f.has("http"):
        f.add(f.at("http"), "field is required (Ami translates http routes)")
    for index, (path, item) in enumerate(http):
        rule = _rule(f, path, item, hosts, namespace, paths, f"spec.rules[{index}]")
        rules.append(rule)
    at_gateways = gateway_rules(f, rules, http, namespace) if bound else []
    f.finish()
    name = str(meta.get("name")) if isinstance(meta.get("name"), str) else ""
    out = [bound_gateway(meta, name, gw, where, hosts, at_gateways, paths, origin)
           for where, gw in bound]
    routed = _one_per_service(hosts, namespace) if mesh else []
    for i, host in routed:
        route_name = name if len(routed) == 1 else f"{name}-{host.replace('.', '-')}"
        t = Translation(ami_doc("Route", {**meta, "name": route_name},
                                {"host": host, "rules": _for_host(rules, host, namespace)},
                                origin), origin)
        t.at("spec.host", f"spec.hosts[{i}]")
        t.at("spec.rules", "spec.http")
        if len(routed) > 1:
            t.at("metadata.name", "metadata.name")
        for ami, istio in paths:
            t.at(ami, istio)
        out.append(t)
    return out


def _hosts(f: Fields, mesh: bool) -> list[str]:
    """The hosts, lower-cased; a wildcard only at gateways (a Route is about one service)."""
    hosts = f.required("hosts", F.list_of(F.string(), 1), ())
    if not mesh:
        return [h.lower() for h in hosts]
    for i, host in enumerate(hosts):
        if "*" in host:
            f.add(f"{f.at('hosts')}[{i}]", f"not supported by Ami: wildcard host {host!r}; a "
                                           "Route is about one service (or ExternalService "
                                           "host): name each")
    return [h.lower() for h in hosts if "*" not in h]


def _one_per_service(hosts: list[str], namespace: str) -> list[tuple[int, str]]:
    """(index, host) of the hosts to make a Route for: the first spelling of each service
    (Istio reads `reviews` and `reviews.default.svc.cluster.local` as one host)."""
    out: list[tuple[int, str]] = []
    seen: set[object] = set()
    for i, host in enumerate(hosts):
        key = service_of(host, namespace) or host
        if key not in seen:
            seen.add(key)
            out.append((i, host))
    return out


def _gateways(f: Fields, namespace: str) -> tuple[bool, list[tuple[str, str]]]:
    """Whether the VirtualService is the mesh's (no `gateways`, or `mesh` listed), and
    (path, name) of the Istio Gateways of its namespace it is bound to."""
    if not f.has("gateways"):
        return True, []
    names = f.value("gateways", F.list_of(F.string(), 1), ())
    mesh, bound = False, list[tuple[str, str]]()
    for i, name in enumerate(names):
        where = f"{f.at('gateways')}[{i}]"
        scope, slash, gateway = name.rpartition("/")
        if name == "mesh":
            mesh = True
        elif slash and scope != namespace:
            f.add(where, f"not supported by Ami: Gateway {name!r} of another namespace; an Ami "
                         "gateway proxy serves the Gateways of its own namespace: apply the "
                         f"VirtualService in namespace {scope}")
        elif gateway not in (g for _, g in bound):
            bound.append((where, gateway))
    return mesh, bound


def _match_gateways(m: Fields) -> None:
    value = m.raw("gateways")
    if value is not None and value != ["mesh"]:
        m.add(m.at("gateways"), "not supported by Ami: gateways in a match; bind the "
                                "VirtualService with spec.gateways, one per set of routes")


def _export_to(f: Fields) -> None:
    value = f.raw("exportTo")
    if value not in (None, [], ["*"]):  # (an empty list: every namespace, as in Istio)
        f.add(f.at("exportTo"), "not supported by Ami: exportTo other than [\"*\"]; a Route "
                                "in its service's namespace is seen by every namespace")


def _for_host(rules: list[dict[str, Any]], host: str, namespace: str) -> list[dict[str, Any]]:
    """The rules with each backend (and mirror) naming ``host``'s service left implicit."""
    out = []
    for rule in rules:
        rule = dict(rule)
        if "backends" in rule:
            rule["backends"] = [_relative(b, host, namespace) for b in rule["backends"]]
        if "mirror" in rule:
            rule["mirror"] = _relative(rule["mirror"], host, namespace)
        out.append(rule)
    return out


def _relative(target: dict[str, Any], host: str, namespace: str) -> dict[str, Any]:
    target = dict(target)  # (shared by the Routes of every host)
    dest = target.pop("_host", None)
    same = dest is not None and (dest == host or (
        service_of(dest, namespace) is not None
        and service_of(dest, namespace) == service_of(host, namespace)))
    if dest is not None and not same:
        found = service_of(dest, namespace)
        target = {"service": found[0] if found else dest, **target}
    return target


def _rule(f: Fields, path: str, data: object, hosts: list[str], namespace: str,
          paths: list[tuple[str, str]], ami: str) -> dict[str, Any]:
    rule: dict[str, Any] = {}
    if not isinstance(data, Mapping):
        f.add(path, f"expected a mapping, got {F.describe(data)}")
        return rule
    r = Fields(data, path)
    if r.has("name"):
        rule["name"] = r.raw("name")
        paths.append((f"{ami}.name", r.at("name")))
    matches = [_match(r, p, m) for p, m in items(r, "match")]
    if matches:
        rule["matches"] = matches
        paths.append((f"{ami}.matches", r.at("match")))
        for i in range(len(matches)):
            for key in SAME_MATCH:
                paths.append((f"{ami}.matches[{i}].{SAME_MATCH[key]}",
                              f"{r.at('match')}[{i}].{key}"))
            paths.append((f"{ami}.matches[{i}].method", f"{r.at('match')}[{i}].method"))
    backends = [_destination(r, p, d, namespace, hosts) for p, d in items(r, "route")]
    if backends:
        _weights(r, backends)
        rule["backends"] = backends
        paths.append((f"{ami}.backends", r.at("route")))
        for j in range(len(backends)):
            where = f"{r.at('route')}[{j}].destination"
            paths.append((f"{ami}.backends[{j}].service", f"{where}.host"))
            paths.append((f"{ami}.backends[{j}].subset", f"{where}.subset"))
    for key, conv in (("timeout", _timeout), ("retries", _retries), ("fault", _fault),
                      ("headers", _same), ("rewrite", _rewrite), ("redirect", _redirect),
                      ("directResponse", _same), ("corsPolicy", _cors)):
        if r.has(key):
            value = conv(r, r.at(key), r.raw(key))
            target = "cors" if key == "corsPolicy" else key
            if value is not None:
                rule[target] = value
            paths.append((f"{ami}.{target}", r.at(key)))
    if isinstance(rule.get("rewrite"), Mapping) and "uri" in rule["rewrite"]:
        # Istio matches a block without uri as Envoy's prefix `/`, and rewrite.uri replaces
        # that prefix (`/a` -> `/v2a` for uri /v2), where Ami's rewrite of a block without
        # a path replaces the whole path: the prefix `/` says Istio's
        rule["matches"] = [m if "path" in m else {**m, "path": {"prefix": "/"}}
                           for m in rule.get("matches") or [{}]]
    for part in ("delay", "abort"):
        paths.append((f"{ami}.fault.{part}.percent",
                      f"{r.at('fault')}.{part}.percentage.value"))
    paths.append((f"{ami}.mirror.percent", r.at("mirrorPercentage") + ".value"
                  if r.has("mirrorPercentage") else r.at("mirrors") + "[0].percentage.value"))
    mirror = _mirror(r, namespace, hosts)
    if mirror is not None:
        rule["mirror"] = mirror
        paths.append((f"{ami}.mirror", r.at("mirror") if r.has("mirror") else r.at("mirrors")))
    refuse(r, "delegate", "delegate VirtualServices; write the delegate's http routes "
                          "here, in its place")
    refuse(r, "mirrorPercent", "the deprecated mirrorPercent; use mirrorPercentage")
    done(f, r)
    return rule


def _weights(r: Fields, backends: list[dict[str, Any]]) -> None:
    """Istio's weights as Ami's percentages: one destination gets everything whatever its
    weight; several split by weight / sum of weights (a missing weight is 0), which Ami
    writes as integers summing to 100: scaled when that is exact, else refused."""
    if len(backends) == 1:
        backends[0].pop("weight", None)
        return
    for b in backends:
        b.setdefault("weight", 0)
    weights = [b["weight"] for b in backends]
    if not all(isinstance(w, int) and not isinstance(w, bool) and w >= 0 for w in weights):
        return  # (Ami's parser says what is wrong with them)
    total = sum(weights)
    if total in (0, 100):
        return
    if all(w * 100 % total == 0 for w in weights):
        for b in backends:
            b["weight"] = b["weight"] * 100 // total
        return
    r.add(r.at("route"), f"weights {', '.join(map(str, weights))} split traffic in Istio "
                         f"by weight / {total}, which Ami's whole percentages cannot write "
                         "exactly: give weights summing to 100")


def _match(r: Fields, path: str, data: object) -> dict[str, Any]:
    out: dict[str, Any] = {}
    if not isinstance(data, Mapping):
        r.add(path, f"expected a mapping, got {F.describe(data)}")
        return out
    m = Fields(data, path)
    for key, target in SAME_MATCH.items():
        if m.has(key):
            value = m.raw(key)
            if key in ("headers", "queryParams", "withoutHeaders") and isinstance(value, Mapping):
                # Istio: an empty matcher, or the regex `*`, checks presence
                value = {k: {"present": True} if v in ({}, {"regex": "*"}) else v
                         for k, v in value.items()}
            out[target] = value
    without = out.get("withoutHeaders")
    if isinstance(without, Mapping) and isinstance(out.get("headers", {}), Mapping):
        # Istio reads a missing header as empty there: a matcher of the empty value keeps out
        # the requests without the header too, which Ami's says with a presence match
        present = {name: {"present": True} for name, matcher in without.items()
                   if _matches_empty(matcher) and name not in out.get("headers", {})}
        if present:
            out["headers"] = {**out.get("headers", {}), **present}
    if out.get("ignoreUriCase") is not None and not m.has("uri"):
        del out["ignoreUriCase"]  # Istio: it only bears on the uri matcher
    if m.has("method"):
        method = m.raw("method")
        if isinstance(method, Mapping) and set(method) == {"exact"}:
            out["method"] = method["exact"]
        else:
            m.add(m.at("method"), "not supported by Ami: a method matched other than by "
                                  "`exact` (write {exact: GET})")
    m.raw("name")  # a match's name only names its stats in Istio
    _match_gateways(m)
    refuse(m, "port", "matching the port: an Ami service serves one port")
    refuse(m, "authority", "matching the authority: a Route is about one host already; "
                           "write a VirtualService per host")
    refuse(m, "statPrefix", "statPrefix; name the rule (http[].name) for per-rule metrics")
    done(r, m)
    return out


def _matches_empty(matcher: object) -> bool:
    """Whether an Istio StringMatch holds for the empty value."""
    if not isinstance(matcher, Mapping):
        return False
    if matcher.get("exact") == "" or matcher.get("prefix") == "":
        return True
    regex = matcher.get("regex")
    try:
        return isinstance(regex, str) and re.fullmatch(regex, "") is not None
    except re.error:
        return False  # (Ami's parser says what is wrong with it)


def _destination(r: Fields, path: str, data: object, namespace: str,
                 hosts: list[str]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    if not isinstance(data, Mapping):
        r.add(path, f"expected a mapping, got {F.describe(data)}")
        return out
    d = Fields(data, path)
    dest = _target(d, "destination", namespace, hosts)
    out.update(dest)
    if d.has("weight"):
        out["weight"] = d.raw("weight")
    refuse(d, "headers", "header edits per destination; put them on the http route")
    done(r, d)
    return out


def _target(f: Fields, key: str, namespace: str, hosts: list[str]) -> dict[str, Any]:
    """A Destination {host, subset, port}: `_host` (resolved per Route host) and `subset`."""
    d = Fields(f.raw(key), f.at(key)) if isinstance(f.raw(key), Mapping) else None
    if d is None:
        if not f.has(key):
            f.add(f.at(key), "field is required")
        else:
            f.add(f.at(key), f"expected a mapping, got {F.describe(f.raw(key))}")
        return {}
    out: dict[str, Any] = {}
    host = d.required("host", F.string(), "")
    if host:
        found = service_of(host.lower(), namespace)
        # (the VirtualService's own host may be an outside one of mesh form: `httpbin.org`)
        if found is not None and found[1] != namespace and host.lower() not in hosts:
            d.add(d.at("host"), f"not supported by Ami: {host!r} is service {found[0]} of "
                                f"namespace {found[1]}, another namespace; a Route's backends "
                                "are services of its own namespace, unless the destination "
                                "is the Route's host")
        elif found is None and host.lower() not in hosts:
            d.add(d.at("host"), f"not supported by Ami: destination {host!r}, a host outside "
                                "the mesh that is not the VirtualService's own; route an "
                                "ExternalService host by a VirtualService of that host")
        out["_host"] = host.lower()
    if d.has("subset"):
        out["subset"] = d.raw("subset")
    # An Ami service serves one port: the destination's port is the one it has.
    d.optional("port", _port)
    done(f, d)
    return out


def _port(data: object, path: str) -> int:
    f = Fields(data, path)
    number = f.required("number", F.integer(1, 65535), 0)
    f.finish()
    return number


def _same(f: Fields, path: str, value: object) -> object:
    return value


def _timeout(f: Fields, path: str, value: object) -> object:
    # Istio: 0s disables the timeout, Ami's absent one
    return None if value in ("0s", "0") else value


def _retries(f: Fields, path: str, value: object) -> object:
    if not isinstance(value, Mapping):
        return value
    r = Fields(value, path)
    out: dict[str, Any] = {}
    for key in ("attempts", "perTryTimeout"):
        if r.has(key):
            out[key] = r.raw(key)
    out["allowNonIdempotent"] = True  # Envoy retries a request whatever its method
    if r.has("retryOn"):
        text = r.raw("retryOn")
        conditions: list[str] = []
        codes: list[int] = []
        for word in str(text).split(",") if isinstance(text, str) else []:
            word = word.strip()
            if word.isdigit():
                codes.append(int(word))
            elif word in RETRY_ON:
                conditions.append(RETRY_ON[word])
            elif word:
                r.add(r.at("retryOn"), f"not supported by Ami: retry condition {word!r}; "
                                       f"Ami retries on {', '.join(sorted(RETRY_ON))} and "
                                       "status codes")
        if not isinstance(text, str):
            r.add(r.at("retryOn"), f"expected a comma-separated string, got "
                                   f"{F.describe(text)}")
        if codes:
            conditions.append("retriable-status-codes")
            out["retriableStatusCodes"] = codes
        elif "retriable-status-codes" in conditions:
            r.add(r.at("retryOn"), "retriable-status-codes without a status code retries no "
                                   "status in Istio, and Ami needs the codes: list them "
                                   "(retryOn: \"retriable-status-codes,503\") or leave the "
                                   "word out")
        if conditions:
            out["retryOn"] = list(dict.fromkeys(conditions))
    else:  # Istio's conditions when none are given (Ami's own default differs)
        out["retryOn"] = ["connect-failure", "reset", "unavailable", "cancelled",
                          "retriable-status-codes"]
        out["retriableStatusCodes"] = [503]
    if r.has("backoff"):
        out["backoff"] = {"baseInterval": r.raw("backoff")}
    # each accepted as Istio's default, which is what Ami does
    if r.raw("retryRemoteLocalities") not in (None, False):
        refuse(r, "retryRemoteLocalities", "retryRemoteLocalities: true; a retry may go to "
                                           "any endpoint the locality settings allow")
    if r.raw("retryIgnorePreviousHosts") not in (None, True):
        refuse(r, "retryIgnorePreviousHosts", "retryIgnorePreviousHosts: false; a retry "
                                              "avoids the endpoints already tried when it "
                                              "can (Istio's default)")
    done(f, r)
    return out


def _fault(f: Fields, path: str, value: object) -> object:
    if not isinstance(value, Mapping):
        return value
    r = Fields(value, path)
    out: dict[str, Any] = {}
    for key, fields in (("delay", ("fixedDelay",)), ("abort", ("httpStatus", "grpcStatus"))):
        inner = nested(r, key)
        if inner is None:
            continue
        part: dict[str, Any] = {k: inner.raw(k) for k in fields if inner.has(k)}
        if inner.has("percentage"):
            part["percent"] = _percentage(inner, inner.at("percentage"), inner.raw("percentage"))
        elif not inner.has("percent"):
            # Envoy reads the missing value as 0%; Ami's percent defaults to 100
            noun = {"delay": "a delay", "abort": "an abort"}[key]
            inner.add(inner.at("percentage"), f"required by Ami: Istio injects {noun} "
                      "without percentage into no request at all; write percentage: {value: "
                      f"100}} to {key} every request, or leave the {key} out")
        refuse(inner, "percent", "the deprecated integer percent; use percentage: {value}")
        refuse(inner, "exponentialDelay", "exponentialDelay; use fixedDelay")
        refuse(inner, "http2Error", "http2Error; use httpStatus or grpcStatus")
        done(r, inner)
        out[key] = part
    done(f, r)
    return out


def _percentage(f: Fields, path: str, value: object) -> object:
    """Percent {value: N} as Ami's number (which Ami's parser checks, at ``path``.value)."""
    p = Fields(value, path) if isinstance(value, Mapping) else None
    if p is None:
        f.add(path, f"expected a mapping {{value: PERCENT}}, got {F.describe(value)}")
        return 100
    if not p.has("value"):
        p.add(p.at("value"), "field is required")
    result = p.raw("value")
    done(f, p)
    return result


def _rewrite(f: Fields, path: str, value: object) -> object:
    if not isinstance(value, Mapping):
        return value
    r = Fields(value, path)
    out = {k: r.raw(k) for k in ("uri", "authority") if r.has(k)}
    refuse(r, "uriRegexRewrite", "uriRegexRewrite; rewrite.uri replaces the matched prefix "
                                 "or the whole path")
    done(f, r)
    return out


def _redirect(f: Fields, path: str, value: object) -> object:
    if not isinstance(value, Mapping):
        return value
    r = Fields(value, path)
    out = {k: r.raw(k) for k in ("uri", "authority", "scheme", "port", "redirectCode")
           if r.has(k)}
    refuse(r, "derivePort", "derivePort; give port, or none for the scheme's own")
    done(f, r)
    return out


def _cors(f: Fields, path: str, value: object) -> object:
    if not isinstance(value, Mapping):
        return value
    r = Fields(value, path)
    out = {k: r.raw(k) for k in ("allowOrigins", "allowMethods", "allowHeaders",
                                 "exposeHeaders", "maxAge", "allowCredentials") if r.has(k)}
    if r.has("allowOrigin"):  # Istio's deprecated list of exact origins
        origins = r.raw("allowOrigin")
        out["allowOrigins"] = [{"exact": o} for o in origins] if isinstance(origins, list) \
            else origins
    if r.raw("unmatchedPreflights") not in (None, "UNSPECIFIED", "FORWARD"):
        refuse(r, "unmatchedPreflights", f"unmatchedPreflights: {r.raw('unmatchedPreflights')}"
                                         "; a preflight no origin matches is forwarded to the "
                                         "app (FORWARD, Istio's default)")
    done(f, r)
    return out


def _mirror(r: Fields, namespace: str, hosts: list[str]) -> dict[str, Any] | None:
    """`mirror` (with `mirrorPercentage`) or a `mirrors` list of one, as Ami's one mirror."""
    mirror: dict[str, Any] | None = None
    if r.has("mirror"):
        mirror = _target(r, "mirror", namespace, hosts)
        if r.has("mirrorPercentage"):
            mirror["percent"] = _percentage(r, r.at("mirrorPercentage"),
                                            r.raw("mirrorPercentage"))
    listed = items(r, "mirrors")
    if len(listed) > 1:
        r.add(r.at("mirrors"), "not supported by Ami: more than one mirror per route; keep "
                               "one")
    elif listed:
        if mirror is not None:
            r.add(r.at("mirrors"), "give mirror or mirrors, not both")
        path, item = listed[0]
        if isinstance(item, Mapping):
            m = Fields(item, path)
            mirror = _target(m, "destination", namespace, hosts)
            if m.has("percentage"):
                mirror["percent"] = _percentage(m, m.at("percentage"), m.raw("percentage"))
            done(r, m)
    elif not r.has("mirror") and r.has("mirrorPercentage"):
        r.add(r.at("mirrorPercentage"), "only goes with mirror")
    return mirror
