"""Istio AuthorizationPolicy -> Ami AuthorizationPolicy: sources, operations and conditions.

Istio's `when` conditions about the caller or the port (`source.namespace`, `source.ip`,
`remote.ip`, `source.principal`, `request.auth.principal`, `destination.port`) become fields of
every `from` (or `to`) entry of their rule: a rule is (any from) and (every when), which is
any (from and when). Header and claim conditions stay conditions.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

from meshctl.api import fields as F
from meshctl.api.fields import Fields
from meshctl.api.istio.common import (
    Translation,
    ami_doc,
    done,
    items,
    metadata,
    namespace_of,
    nested,
    not_root,
    service_selector,
)
from meshctl.api.istio.principals import (
    Entry,
    Refused,
    merge,
    not_principal_factors,
    principal_alternatives,
    product,
)

SAME_SOURCE = ("requestPrincipals", "notRequestPrincipals", "namespaces", "notNamespaces",
               "ipBlocks", "notIpBlocks", "remoteIpBlocks", "notRemoteIpBlocks")
SAME_OPERATION = ("hosts", "notHosts", "methods", "notMethods", "paths", "notPaths")
# `when` keys about the caller: the `from` field (and its `not` field) they become
SOURCE_KEYS = {"source.namespace": "namespaces", "source.ip": "ipBlocks",
               "remote.ip": "remoteIpBlocks", "request.auth.principal": "requestPrincipals"}
_HEADER = re.compile(r"^request\.headers\[([^\[\]]+)\]$")
_CLAIM = re.compile(r"^request\.auth\.claims\[([^\[\]]+)\]$")
KNOWN_KEYS = ("request.headers[NAME]", "request.auth.claims[NAME]", *SOURCE_KEYS,
              "source.principal", "destination.port")
Alternatives = list[tuple[Entry, int]]  # Ami entries, each with the Istio item it came from


def translate(doc: Mapping[str, Any], origin: str) -> list[Translation]:
    """The Ami AuthorizationPolicy of an Istio one, named as it."""
    meta = metadata(doc)
    namespace = namespace_of(meta)
    f = Fields(doc.get("spec", {}), "spec")
    not_root(f, meta, "AuthorizationPolicy", "write it in each namespace it is for")
    spec: dict[str, Any] = {}
    selector = service_selector(f, "AuthorizationPolicy")
    if selector is not None:
        spec["selector"] = selector
    if f.has("action"):  # (AUDIT too: Ami's marks what it matches in the access log)
        spec["action"] = f.raw("action")
    if f.has("provider"):
        spec["provider"] = f.raw("provider")
    paths = [("spec.action", "spec.action"), ("spec.provider", "spec.provider"),
             ("spec.selector.service", "spec.selector.matchLabels.app")]
    rules: list[dict[str, Any]] = []
    allow = f.raw("action") in (None, "ALLOW")
    for path, data in items(f, "rules"):
        rule = _rule(f, path, data, namespace, f"spec.rules[{len(rules)}]", paths, allow)
        if rule is not None:  # (a rule no caller can match: left out, as it never applies)
            rules.append(rule)
    if f.has("rules"):
        spec["rules"] = rules
    f.finish()
    t = Translation(ami_doc("AuthorizationPolicy", meta, spec, origin), origin)
    for ami, istio in paths:
        t.at(ami, istio)
    return [t]


def _rule(f: Fields, path: str, data: object, namespace: str, ami: str,
          paths: list[tuple[str, str]], allow: bool) -> dict[str, Any] | None:
    if not isinstance(data, Mapping):
        f.add(path, f"expected a mapping, got {F.describe(data)}")
        return None
    r = Fields(data, path)
    for key in ("from", "to", "when"):
        if r.raw(key) == []:
            r.add(r.at(key), "must have at least one item (or leave it out)")
    froms: Alternatives = []
    for i, (p, item) in enumerate(items(r, "from")):
        froms += [(e, i) for e in _source(r, p, item, namespace)]
    tos: Alternatives = []
    for i, (p, item) in enumerate(items(r, "to")):
        tos += [(e, i) for e in _operation(r, p, item)]
    conditions: list[tuple[dict[str, Any], int]] = []  # each with its `when` index
    source_factors: list[list[Entry]] = []
    port_factors: list[list[Entry]] = []
    for i, (p, item) in enumerate(items(r, "when")):
        found = _condition(r, p, item, source_factors, port_factors, allow)
        if found is not None:
            conditions.append((found, i))
    froms = _apply(r, r.at("when"), froms if r.has("from") else [({}, -1)], source_factors)
    tos = _apply(r, r.at("when"), tos if r.has("to") else [({}, -1)], port_factors)
    done(f, r)
    if not froms or not tos:
        return None
    out: dict[str, Any] = {}
    if froms != [({}, -1)]:
        out["from"] = [e for e, _ in froms]
        for k, (_, i) in enumerate(froms):
            if i >= 0:
                paths.append((f"{ami}.from[{k}]", f"{path}.from[{i}].source"))
    if tos != [({}, -1)]:
        out["to"] = [e for e, _ in tos]
        for k, (_, i) in enumerate(tos):
            if i >= 0:
                paths.append((f"{ami}.to[{k}]", f"{path}.to[{i}].operation"))
    if conditions:
        out["when"] = [c for c, _ in conditions]
        paths.append((f"{ami}.when", f"{path}.when"))
        for k, (_, i) in enumerate(conditions):
            paths.append((f"{ami}.when[{k}]", f"{path}.when[{i}]"))
            paths.append((f"{ami}.when[{k}].header", f"{path}.when[{i}].key"))
            paths.append((f"{ami}.when[{k}].claim", f"{path}.when[{i}].key"))
    paths.append((ami, path))
    return out


def _apply(r: Fields, where: str, alternatives: Alternatives,
           factors: list[list[Entry]]) -> Alternatives:
    for factor in factors:
        merged: Alternatives = []
        for entry, origin in alternatives:
            for other in factor:
                try:
                    both = merge(entry, other)
                except Refused as err:
                    r.add(where, f"not supported by Ami: {err}")
                    return alternatives
                if both is not None and (both, origin) not in merged:
                    merged.append((both, origin))
        alternatives = merged
    return alternatives


def _source(r: Fields, path: str, data: object, namespace: str) -> list[Entry]:
    """A `from` item's source as Ami `from` entries (several: any of them)."""
    wrapper = Fields(data, path) if isinstance(data, Mapping) else None
    if wrapper is None:
        r.add(path, f"expected a mapping {{source: ...}}, got {F.describe(data)}")
        return []
    s = nested(wrapper, "source")
    if s is None:
        wrapper.add(wrapper.at("source"), "field is required")
        done(r, wrapper)
        return []
    base: Entry = {k: s.raw(k) for k in SAME_SOURCE if s.has(k)}  # type: ignore[misc]
    for key in ("namespaces", "notNamespaces"):
        _no_namespace_pattern(s, s.at(key), base.get(key))
    alternatives: list[Entry] = [base]
    principals = _strings(s, "principals") + [
        _account(a, namespace) for a in _strings(s, "serviceAccounts")]
    try:
        if s.has("principals") or s.has("serviceAccounts"):
            alternatives = product(alternatives, principal_alternatives(principals))
    except Refused as err:
        s.add(s.at("principals" if s.has("principals") else "serviceAccounts"),
              f"not supported by Ami: {err}")
    negated = _strings(s, "notPrincipals") + [
        _account(a, namespace) for a in _strings(s, "notServiceAccounts")]
    try:
        for factor in not_principal_factors(negated):
            alternatives = product(alternatives, factor)
    except Refused as err:
        s.add(s.at("notPrincipals"), f"not supported by Ami: {err}")
    if not s.has("principals") and not s.has("serviceAccounts") and not base and \
            not any(s.has(k) for k in ("notPrincipals", "notServiceAccounts")):
        s.add(s.path, "set at least one field of the source")
    done(wrapper, s)
    done(r, wrapper)
    return alternatives


