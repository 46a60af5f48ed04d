"""AuthorizationPolicy: which callers (SPIFFE identity, service, namespace, address, end user)
may do what."""

from __future__ import annotations

import ipaddress
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

from meshctl.api import fields as F
from meshctl.api.errors import fail
from meshctl.api.fields import Fields
from meshctl.api.matches import joined

ACTIONS = ("ALLOW", "DENY", "CUSTOM", "AUDIT")
AUTHZ_PATH = r"^(\*|/[^*]*\*?)$"

_NAME = F.string(F.DNS_LABEL, "a DNS-1123 label")
# '<issuer>/<subject>' of a verified JWT, exactly, or with one '*' at the start or the end
# ('*' alone: any principal, i.e. a request carrying a valid token).
PRINCIPAL = r"^(\*|\*?[^*\s]+|[^*\s]+\*)$"
CLAIM = r"^[^\s]+$"

Claims = Mapping[str, object]
Network = ipaddress.IPv4Network | ipaddress.IPv6Network


def _listed(allowed: tuple[object, ...], refused: tuple[object, ...], value: object,
            deny: bool) -> bool:
    """A caller's value against a list and its `not` list (empty = any). An unknown value
    (None: a plaintext caller has no identity) is in no list; for a `not` list that counts
    against the caller, as for an ambiguous header: it matches a DENY rule's `notServices`,
    never an ALLOW rule's (an ALLOW `notNamespaces: [dev]` admits no plaintext caller)."""
    if allowed and value not in allowed:
        return False
    if refused:
        return deny if value is None else value not in refused
    return True


def address_of(text: str | None) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
    """The caller's address as ipBlocks compare it (an IPv4-mapped IPv6 address as IPv4);
    None when it is not an IP address (a Unix socket's peer)."""
    if not text:
        return None
    try:
        address = ipaddress.ip_address(text.partition("%")[0])
    except ValueError:
        return None
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        return address.ipv4_mapped
    return address


def _in_blocks(blocks: tuple[Network, ...], not_blocks: tuple[Network, ...],
               address: str | None, deny: bool) -> bool:
    if not blocks and not not_blocks:
        return True
    ip = address_of(address)
    if ip is None:  # no address to compare: as an unknown identity (_listed)
        return deny if not_blocks and not blocks else False
    if blocks and not any(_contains(block, ip) for block in blocks):
        return False
    return not any(_contains(block, ip) for block in not_blocks)


_MAPPED = bytes(10) + b"\xff\xff"  # the first 12 bytes of an IPv4-mapped IPv6 address


def _contains(block: Network, ip: ipaddress.IPv4Address | ipaddress.IPv6Address) -> bool:
    """Whether ``block`` holds ``ip``; an IPv4 address also as IPv4-mapped (`::ffff:a.b.c.d`,
    how a dual-stack listener's peers show in the access log): a block written so, or
    `::/0`, holds it too (as IPv6 it would never be compared, ``address_of`` unmaps it)."""
    if ip.version == block.version:
        return ip in block
    return ip.version == 4 and ipaddress.IPv6Address(_MAPPED + ip.packed) in block


