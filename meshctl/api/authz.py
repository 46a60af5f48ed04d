"""AuthorizationPolicy: which callers (SPIFFE identity, service, namespace, end user) may do
what."""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

from meshctl.api import fields as F
from meshctl.api.fields import Fields

ACTIONS = ("ALLOW", "DENY")
AUTHZ_PATH = r"^(\*|/[^*]*\*?)$"

_NAME = F.string(F.DNS_LABEL, "a DNS-1123 label")
# '<issuer>/<subject>' of a verified JWT, exactly, or with one '*' at the start or the end
# ('*' alone: any principal, i.e. a request carrying a valid token).
PRINCIPAL = r"^(\*|\*?[^*\s]+|[^*\s]+\*)$"
CLAIM = r"^[^\s]+$"

Claims = Mapping[str, object]


@dataclass(frozen=True, slots=True)
class Source:
    """A caller; each non-empty list must contain the caller's value (empty list = any)."""

    identities: tuple[str, ...] = ()
    services: tuple[str, ...] = ()
    namespaces: tuple[str, ...] = ()
    request_principals: tuple[str, ...] = ()  # '<iss>/<sub>' patterns of the end user's JWT
    not_request_principals: tuple[str, ...] = ()

    def matches(self, identity: str | None, service: str | None, namespace: str | None,
                principal: str | None = None) -> bool:
        """Whether a caller with these attributes (None = unknown, e.g. plaintext, or no
        token) matches."""
        return (all(not allowed or value in allowed for allowed, value in (
            (self.identities, identity), (self.services, service), (self.namespaces, namespace)))
            and (not self.request_principals
                 or any(principal_matches(p, principal) for p in self.request_principals))
            and (not self.not_request_principals
                 or not any(principal_matches(p, principal)
                            for p in self.not_request_principals)))

    def matches_peer(self, identity: str | None, service: str | None,
                     namespace: str | None) -> bool:
        """The peer fields alone (identities, services, namespaces): a TCP connection's."""
        return all(not allowed or value in allowed for allowed, value in (
            (self.identities, identity), (self.services, service), (self.namespaces, namespace)))

    @property
    def http_only(self) -> bool:
        """Whether it names an end user (a JWT's principal), which only a request carries."""
        return bool(self.request_principals or self.not_request_principals)


def principal_matches(pattern: str, principal: str | None) -> bool:
    """A requestPrincipals pattern: exact, 'prefix*', '*suffix', or '*' (any principal)."""
    if principal is None:
        return False
    if pattern == "*":
        return True
    if pattern.endswith("*"):
        return principal.startswith(pattern[:-1])
    if pattern.startswith("*"):
        return principal.endswith(pattern[1:])
    return principal == pattern


@dataclass(frozen=True, slots=True)
class Operation:
    """What is requested: paths ('/exact', '/prefix/*', '*'), methods and the destination's
    port (its app's; empty = any)."""

    paths: tuple[str, ...] = ()
    methods: tuple[str, ...] = ()
    ports: tuple[int, ...] = ()

    def matches(self, method: str, path: str, port: int = 0) -> bool:
        """Whether a request with ``method`` and normalised ``path`` to ``port`` matches."""
        return ((not self.methods or method in self.methods)
                and (not self.paths or any(_path_matches(p, path) for p in self.paths))
                and (not self.ports or port in self.ports))

    @property
    def http_only(self) -> bool:
        """Whether it names paths or methods, which only a request has."""
        return bool(self.paths or self.methods)


@dataclass(frozen=True, slots=True)
class Condition:
    """A request header (lower-case name), or a claim of the verified JWT (``claim``), that
    must have one of ``values``."""

    header: str
    values: tuple[str, ...]
    claim: str | None = None

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

    def matches_claims(self, claims: Claims | None) -> bool:
        """Whether the token's claim has one of the values: a string claim equal to one, a
        list claim (groups, scopes) containing one. No token, or no such claim, matches
        neither an ALLOW nor a DENY condition (as Istio)."""
        if claims is None:
            return False
        value = claims.get(self.claim or "")
        if isinstance(value, str):
            return value in self.values
        if isinstance(value, list):
            return any(isinstance(v, str) and v in self.values for v in value)
        return False