def _no_namespace_pattern(f: Fields, path: str, value: object) -> None:
    """Refuse Istio's namespace patterns (`prod-*`, `*`): Ami compares namespaces exactly."""
    found = [v for v in value if isinstance(v, str) and "*" in v] if isinstance(
        value, list) else []
    if found:
        f.add(path, f"not supported by Ami: Istio's namespace pattern {found[0]!r}; Ami "
                    "compares namespaces exactly: list them")


def _strings(f: Fields, key: str) -> list[str]:
    value = f.raw(key)
    if value is None:
        return []
    if not isinstance(value, list) or not value or not all(
            isinstance(v, str) and v for v in value):
        f.add(f.at(key), "expected a non-empty list of strings")
        return []
    return value


def _account(text: str, namespace: str) -> str:
    """A serviceAccounts item (`NS/SA`, or `SA` of the policy's namespace) as a principal."""
    ns, _, sa = text.rpartition("/")
    return f"cluster.local/ns/{ns or namespace}/sa/{sa}"


def _operation(r: Fields, path: str, data: object) -> list[Entry]:
    wrapper = Fields(data, path) if isinstance(data, Mapping) else None
    if wrapper is None:
        r.add(path, f"expected a mapping {{operation: ...}}, got {F.describe(data)}")
        return []
    o = nested(wrapper, "operation")
    if o is None:
        wrapper.add(wrapper.at("operation"), "field is required")
        done(r, wrapper)
        return []
    out: Entry = {k: o.raw(k) for k in SAME_OPERATION if o.has(k)}  # type: ignore[misc]
    for key in ("paths", "notPaths"):
        odd = [p for p in out.get(key) or [] if isinstance(p, str) and (
            (p.startswith("*") and p != "*") or "{*" in p)]
        if odd:
            kind = "path template" if "{*" in odd[0] else "suffix match"
            o.add(o.at(key), f"not supported by Ami: Istio's {kind} {odd[0]!r}; Ami matches a "
                             "path exactly, by prefix (`/api/*`) or any (`*`): list the paths")
    for key in ("ports", "notPorts"):
        if o.has(key):
            out[key] = _ports(o.raw(key))
    done(wrapper, o)
    done(r, wrapper)
    return [out]