@dataclass(frozen=True, slots=True)
class Source:
    """A caller; each non-empty list must contain the caller's value and each `not` list
    must not (empty lists = any)."""

    identities: tuple[str, ...] = ()
    services: tuple[str, ...] = ()
    namespaces: tuple[str, ...] = ()
    request_principals: tuple[str, ...] = ()  # '<iss>/<sub>' patterns of the end user's JWT
    not_request_principals: tuple[str, ...] = ()
    not_identities: tuple[str, ...] = ()
    not_services: tuple[str, ...] = ()
    not_namespaces: tuple[str, ...] = ()
    ip_blocks: tuple[Network, ...] = ()  # the connection's peer address (Istio's source.ip)
    not_ip_blocks: tuple[Network, ...] = ()
    remote_ip_blocks: tuple[Network, ...] = ()  # the client's, as the gateway trusts it
    not_remote_ip_blocks: tuple[Network, ...] = ()

    def matches(self, identity: str | None, service: str | None, namespace: str | None,
                principal: str | None = None, deny: bool = False,
                address: str | None = None, remote: str | None = None) -> bool:
        """Whether a caller with these attributes (None = unknown, e.g. plaintext, or no
        token) matches a rule of an ALLOW (or ``deny``) policy; ``remote`` is the client's
        address as the gateway trusts it (proxy.clientaddress), else ``address``."""
        return (self.matches_peer(identity, service, namespace, deny, address, remote)
                and (not self.request_principals
                     or any(principal_matches(p, principal) for p in self.request_principals))
                and (not self.not_request_principals
                     or not any(principal_matches(p, principal)
                                for p in self.not_request_principals)))

    def matches_peer(self, identity: str | None, service: str | None,
                     namespace: str | None, deny: bool = False,
                     address: str | None = None, remote: str | None = None) -> bool:
        """The peer fields alone (identities, services, namespaces, ipBlocks,
        remoteIpBlocks and their `not` lists): a TCP connection's."""
        return (_listed(self.identities, self.not_identities, identity, deny)
                and _listed(self.services, self.not_services, service, deny)
                and _listed(self.namespaces, self.not_namespaces, namespace, deny)
                and _in_blocks(self.ip_blocks, self.not_ip_blocks, address, deny)
                and _in_blocks(self.remote_ip_blocks, self.not_remote_ip_blocks,
                               address if remote is None else remote, deny))

    @property
    def reads_remote(self) -> bool:
        """Whether it names the client's address as the gateway trusts it."""
        return bool(self.remote_ip_blocks or self.not_remote_ip_blocks)

    @property
    def reads_direct(self) -> bool:
        """Whether it names the connection's peer's address (ipBlocks)."""
        return bool(self.ip_blocks or self.not_ip_blocks)

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
    """What is requested: paths ('/exact', '/prefix/*', '*'), methods, the destination's port
    (its app's) and host (the request's authority); each with a `not` list (empty = any)."""

    paths: tuple[str, ...] = ()
    methods: tuple[str, ...] = ()
    ports: tuple[int, ...] = ()
    not_paths: tuple[str, ...] = ()
    not_methods: tuple[str, ...] = ()
    not_ports: tuple[int, ...] = ()
    hosts: tuple[str, ...] = ()  # lower-case patterns: exact, '*.suffix', 'prefix.*', '*'
    not_hosts: tuple[str, ...] = ()

    def matches(self, method: str, path: str, port: int = 0, host: str = "") -> bool:
        """Whether a request with ``method`` and normalised ``path`` to ``port`` and ``host``
        (its authority) matches."""
        return ((not self.methods or method in self.methods)
                and (not self.paths or any(_path_matches(p, path) for p in self.paths))
                and self.matches_port(port)
                and method not in self.not_methods
                and not any(_path_matches(p, path) for p in self.not_paths)
                and self._matches_host(host))

    def matches_port(self, port: int) -> bool:
        """The port fields alone: what a TCP connection has of an operation."""
        return (not self.ports or port in self.ports) and port not in self.not_ports

    def _matches_host(self, host: str) -> bool:
        if not self.hosts and not self.not_hosts:
            return True
        bare, port = _split_authority(host.lower())
        name = f"{bare}:{port}" if port else bare
        return ((not self.hosts or any(_host_matches(h, name, bare) for h in self.hosts))
                and not any(_host_matches(h, name, bare) for h in self.not_hosts))

    @property
    def http_only(self) -> bool:
        """Whether it names paths, methods or hosts, which only a request has."""
        return bool(self.paths or self.methods or self.not_paths or self.not_methods
                    or self.hosts or self.not_hosts)


def _split_authority(authority: str) -> tuple[str, str]:
    """The name (without a final dot) and the port (as a number's text, '' for none) of an
    authority as the router reads it (proxy.headers.service_from_authority): an empty port
    (`admin.example.com:`, which a Host may be) is none, `:0443` is `443`."""
    if authority.startswith("["):
        name, _, rest = authority.partition("]")
        name, port = name + "]", rest[1:] if rest.startswith(":") else ""
    else:
        name, colon, port = authority.rpartition(":")
        if not colon:
            name, port = authority, ""
    return name.rstrip("."), str(int(port)) if port.isdigit() else ""


