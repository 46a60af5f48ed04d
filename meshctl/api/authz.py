"""AuthorizationPolicy: which callers (SPIFFE identity, service, namespace) may do what."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

from meshctl.api import fields as F
from meshctl.api.fields import Fields

ACTIONS = ("ALLOW", "DENY")
AUTHZ_PATH = r"^(\*|/[^*]*\*?)$"

_NAME = F.string(F.DNS_LABEL, "a DNS-1123 label")


@dataclass(frozen=True, slots=True)
class Source:
    """A caller; each non-empty list must contain the caller's value (empty list = any)."""

    identities: tuple[str, ...] = ()
    services: tuple[str, ...] = ()
    namespaces: tuple[str, ...] = ()

    def matches(self, identity: str | None, service: str | None, namespace: str | None) -> bool:
        """Whether a caller with these attributes (None = unknown, e.g. plaintext) matches."""
        return all(not allowed or value in allowed for allowed, value in (
            (self.identities, identity), (self.services, service), (self.namespaces, namespace)))


@dataclass(frozen=True, slots=True)
class Operation:
    """What is requested: paths ('/exact', '/prefix/*', '*') and methods (empty = any)."""

    paths: tuple[str, ...] = ()
    methods: tuple[str, ...] = ()

    def matches(self, method: str, path: str) -> bool:
        """Whether a request with ``method`` and normalised ``path`` matches."""
        return ((not self.methods or method in self.methods)
                and (not self.paths or any(_path_matches(p, path) for p in self.paths)))


@dataclass(frozen=True, slots=True)
class Condition:
    """A request header (lower-case name) that must have one of ``values``."""

    header: str
    values: tuple[str, ...]

    def matches(self, sent: Sequence[str], deny: bool) -> bool:
        """Whether the header's values as sent (each occurrence, in order) match.

        A header sent more than once is ambiguous (the app may read any of its values), so
        the answer is the one that refuses: a DENY condition holds if any value is listed, an
        ALLOW condition only if every value is. An absent header matches neither.
        """
        if not sent:
            return False
        if deny:
            return any(v in self.values for v in sent)
        return all(v in self.values for v in sent)


@dataclass(frozen=True, slots=True)
class AuthorizationRule:
    """Matches when any source, any operation and every condition match (absent = any)."""

    sources: tuple[Source, ...] = ()
    operations: tuple[Operation, ...] = ()
    conditions: tuple[Condition, ...] = ()

    def matches(self, identity: str | None, service: str | None, namespace: str | None,
                method: str, path: str, headers: Callable[[str], Sequence[str]],
                deny: bool = False) -> bool:
        """Whether a request from this caller matches this rule of an ALLOW (or ``deny``)
        policy; ``headers(name)`` gives every value of a lower-case header name, in order."""
        return ((not self.sources
                 or any(s.matches(identity, service, namespace) for s in self.sources))
                and (not self.operations or any(o.matches(method, path) for o in self.operations))
                and all(c.matches(headers(c.header), deny) for c in self.conditions))


@dataclass(frozen=True, slots=True)
class AuthorizationPolicySpec:
    """spec of an AuthorizationPolicy; ``service`` None applies to the whole namespace.

    ALLOW: a request is allowed if any rule matches (no rules = nothing is allowed).
    DENY: a request is refused if any rule matches.
    """

    service: str | None
    action: str
    rules: tuple[AuthorizationRule, ...]


def _path_matches(pattern: str, path: str) -> bool:
    if pattern == "*":
        return True
    if pattern.endswith("*"):
        return path.startswith(pattern[:-1])
    return path == pattern


def parse_authorization(data: object, path: str) -> AuthorizationPolicySpec:
    """Parse AuthorizationPolicy.spec (also a proxy snapshot's inbound.authorization items)."""
    f = Fields(data, path)
    service = f.optional("selector", _parse_selector)
    action = f.value("action", F.enum(ACTIONS), "ALLOW")
    rules = f.value("rules", F.list_of(_parse_rule), ())
    f.finish()
    return AuthorizationPolicySpec(service, action, rules)


def _parse_selector(data: object, path: str) -> str:
    f = Fields(data, path)
    service = f.required("service", _NAME, "")
    f.finish()
    return service


def _parse_rule(data: object, path: str) -> AuthorizationRule:
    f = Fields(data, path)
    sources = f.value("from", F.list_of(_parse_source, 1), ())
    operations = f.value("to", F.list_of(_parse_operation, 1), ())
    conditions = f.value("when", F.list_of(_parse_condition, 1), ())
    f.finish()
    return AuthorizationRule(sources, operations, conditions)


def _non_empty(f: Fields, names: tuple[str, ...]) -> None:
    if not any(f.has(name) for name in names):
        f.add(f.path, f"set at least one of {', '.join(names)}")


def _parse_source(data: object, path: str) -> Source:
    f = Fields(data, path)
    identities = f.value("identities", F.list_of(
        F.string(F.SPIFFE_ID, "a SPIFFE id like spiffe://cluster.local/ns/default/sa/reviews"),
        1), ())
    services = f.value("services", F.list_of(_NAME, 1), ())
    namespaces = f.value("namespaces", F.list_of(_NAME, 1), ())
    _non_empty(f, ("identities", "services", "namespaces"))
    f.finish()
    return Source(identities, services, namespaces)


def _parse_operation(data: object, path: str) -> Operation:
    f = Fields(data, path)
    paths = f.value("paths", F.list_of(
        F.string(AUTHZ_PATH, "'/exact', '/prefix/*' or '*'"), 1), ())
    methods = f.value("methods", F.list_of(
        F.string(F.METHOD, "an upper-case HTTP method like GET"), 1), ())
    _non_empty(f, ("paths", "methods"))
    f.finish()
    return Operation(paths, methods)


def _parse_condition(data: object, path: str) -> Condition:
    f = Fields(data, path)
    header = f.required("header", F.string(F.HEADER_NAME, "an HTTP header name"), "")
    values = f.required("values", F.list_of(F.string(F.HEADER_VALUE, "a header value"), 1), ())
    f.finish()
    return Condition(header.lower(), values)