def _ports(value: object) -> Any:
    """Istio writes ports as strings ("8080"); Ami as numbers (its parser checks them)."""
    if isinstance(value, list):
        return [int(v) if isinstance(v, str) and v.isdigit() else v for v in value]
    return value


def _condition(r: Fields, path: str, data: object, sources: list[list[Entry]],
               ports: list[list[Entry]], allow: bool) -> dict[str, Any] | None:
    """A `when` item: an Ami condition (returned), or a factor of ``sources`` or ``ports``."""
    c = Fields(data, path) if isinstance(data, Mapping) else None
    if c is None:
        r.add(path, f"expected a mapping, got {F.describe(data)}")
        return None
    out: dict[str, Any] | None = None
    key = c.required("key", F.string(), "")
    values = c.raw("values")
    not_values = c.raw("notValues")
    if values is None and not_values is None:
        c.add(c.path, "set at least one of values, notValues")
    header, claim = _HEADER.match(key), _CLAIM.match(key)
    if header or claim:
        for field, listed in (("values", values), ("notValues", not_values)):
            if isinstance(listed, list) and any(isinstance(v, str) and (
                    v.startswith("*") or v.endswith("*")) for v in listed):
                c.add(c.at(field), "not supported by Ami: prefix, suffix or presence (`*`) "
                                   "matches; Ami compares condition values exactly")
        if allow and values is None and not_values is not None:
            # Istio's `not` of a header (claim) matcher holds for a request without it; an
            # Ami condition counts what it cannot see against the caller of an ALLOW rule
            what = "header" if header else "claim (or token)"
            c.add(c.at("notValues"), "not supported by Ami in an ALLOW policy: notValues "
                  f"without values; Istio's admits a request without the {what}, Ami's "
                  "admits none it knows nothing of: give the values to allow, or deny the "
                  "notValues as values of a DENY policy")
        out = {"header": header.group(1)} if header else {
            "claim": claim.group(1)}  # type: ignore[union-attr]
        out.update({k: v for k, v in (("values", values), ("notValues", not_values))
                    if v is not None})
    elif key in SOURCE_KEYS:
        if key == "source.namespace":
            for name in ("values", "notValues"):
                _no_namespace_pattern(c, c.at(name), c.raw(name))
        field = SOURCE_KEYS[key]
        negated = "not" + field[0].upper() + field[1:]
        factor: dict[str, Any] = {}
        if values is not None:
            factor[field] = values
        if not_values is not None:
            factor[negated] = not_values
        sources.append([factor])
    elif key == "source.principal":
        try:
            if isinstance(values, list):
                sources.append(principal_alternatives(values))
            if isinstance(not_values, list):
                sources.extend(not_principal_factors(not_values))
        except Refused as err:
            c.add(c.at("values"), f"not supported by Ami: {err}")
    elif key == "destination.port":
        entry: dict[str, Any] = {}
        if values is not None:
            entry["ports"] = _ports(values)
        if not_values is not None:
            entry["notPorts"] = _ports(not_values)
        ports.append([entry])
    elif key:
        c.add(c.at("key"), f"not supported by Ami: condition key {key!r}; Ami reads "
                           f"{', '.join(KNOWN_KEYS)}")
    done(r, c)
    return out