def _host_matches(pattern: str, authority: str, bare: str) -> bool:
    """A `hosts` pattern against a request's authority: a pattern without a port compares
    with the authority's name whatever its port (as Istio does), one with a port with the
    whole authority; '*.example.com' is any name ending so, 'example.*' any name starting so."""
    with_port = (":" in pattern.partition("]")[2] if pattern.startswith("[")
                 else ":" in pattern)
    value = authority if with_port else bare
    if pattern == "*":
        return True
    if pattern.startswith("*"):
        return value.endswith(pattern[1:])
    if pattern.endswith("*"):
        return value.startswith(pattern[:-1])
    return value == pattern


@dataclass(frozen=True, slots=True)
class Condition:
    """A request header (lower-case name), or a claim of the verified JWT (``claim``), that
    must have one of ``values``."""

    header: str
    values: tuple[str, ...]
    claim: str | None = None
    not_values: tuple[str, ...] = ()

    def _holds(self, value: str) -> bool:
        return (not self.values or value in self.values) and value not in self.not_values

    def _absent(self, deny: bool) -> bool:
        """An absent header or claim (or no token): it has none of ``values``, and it is not
        known to be anything but ``notValues``, so, as for a `not` list of the caller
        (``_listed``), a condition of ``notValues`` alone counts it against the caller: it
        matches a DENY rule (as Istio's), never an ALLOW one."""
        return deny and not self.values

    def matches(self, sent: Sequence[str], deny: bool) -> bool:
        """Whether the header's values as sent (each occurrence, in order) match.

        A header sent more than once is read as Envoy's RBAC reads it, its values joined
        with ',' (meshctl.api.matches.joined), and, since the app may read any one of them,
        as each value too; the answer is the one that refuses: a DENY condition holds if the
        joined value or any one value does, an ALLOW condition only if the joined value and
        every value do. An absent header: ``_absent``.
        """
        if not sent:
            return self._absent(deny)
        if len(sent) > 1:
            sent = (*sent, joined(self.header, list(sent)) or "")
        if deny:
            return any(self._holds(v) for v in sent)
        return all(self._holds(v) for v in sent)

    def matches_claims(self, claims: Claims | None, deny: bool = False) -> bool:
        """Whether the token's claim has one of the values: a string claim equal to one, a
        list claim (groups, scopes) containing one. No token, or no such claim (or one neither a
        string nor a list), matches neither an ALLOW nor a DENY condition of ``values`` (as
        Istio), and a DENY condition of ``notValues`` alone (``_absent``)."""
        if claims is None:
            return self._absent(deny)
        value = claims.get(self.claim or "")
        if isinstance(value, str):
            return self._holds(value)
        if isinstance(value, list):
            found = [v for v in value if isinstance(v, str)]
            # a list claim holds a listed value (values), and none of notValues
            return ((not self.values or any(v in self.values for v in found))
                    and not any(v in self.not_values for v in found))
        return self._absent(deny)  # absent, or of no type a value can be compared with


