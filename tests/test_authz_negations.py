"""AuthorizationPolicy's `not` lists, ipBlocks, hosts and notValues (Istio's fields): how they
are read and matched, then through a real PERMISSIVE sidecar with clients on several loopback
addresses, plaintext and mTLS."""

from __future__ import annotations

import asyncio
import ssl
from collections.abc import Iterator

import pytest

from meshctl.api.authz import AuthorizationRule, parse_authorization
from meshctl.api.errors import ValidationError
from tests.proxyharness import Message, free_port, get, read_response
from tests.test_authz_semantics import Env
from tests.test_mtls_static import client_ctx, mesh_ca, mint, start_proxy

pytestmark = pytest.mark.timeout(120)
WEB = ("spiffe://cluster.local/ns/default/sa/web", "web", "default")
PLAIN: tuple[None, None, None] = (None, None, None)


def rule(spec: dict[str, object]) -> AuthorizationRule:
    return parse_authorization({"rules": [spec]}, "spec").rules[0]


def no_headers(_name: str) -> list[str]:
    return []


@pytest.mark.parametrize(("spec", "caller", "allow", "deny"), [
    ({"from": [{"notServices": ["ratings"]}]}, WEB, True, True),
    ({"from": [{"notServices": ["web"]}]}, WEB, False, False),
    ({"from": [{"notNamespaces": ["dev"]}]}, WEB, True, True),
    ({"from": [{"notIdentities": [WEB[0]]}]}, WEB, False, False),
    ({"from": [{"namespaces": ["default"], "notServices": ["web"]}]}, WEB, False, False),
    # a plaintext caller has no service to compare: a `not` list counts against it, so it
    # matches a DENY rule, never an ALLOW one
    ({"from": [{"notServices": ["ratings"]}]}, PLAIN, False, True),
    ({"from": [{"notNamespaces": ["dev"]}]}, PLAIN, False, True),
    ({"from": [{"services": ["web"]}]}, PLAIN, False, False),
])
def test_not_lists_of_the_caller(spec: dict[str, object], caller: tuple[str | None, ...],
                                 allow: bool, deny: bool) -> None:
    r = rule(spec)
    identity, service, namespace = caller
    for verdict, as_deny in ((allow, False), (deny, True)):
        assert r.matches(identity, service, namespace, "GET", "/", no_headers,
                         deny=as_deny) is verdict
        assert r.matches_connection(identity, service, namespace, 80, deny=as_deny) is verdict


@pytest.mark.parametrize(("blocks", "address", "matches"), [
    ({"ipBlocks": ["10.0.0.0/8"]}, "10.1.2.3", True),
    ({"ipBlocks": ["10.0.0.0/8"]}, "11.1.2.3", False),
    ({"ipBlocks": ["192.0.2.7"]}, "192.0.2.7", True),
    ({"ipBlocks": ["10.0.0.0/8"]}, "::ffff:10.9.9.9", True),  # a dual-stack listener's view
    ({"ipBlocks": ["2001:db8::/32"]}, "2001:db8::1", True),
    ({"ipBlocks": ["2001:db8::/32"]}, "10.0.0.1", False),
    ({"notIpBlocks": ["10.0.0.0/8"]}, "10.1.2.3", False),
    ({"notIpBlocks": ["10.0.0.0/8"]}, "172.16.0.1", True),
    ({"ipBlocks": ["10.0.0.0/8"], "notIpBlocks": ["10.6.0.0/16"]}, "10.6.1.1", False),
    ({"ipBlocks": ["10.0.0.0/8"], "notIpBlocks": ["10.6.0.0/16"]}, "10.7.1.1", True),
    # a block written as IPv4-mapped (as a dual-stack listener logs its peers) or one holding
    # all of those (::/0) holds the IPv4 addresses it maps, whichever way the peer shows
    ({"ipBlocks": ["::ffff:10.0.0.0/104"]}, "::ffff:10.1.2.3", True),
    ({"ipBlocks": ["::ffff:10.0.0.0/104"]}, "10.1.2.3", True),
    ({"ipBlocks": ["::ffff:10.0.0.0/104"]}, "11.1.2.3", False),
    ({"notIpBlocks": ["::ffff:192.0.2.7"]}, "::ffff:192.0.2.7", False),
    ({"ipBlocks": ["::/0"]}, "192.0.2.7", True),
    ({"ipBlocks": ["0.0.0.0/0"]}, "2001:db8::1", False),
])
def test_ip_blocks_compare_the_peer_address(blocks: dict[str, object], address: str,
                                            matches: bool) -> None:
    r = rule({"from": [blocks]})
    assert r.matches(*WEB, "GET", "/", no_headers, address=address) is matches
    assert r.matches_connection(*WEB, 80, address=address) is matches