@dataclass(frozen=True, slots=True)
class AuthorizationRule:
    """Matches when any source, any operation and every condition match (absent = any)."""

    sources: tuple[Source, ...] = ()
    operations: tuple[Operation, ...] = ()
    conditions: tuple[Condition, ...] = ()

    def matches(self, identity: str | None, service: str | None, namespace: str | None,
                method: str, path: str, headers: Callable[[str], Sequence[str]],
                deny: bool = False, principal: str | None = None,
                claims: Claims | None = None, port: int = 0) -> bool:
        """Whether a request from this caller matches this rule of an ALLOW (or ``deny``)
        policy; ``headers(name)`` gives every value of a lower-case header name, in order;
        ``principal`` and ``claims`` come from the request's verified JWT, if any; ``port``
        is the destination app's."""
        return ((not self.sources
                 or any(s.matches(identity, service, namespace, principal)
                        for s in self.sources))
                and (not self.operations
                     or any(o.matches(method, path, port) for o in self.operations))
                and all(c.matches_claims(claims) if c.claim is not None
                        else c.matches(headers(c.header), deny) for c in self.conditions))

    @property
    def http_only(self) -> bool:
        """Whether the rule names anything only an HTTP request has: paths, methods, `when`
        conditions (headers, JWT claims), requestPrincipals."""
        return bool(self.conditions or any(s.http_only for s in self.sources)
                    or any(o.http_only for o in self.operations))

    def matches_connection(self, identity: str | None, service: str | None,
                           namespace: str | None, port: int, deny: bool = False) -> bool:
        """Whether a TCP connection (a peer, a port, no request) matches, as Istio decides for
        TCP: an ALLOW rule with an HTTP-only field matches no connection; a DENY rule is
        checked without its HTTP-only fields, so it refuses more, never less."""
        if not deny and self.http_only:
            return False
        return ((not self.sources
                 or any(s.matches_peer(identity, service, namespace) for s in self.sources))
                and (not self.operations
                     or any(not o.ports or port in o.ports for o in self.operations)))

    @property
    def uses_token(self) -> bool:
        """Whether the rule reads the request's JWT (principals or claims)."""
        return (any(s.request_principals or s.not_request_principals for s in self.sources)
                or any(c.claim is not None for c in self.conditions))


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
    service = f.optional("selector", F.service_selector)
    action = f.value("action", F.enum(ACTIONS), "ALLOW")
    rules = f.value("rules", F.list_of(_parse_rule), ())
    f.finish()
    return AuthorizationPolicySpec(service, action, rules)


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
    principal = F.string(PRINCIPAL, "'<issuer>/<subject>', with at most one '*' at its start "
                                    "or end, or '*'")
    principals = f.value("requestPrincipals", F.list_of(principal, 1), ())
    not_principals = f.value("notRequestPrincipals", F.list_of(principal, 1), ())
    _non_empty(f, ("identities", "services", "namespaces", "requestPrincipals",
                   "notRequestPrincipals"))
    f.finish()
    return Source(identities, services, namespaces, principals, not_principals)


def _parse_operation(data: object, path: str) -> Operation:
    f = Fields(data, path)
    paths = f.value("paths", F.list_of(
        F.string(AUTHZ_PATH, "'/exact', '/prefix/*' or '*'"), 1), ())
    methods = f.value("methods", F.list_of(
        F.string(F.METHOD, "an upper-case HTTP method like GET"), 1), ())
    ports = f.value("ports", F.list_of(F.integer(1, 65535), 1), ())
    _non_empty(f, ("paths", "methods", "ports"))
    f.finish()
    return Operation(paths, methods, ports)


def _parse_condition(data: object, path: str) -> Condition:
    f = Fields(data, path)
    header = f.optional("header", F.string(F.HEADER_NAME, "an HTTP header name"))
    claim = f.optional("claim", F.string(CLAIM, "a claim name without spaces, like groups"))
    if f.has("header") == f.has("claim"):
        f.add(f.path, "set one of header (a request header) and claim (a claim of the "
                      "request's JWT)")
    values = f.required("values", F.list_of(F.string(F.HEADER_VALUE, "a value"), 1), ())
    f.finish()
    return Condition((header or "").lower(), values, claim)