@dataclass(frozen=True, slots=True)
class AuthorizationRule:
    """Matches when any source, any operation and every condition match (absent = any)."""

    sources: tuple[Source, ...] = ()
    operations: tuple[Operation, ...] = ()
    conditions: tuple[Condition, ...] = ()

    def matches(self, identity: str | None, service: str | None, namespace: str | None,
                method: str, path: str, headers: Callable[[str], Sequence[str]],
                deny: bool = False, principal: str | None = None,
                claims: Claims | None = None, port: int = 0, host: str = "",
                address: str | None = None, remote: str | None = None) -> bool:
        """Whether a request from this caller matches this rule of an ALLOW (or ``deny``)
        policy; ``headers(name)`` gives every value of a lower-case header name, in order;
        ``principal`` and ``claims`` come from the request's verified JWT, if any; ``port``
        is the destination app's, ``host`` the request's authority, ``address`` the
        connection's peer's, ``remote`` the client's as the gateway trusts it."""
        return ((not self.sources
                 or any(s.matches(identity, service, namespace, principal, deny, address,
                                  remote) for s in self.sources))
                and (not self.operations
                     or any(o.matches(method, path, port, host) for o in self.operations))
                and all(c.matches_claims(claims, deny) if c.claim is not None
                        else c.matches(headers(c.header), deny) for c in self.conditions))

    @property
    def http_only(self) -> bool:
        """Whether the rule names anything only an HTTP request has: paths, methods, `when`
        conditions (headers, JWT claims), requestPrincipals."""
        return bool(self.conditions or any(s.http_only for s in self.sources)
                    or any(o.http_only for o in self.operations))

    def matches_connection(self, identity: str | None, service: str | None,
                           namespace: str | None, port: int, deny: bool = False,
                           address: str | None = None) -> bool:
        """Whether a TCP connection (a peer, a port, no request) matches, as Istio decides for
        TCP: an ALLOW rule with an HTTP-only field matches no connection; a DENY rule is
        checked without its HTTP-only fields, so it refuses more, never less."""
        if not deny and self.http_only:
            return False
        return ((not self.sources
                 or any(s.matches_peer(identity, service, namespace, deny, address)
                        for s in self.sources))
                and (not self.operations
                     or any(o.matches_port(port) for o in self.operations)))

    @property
    def reads_remote(self) -> bool:
        """Whether the rule names the client's address as the gateway trusts it."""
        return any(s.reads_remote for s in self.sources)

    @property
    def reads_direct(self) -> bool:
        """Whether the rule names the connection's peer's address (ipBlocks)."""
        return any(s.reads_direct for s in self.sources)


@dataclass(frozen=True, slots=True)
class AuthorizationPolicySpec:
    """spec of an AuthorizationPolicy; ``service`` None applies to the whole namespace.

    ALLOW: a request is allowed if any rule matches (no rules = nothing is allowed).
    DENY: a request is refused if any rule matches.
    CUSTOM: a request any rule matches is checked by the external ``provider`` (a MeshConfig
    extensionProviders name; no rules = none is), before DENY and ALLOW (proxy.extauthz).
    """

    service: str | None
    action: str
    rules: tuple[AuthorizationRule, ...]
    provider: str | None = None
    # set by the snapshot, not the spec: its `namespace/name` (metrics' `policy` label) and
    # its `istio.io/dry-run` annotation (proxy.authzstats)
    name: str = ""
    dry_run: bool = False


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
    provider = f.optional("provider", _parse_provider)
    if action == "CUSTOM" and not f.has("provider"):
        f.add(f.at("provider"), "action CUSTOM needs provider: {name: ...} (a MeshConfig "
                                "extensionProviders name)")
    elif action != "CUSTOM" and f.has("provider"):
        f.add(f.at("provider"), f"only action CUSTOM takes a provider, not {action}")
    f.finish()
    return AuthorizationPolicySpec(service, action, rules, provider)


def _parse_provider(data: object, path: str) -> str:
    f = Fields(data, path)
    name = f.required("name", F.string(None, "a provider name"), "")
    f.finish()
    return name


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


SOURCE_FIELDS = ("identities", "notIdentities", "services", "notServices", "namespaces",
                 "notNamespaces", "ipBlocks", "notIpBlocks", "remoteIpBlocks",
                 "notRemoteIpBlocks", "requestPrincipals", "notRequestPrincipals")
OPERATION_FIELDS = ("paths", "notPaths", "methods", "notMethods", "ports", "notPorts", "hosts",
                    "notHosts")
# a host pattern: a name, an IPv4 address or a bracketed IPv6 one, with an optional port, with
# one '*' at its start or end; an IPv6 address without brackets would be read as a name and a
# port, and match no request (an authority writes it in brackets)
_PORT = r"(?::[0-9]{1,5})?"
AUTHZ_HOST = (r"^(\*[A-Za-z0-9._-]*" + _PORT + r"|(?:\[[0-9A-Fa-f:.]+\]|[A-Za-z0-9._-]+)" + _PORT
              + r"|[A-Za-z0-9._-]+\*)$")