def test_ip_blocks_without_an_address_count_against_the_caller() -> None:
    """A peer with no IP address (a Unix socket) is in no block: a `notIpBlocks` DENY refuses
    it, an `ipBlocks` ALLOW does not admit it."""
    assert rule({"from": [{"notIpBlocks": ["10.0.0.0/8"]}]}).matches_connection(
        *WEB, 80, deny=True, address="unknown")
    assert not rule({"from": [{"ipBlocks": ["10.0.0.0/8"]}]}).matches_connection(
        *WEB, 80, address="unknown")


@pytest.mark.parametrize(("to", "method", "path", "host", "matches"), [
    ({"notPaths": ["/health"]}, "GET", "/health", "a", False),
    ({"notPaths": ["/public/*"]}, "GET", "/private", "a", True),
    ({"notMethods": ["GET", "HEAD"]}, "POST", "/", "a", True),
    ({"notMethods": ["GET", "HEAD"]}, "GET", "/", "a", False),
    ({"methods": ["DELETE"], "notPaths": ["/admin/*"]}, "DELETE", "/admin/x", "a", False),
    ({"methods": ["DELETE"], "notPaths": ["/admin/*"]}, "DELETE", "/x", "a", True),
    ({"hosts": ["Shop.Example.com"]}, "GET", "/", "shop.example.COM:8080", True),
    ({"hosts": ["shop.example.com:8443"]}, "GET", "/", "shop.example.com:8080", False),
    ({"hosts": ["shop.example.com:8443"]}, "GET", "/", "shop.example.com:8443", True),
    ({"hosts": ["*.example.com"]}, "GET", "/", "api.example.com", True),
    ({"hosts": ["*.example.com"]}, "GET", "/", "example.com", False),
    ({"hosts": ["shop.*"]}, "GET", "/", "shop.example.org", True),
    ({"notHosts": ["admin.example.com"]}, "GET", "/", "admin.example.com.", False),
    ({"notHosts": ["admin.example.com"]}, "GET", "/", "shop.example.com", True),
    # the authority as the router reads it: an empty port is none, a port is a number
    ({"notHosts": ["admin.example.com"]}, "GET", "/", "admin.example.com:", False),
    ({"hosts": ["admin.example.com"]}, "GET", "/", "Admin.Example.com.:", True),
    ({"hosts": ["[::1]"]}, "GET", "/", "[::1]:", True),
    ({"hosts": ["[2001:db8::1]"]}, "GET", "/", "[2001:DB8::1]:8080", True),
    ({"hosts": ["*:8080"]}, "GET", "/", "shop.example.com:8080", True),
    ({"hosts": ["shop.example.com:8443"]}, "GET", "/", "shop.example.com:08443", True),
    ({"hosts": ["shop.example.com:8443"]}, "GET", "/", "shop.example.com.:8443", True),
    ({"hosts": ["shop.example.com:8443"]}, "GET", "/", "shop.example.com:", False),
])
def test_operation_fields(to: dict[str, object], method: str, path: str, host: str,
                          matches: bool) -> None:
    r = rule({"to": [to]})
    assert r.matches(*WEB, method, path, no_headers, host=host) is matches


def test_a_port_in_not_ports_is_no_match_for_requests_or_connections() -> None:
    r = rule({"to": [{"notPorts": [9090]}]})
    assert r.matches_connection(*WEB, 5432) and not r.matches_connection(*WEB, 9090)
    assert not r.matches(*WEB, "GET", "/", no_headers, port=9090)
    # hosts, like paths and methods, are a request's: an ALLOW rule naming one takes no
    # connection, a DENY rule is checked without it
    hosts = rule({"to": [{"hosts": ["a.example.com"]}]})
    assert not hosts.matches_connection(*WEB, 80)
    assert hosts.matches_connection(*WEB, 80, deny=True)


@pytest.mark.parametrize(("sent", "allow", "deny"), [
    (["gold"], False, False),
    (["bronze"], True, True),
    (["gold", "bronze"], False, True),   # repeated: ALLOW needs every value, DENY any
    # absent: not known to be gold or silver, so it counts against the caller, as for a
    # `not` list of the caller: a DENY matches it (else leaving the header out passes it)
    ([], False, True),
])
def test_not_values_of_a_header(sent: list[str], allow: bool, deny: bool) -> None:
    """`notValues` alone: a value not listed matches; an absent header a DENY only."""
    r = rule({"when": [{"header": "x-tier", "notValues": ["gold", "silver"]}]})
    headers = {"x-tier": sent}.get
    assert r.matches(*WEB, "GET", "/", lambda n: headers(n) or [], deny=False) is allow
    assert r.matches(*WEB, "GET", "/", lambda n: headers(n) or [], deny=True) is deny


def test_not_values_of_a_claim() -> None:
    r = rule({"when": [{"claim": "groups", "notValues": ["suspended"]}]})
    assert r.matches(*WEB, "GET", "/", no_headers, claims={"groups": ["dev", "ops"]})
    assert not r.matches(*WEB, "GET", "/", no_headers, claims={"groups": ["dev", "suspended"]})
    assert not r.matches(*WEB, "GET", "/", no_headers, claims={"groups": "suspended"})
    assert not r.matches(*WEB, "GET", "/", no_headers, claims=None)
    # no token, no such claim, or one of another type: a DENY's, never an ALLOW's
    for claims in (None, {}, {"groups": 7}):
        assert not r.matches(*WEB, "GET", "/", no_headers, claims=claims)
        assert r.matches(*WEB, "GET", "/", no_headers, claims=claims, deny=True)
    # with `values` too, an absent claim or header matches no rule (it has none of them)
    both = rule({"when": [{"claim": "groups", "values": ["dev"], "notValues": ["ops"]},
                          {"header": "x-tier", "values": ["gold"], "notValues": ["x"]}]})
    for deny in (False, True):
        assert not both.matches(*WEB, "GET", "/", no_headers, claims=None, deny=deny)
        assert not both.matches(*WEB, "GET", "/", no_headers, claims={"groups": "dev"},
                                deny=deny)


@pytest.mark.parametrize(("spec", "message"), [
    ({"from": [{"ipBlocks": ["10.0.0.0/33"]}]},
     r"from\[0\]\.ipBlocks\[0\]: expected an IP address or a CIDR block like 10\.0\.0\.0/8, "
     r"got '10\.0\.0\.0/33'"),
    ({"from": [{"notIpBlocks": [8]}]}, r"notIpBlocks\[0\]: .* got an integer"),
    ({"to": [{"hosts": ["a b"]}]}, r"to\[0\]\.hosts\[0\]: invalid value 'a b'"),
    # an IPv6 address out of brackets would be read as a name and a port: it matched nothing
    ({"to": [{"notHosts": ["2001:db8::1"]}]},
     r"notHosts\[0\]: invalid value '2001:db8::1', expected .*IPv6 one in brackets"),
    ({"to": [{"notMethods": ["get"]}]}, r"notMethods\[0\]: invalid value 'get'"),
    ({"when": [{"header": "x"}]}, r"when\[0\]: set at least one of values, notValues"),
    ({"from": [{"notServices": []}]}, r"from\[0\]\.notServices"),
])
def test_invalid_fields_name_their_path(spec: dict[str, object], message: str) -> None:
    with pytest.raises(ValidationError, match=message):
        rule(spec)


# --- a real sidecar ---------------------------------------------------------------------------