def _ip_block(data: object, path: str) -> Network:
    """'10.0.0.0/8', '2001:db8::/32' or a single address ('192.0.2.7')."""
    if isinstance(data, str):
        try:
            return ipaddress.ip_network(data.strip(), strict=False)
        except ValueError:
            pass
    got = repr(data) if isinstance(data, str) else F.describe(data)
    fail(path, f"expected an IP address or a CIDR block like 10.0.0.0/8, got {got}")


def _parse_source(data: object, path: str) -> Source:
    f = Fields(data, path)
    identity = F.string(F.SPIFFE_ID,
                        "a SPIFFE id like spiffe://cluster.local/ns/default/sa/reviews")
    identities = f.value("identities", F.list_of(identity, 1), ())
    not_identities = f.value("notIdentities", F.list_of(identity, 1), ())
    services = f.value("services", F.list_of(_NAME, 1), ())
    not_services = f.value("notServices", F.list_of(_NAME, 1), ())
    namespaces = f.value("namespaces", F.list_of(_NAME, 1), ())
    not_namespaces = f.value("notNamespaces", F.list_of(_NAME, 1), ())
    ip_blocks = f.value("ipBlocks", F.list_of(_ip_block, 1), ())
    not_ip_blocks = f.value("notIpBlocks", F.list_of(_ip_block, 1), ())
    remote_ip_blocks = f.value("remoteIpBlocks", F.list_of(_ip_block, 1), ())
    not_remote_ip_blocks = f.value("notRemoteIpBlocks", F.list_of(_ip_block, 1), ())
    principal = F.string(PRINCIPAL, "'<issuer>/<subject>', with at most one '*' at its start "
                                    "or end, or '*'")
    principals = f.value("requestPrincipals", F.list_of(principal, 1), ())
    not_principals = f.value("notRequestPrincipals", F.list_of(principal, 1), ())
    _non_empty(f, SOURCE_FIELDS)
    f.finish()
    return Source(identities, services, namespaces, principals, not_principals,
                  not_identities, not_services, not_namespaces, ip_blocks, not_ip_blocks,
                  remote_ip_blocks, not_remote_ip_blocks)


def _parse_operation(data: object, path: str) -> Operation:
    f = Fields(data, path)
    authz_path = F.string(AUTHZ_PATH, "'/exact', '/prefix/*' or '*'")
    method = F.string(F.METHOD, "an upper-case HTTP method like GET")
    host = F.string(AUTHZ_HOST, "a host name or address (an IPv6 one in brackets), "
                                "optionally with :PORT, with at most one '*' at its start or "
                                "end (*.example.com), or '*'")
    paths = f.value("paths", F.list_of(authz_path, 1), ())
    not_paths = f.value("notPaths", F.list_of(authz_path, 1), ())
    methods = f.value("methods", F.list_of(method, 1), ())
    not_methods = f.value("notMethods", F.list_of(method, 1), ())
    ports = f.value("ports", F.list_of(F.integer(1, 65535), 1), ())
    not_ports = f.value("notPorts", F.list_of(F.integer(1, 65535), 1), ())
    hosts = f.value("hosts", F.list_of(host, 1), ())
    not_hosts = f.value("notHosts", F.list_of(host, 1), ())
    _non_empty(f, OPERATION_FIELDS)
    f.finish()
    return Operation(paths, methods, ports, not_paths, not_methods, not_ports,
                     tuple(h.lower().rstrip(".") for h in hosts),
                     tuple(h.lower().rstrip(".") for h in not_hosts))


def _parse_condition(data: object, path: str) -> Condition:
    f = Fields(data, path)
    header = f.optional("header", F.string(F.HEADER_NAME, "an HTTP header name"))
    claim = f.optional("claim", F.string(CLAIM, "a claim name without spaces, like groups"))
    if f.has("header") == f.has("claim"):
        f.add(f.path, "set one of header (a request header) and claim (a claim of the "
                      "request's JWT)")
    value = F.string(F.HEADER_VALUE, "a value")
    values = f.value("values", F.list_of(value, 1), ())
    not_values = f.value("notValues", F.list_of(value, 1), ())
    _non_empty(f, ("values", "notValues"))
    f.finish()
    return Condition((header or "").lower(), values, claim, not_values)