POLICIES = [
    {"action": "DENY", "rules": [
        {"from": [{"ipBlocks": ["127.0.0.3/32"]}]},                   # a blocked address
        {"to": [{"methods": ["DELETE"], "notPaths": ["/admin/*"]}]},  # DELETE only in /admin
        {"to": [{"paths": ["/tiered/*"]}],
         "when": [{"header": "x-tier", "notValues": ["gold", "silver"]}]},
        {"from": [{"notNamespaces": ["default"]}], "to": [{"paths": ["/internal/*"]}]},
    ]},
    {"action": "ALLOW", "rules": [
        {"to": [{"notPaths": ["/private/*"], "notHosts": ["admin.example.com"]}]},
        {"from": [{"notServices": ["ratings"]}], "to": [{"paths": ["/private/*"]}]},
    ]},
]


@pytest.fixture(scope="module")
def env(tmp_path_factory: pytest.TempPathFactory, echo: int) -> Iterator[Env]:
    tmp = tmp_path_factory.mktemp("authz-not")
    ca = mesh_ca(tmp / "ca")
    port = free_port()
    proxy = start_proxy(tmp / "reviews", mint(ca, "reviews"), {
        "node": {"service": "reviews"}, "app": f"127.0.0.1:{echo}",
        "mesh": {"mtls": "PERMISSIVE"}, "inbound": {"authorization": POLICIES}},
        inbound=port)
    try:
        yield Env(ca, proxy, port)
    finally:
        proxy.stop()


async def call(env: Env, path: str, *, source: str = "127.0.0.1", method: str = "GET",
               host: str = "reviews", extra: str = "", service: str | None = None) -> int:
    """The status a request gets, sent from ``source`` (a loopback address), in plaintext or
    as ``service`` over mTLS."""
    ctx: ssl.SSLContext | None = None
    if service is not None:
        ctx = client_ctx(mint(env.ca, service), env.ca.trust_bundle())
    reader, writer = await asyncio.wait_for(asyncio.open_connection(
        "127.0.0.1", env.port, ssl=ctx, local_addr=(source, 0)), 10)
    try:
        writer.write(get(host, path, method=method, extra=extra))
        resp: Message = await asyncio.wait_for(read_response(reader, method), 10)
    finally:
        writer.close()
    assert resp.status == 200 or resp.header("x-ami-reason") == "not_authorized", resp
    return resp.status


async def test_ip_blocks_refuse_one_client_address(env: Env) -> None:
    assert await call(env, "/a", source="127.0.0.2") == 200
    assert await call(env, "/a", source="127.0.0.3") == 403
    assert await call(env, "/a", source="127.0.0.3", service="productpage") == 403


async def test_not_paths_and_not_methods(env: Env) -> None:
    assert await call(env, "/admin/users/7", method="DELETE") == 200
    assert await call(env, "/users/7", method="DELETE") == 403
    assert await call(env, "/private/x") == 403  # plaintext: no service, ALLOW's notServices
    assert await call(env, "/private/x", service="productpage") == 200
    assert await call(env, "/private/x", service="ratings") == 403


async def test_not_hosts(env: Env) -> None:
    assert await call(env, "/a", host="reviews") == 200
    assert await call(env, "/a", host="ADMIN.example.com:9080") == 403
    # an empty port (the router takes the name alone) is no way around the rule
    assert await call(env, "/a", host="admin.example.com:") == 403


async def test_not_values(env: Env) -> None:
    assert await call(env, "/tiered/a", extra="x-tier: gold\r\n") == 200
    # absent: not known to be gold or silver, so the DENY refuses it (Istio's answer too);
    # leaving the header out must not pass a rule meant for other tiers
    assert await call(env, "/tiered/a") == 403
    assert await call(env, "/tiered/a", extra="x-tier: bronze\r\n") == 403
    assert await call(env, "/tiered/a", extra="x-tier: gold\r\nx-tier: bronze\r\n") == 403
    assert await call(env, "/a") == 200  # a path the rule is not about


async def test_a_deny_with_not_namespaces_refuses_plaintext(env: Env) -> None:
    """A plaintext caller has no namespace: `notNamespaces: [default]` in a DENY counts
    against it (what the DENY is for), while a caller of `default` passes."""
    assert await call(env, "/internal/x") == 403
    assert await call(env, "/internal/x", service="productpage") == 200
