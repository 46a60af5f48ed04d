"""consistentHash.httpCookie in parts: the resource's checks, the request's cookie, the
Set-Cookie, the token naming an endpoint, and the balancer that honours it."""

from __future__ import annotations

import random
from dataclasses import dataclass
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from meshctl.api.errors import ValidationError
from meshctl.api.policy import ConsistentHash, parse_destination_policy
from meshctl.commands.proxyconfig_sections import _lb
from proxy.policy.balancer import RingHashBalancer
from proxy.policy.sticky import StickyBalancer, endpoint_token
from proxy.sessioncookie import CookieAffinity, SetCookie, request_cookie, set_cookie_value
from tests.test_api_jsonschema import parser_accepts, schema_accepts


def _spec(cookie: Any) -> dict[str, Any]:
    return {"host": "web", "loadBalancer": "CONSISTENT_HASH",
            "consistentHash": {"httpCookie": cookie}}


def test_the_cookie_form_reads_name_path_and_ttl() -> None:
    """Istio's httpCookie: the name kept as written (cookie names are case-sensitive), the path,
    the ttl in seconds; 0s (a session cookie) is not the same as no ttl (never set)."""
    spec = parse_destination_policy(_spec({"name": "JSESSIONID", "path": "/cart",
                                            "ttl": "1h"}), "spec")
    assert spec.policy.consistent_hash == ConsistentHash("httpCookie", "JSESSIONID", "/cart",
                                                         3600.0)
    session = parse_destination_policy(_spec({"name": "s", "ttl": "0s"}), "spec")
    assert session.policy.consistent_hash == ConsistentHash("httpCookie", "s", None, 0.0)
    never = parse_destination_policy(_spec({"name": "s"}), "spec")
    assert never.policy.consistent_hash == ConsistentHash("httpCookie", "s", None, None)


@pytest.mark.parametrize(("cookie", "error"), [
    ({"path": "/"}, "spec.consistentHash.httpCookie.name: field is required"),
    ({"name": "a b"}, "spec.consistentHash.httpCookie.name: invalid value 'a b', expected a "
                      "cookie name (an RFC 6265 token"),
    ({"name": "a=b"}, "httpCookie.name: invalid value 'a=b'"),
    ({"name": "s", "path": "cart"}, "spec.consistentHash.httpCookie.path: invalid value 'cart',"
                                    " expected a cookie path: `/`, then printable characters"),
    ({"name": "s", "path": "/a;Domain=evil"}, "httpCookie.path: invalid value"),
    ({"name": "s", "ttl": "500ms"}, "spec.consistentHash.httpCookie.ttl: must be at least 1s"),
    ({"name": "s", "ttl": "soon"}, "spec.consistentHash.httpCookie.ttl:"),
    ({"name": "s", "domain": "x"}, "httpCookie.domain: unknown field, expected one of name, "
                                   "path, ttl"),
    ("session", "spec.consistentHash.httpCookie: expected a mapping"),
])
def test_a_bad_cookie_is_refused_with_its_field_path(cookie: Any, error: str) -> None:
    with pytest.raises(ValidationError) as caught:
        parse_destination_policy(_spec(cookie), "spec")
    assert error in str(caught.value)


def test_the_cookie_is_one_form_of_four() -> None:
    with pytest.raises(ValidationError) as caught:
        parse_destination_policy({"host": "web", "loadBalancer": "CONSISTENT_HASH",
                                  "consistentHash": {"httpCookie": {"name": "s"},
                                                     "header": "x-user"}}, "spec")
    assert "set exactly one of header, queryParameter, sourceIp, httpCookie" in str(caught.value)
    with pytest.raises(ValidationError) as caught:
        parse_destination_policy({"host": "web", "loadBalancer": "CONSISTENT_HASH"}, "spec")
    assert "{httpCookie: {name: NAME}}" in str(caught.value)


def test_the_json_schema_agrees_with_the_parser() -> None:
    """What the parser takes the schema takes, what it refuses (that a schema can express)
    the schema refuses."""
    def policy(hashing: Any) -> dict[str, Any]:
        return {"apiVersion": "ami.mesh/v1alpha1", "kind": "DestinationPolicy",
                "metadata": {"name": "web"}, "spec": {
                    "host": "web", "loadBalancer": "CONSISTENT_HASH", "consistentHash": hashing}}

    good = [{"httpCookie": {"name": "session"}},
            {"httpCookie": {"name": "__Host-sticky", "path": "/", "ttl": "1h"}},
            {"httpCookie": {"name": "JSESSIONID", "path": "/cart", "ttl": "0s"}}]
    bad = [{"httpCookie": {"path": "/"}}, {"httpCookie": {"name": "a b"}},
           {"httpCookie": {"name": "s", "path": "relative"}},
           {"httpCookie": {"name": "s", "path": "/a;b"}},
           {"httpCookie": {"name": "s", "ttl": "-1s"}},
           {"httpCookie": {"name": "s", "domain": "example.com"}},
           {"httpCookie": {"name": "s"}, "header": "x"}]
    for hashing in good:
        assert parser_accepts(policy(hashing)) and schema_accepts(policy(hashing)), hashing
    for hashing in bad:
        assert not parser_accepts(policy(hashing)), hashing
        assert not schema_accepts(policy(hashing)), hashing


def test_proxy_config_shows_the_cookie() -> None:
    """`meshctl proxy-config`'s LB column, as for a header: the form, the name, then path and
    ttl when set."""
    lb = {"load_balancer": "CONSISTENT_HASH"}
    assert _lb({**lb, "consistent_hash": {"kind": "httpCookie", "name": "sticky",
                                          "path": "/", "ttl": 3600.0}}) \
        == "CONSISTENT_HASH httpCookie sticky path / ttl 1h"
    assert _lb({**lb, "consistent_hash": {"kind": "httpCookie", "name": "s", "path": None,
                                          "ttl": 0.0}}) == "CONSISTENT_HASH httpCookie s ttl 0s"
    assert _lb({**lb, "consistent_hash": {"kind": "httpCookie", "name": "s", "path": None,
                                          "ttl": None}}) == "CONSISTENT_HASH httpCookie s"


# --- the request's cookie ------------------------------------------------------------------
def _cookies(*values: bytes) -> list[tuple[bytes, bytes]]:
    return [(b"host", b"web"), *((b"Cookie", v) for v in values), (b"accept", b"*/*")]


@pytest.mark.parametrize(("headers", "value"), [
    (_cookies(b"sticky=abc"), "abc"),
    (_cookies(b"a=1; sticky=abc; b=2"), "abc"),
    (_cookies(b"a=1;sticky=abc;b=2"), "abc"),  # no space after `;`
    (_cookies(b"a=1", b"b=2", b"sticky=abc"), "abc"),  # several Cookie headers
    (_cookies(b"  sticky  =  abc  "), "abc"),  # spaces round the name and the value
    (_cookies(b'sticky="abc"'), "abc"),  # RFC 6265 allows a quoted value; Envoy's are
    (_cookies(b'sticky="'), '"'),  # one quote alone is the value
    (_cookies(b"sticky=a=b=="), "a=b=="),  # base64 keeps its `=`
    (_cookies(b"sticky=first; sticky=second"), "first"),  # the first (most specific path)
    (_cookies(b"xsticky=no; stickyx=no; Sticky=no"), None),  # the name exactly, case and all
    (_cookies(b"sticky; other=1"), None),  # no `=`: not this cookie
    (_cookies(b"sticky="), None),  # empty: as none (Envoy's)
    (_cookies(b'sticky=""'), None),
    (_cookies(b""), None),
    ([(b"cookie2", b"sticky=abc"), (b"x-cookie", b"sticky=abc")], None),
    ([(b"COOKIE", b"sticky=abc")], "abc"),  # header names are not case-sensitive
    (_cookies(b"sticky=caf\xc3\xa9\xff\x00"), "caf\xc3\xa9\xff\x00"),  # any byte, as latin-1
])
def test_the_request_cookie_is_found_wherever_the_client_put_it(
        headers: list[tuple[bytes, bytes]], value: str | None) -> None:
    assert request_cookie(headers, b"sticky") == value


@given(st.lists(st.tuples(st.sampled_from([b"cookie", b"Cookie", b"x"]), st.binary()),
                max_size=6))
def test_hostile_cookie_headers_never_break_the_parse(headers: list[tuple[bytes, bytes]]) -> None:
    """Any bytes at all: a value (a non-empty string) or None, never an exception; the key it
    gives hashes too."""
    value = request_cookie(headers, b"sticky")
    assert value is None or (isinstance(value, str) and value)
    if value is not None:
        endpoint_token(value)  # (the ring hashes keys the same way)


@given(st.text(alphabet=st.characters(min_codepoint=0x21, max_codepoint=0x7e,
                                      exclude_characters=';," \\'), min_size=1, max_size=40))
def test_a_value_set_is_read_back(value: str) -> None:
    """What the proxy sets (any cookie-octet string) is what it reads next time."""
    line = set_cookie_value("sticky", value, "/", 60)
    sent = line.split(b";")[0]  # what a browser sends back: name=value
    assert request_cookie([(b"cookie", b"a=1; " + sent)], b"sticky") == value


def test_the_set_cookie_has_envoys_attributes() -> None:
    """Path when given, Max-Age for a ttl (whole seconds, rounded up), none for ttl 0 (a
    session cookie), HttpOnly always."""
    assert set_cookie_value("s", "v", "/cart", 3600) == b"s=v; Path=/cart; Max-Age=3600; HttpOnly"
    assert set_cookie_value("s", "v", None, 90.5) == b"s=v; Max-Age=91; HttpOnly"
    assert set_cookie_value("s", "v", "/", 0) == b"s=v; Path=/; HttpOnly"


def test_the_token_is_the_same_in_every_process() -> None:
    """Every sidecar and gateway replica must read a cookie set by another the same way."""
    assert endpoint_token("127.0.0.1:9080") == "980d2f806a5333a9"  # computed in another process
    assert endpoint_token("127.0.0.1:9081") != endpoint_token("127.0.0.1:9080")


# --- the balancer --------------------------------------------------------------------------
@dataclass(eq=False)
class Ep:
    name: str
    healthy: bool = True


def _sticky(eps: list[Ep]) -> StickyBalancer[Ep]:
    ring = RingHashBalancer(eps, lambda e: e.name, random.Random(1), lambda e: e.healthy)
    return StickyBalancer(ring, {endpoint_token(e.name): e for e in eps}, lambda e: e.healthy)


def test_a_token_goes_to_its_endpoint_whatever_the_ring_says() -> None:
    eps = [Ep(f"10.0.0.{i}:80") for i in range(5)]
    sticky = _sticky(eps)
    for ep in eps:
        assert sticky.pick_by_key(endpoint_token(ep.name)) is ep
    # the ring alone sends some of these tokens elsewhere: the lookup is what keeps them
    ring = sticky.inner
    assert any(ring.pick_by_key(endpoint_token(ep.name)) is not ep for ep in eps)


def test_a_token_survives_endpoints_joining_and_leaving() -> None:
    """Ring hashing moves ~1/n of the keys when an endpoint joins; a token moves none."""
    eps = [Ep(f"10.0.0.{i}:80") for i in range(4)]
    tokens = {ep.name: endpoint_token(ep.name) for ep in eps}
    grown = [*eps, *(Ep(f"10.0.1.{i}:80") for i in range(8))]
    shrunk = eps[:2]
    for members in (grown, shrunk):
        sticky = _sticky(members)
        for ep in members[:len(eps)]:
            assert sticky.pick_by_key(tokens[ep.name]) is ep


def test_an_unavailable_or_excluded_endpoint_passes_its_token_on_round_the_ring() -> None:
    """Ejected, or already tried by this request (a retry): the token is hashed like any key,
    so every proxy agrees on where it goes instead."""
    eps = [Ep(f"10.0.0.{i}:80") for i in range(4)]
    sticky = _sticky(eps)
    token = endpoint_token(eps[0].name)
    other = sticky.pick_by_key(token, [eps[0]])
    assert other is not None and other is not eps[0]
    assert other is sticky.inner.pick_by_key(token, [eps[0]])
    eps[0].healthy = False
    assert sticky.pick_by_key(token) is sticky.inner.pick_by_key(token)
    assert sticky.pick_by_key(token) is not eps[0]


def test_any_other_key_is_the_rings() -> None:
    eps = [Ep(f"10.0.0.{i}:80") for i in range(4)]
    sticky = _sticky(eps)
    for i in range(50):
        assert sticky.pick_by_key(f"user-{i}") is sticky.inner.pick_by_key(f"user-{i}")


# --- the response's Set-Cookie -------------------------------------------------------------
@dataclass(eq=False)
class Pool:
    address: str


class FakeTransport:
    def __init__(self, port: int) -> None:
        self.port = port

    def get_extra_info(self, name: str) -> Any:
        return ("127.0.0.1", self.port) if name == "peername" else None


class FakeConnection:
    def __init__(self, port: int) -> None:
        self.transport = FakeTransport(port)


class FakeExchange:
    """What the cookie's key and edits read of an exchange."""

    def __init__(self, cookie: bytes | None = None, port: int = 40000) -> None:
        self.headers = _cookies(cookie) if cookie is not None else [(b"host", b"web")]
        self.response_edits: Any = None
        self.http2 = False
        self.downstream: Any = FakeConnection(port)  # the client connection
        self.conn: object | None = None
        self.pool: Pool | None = None


POOLS = [Pool("127.0.0.1:9001"), Pool("127.0.0.1:9002")]


def _affinity(ttl: float | None = 60.0) -> CookieAffinity:
    return CookieAffinity(ConsistentHash("httpCookie", "sticky", "/", ttl), POOLS,
                          lambda p: p.address)


def _answered(ex: FakeExchange, pool: Pool) -> list[tuple[bytes, bytes]]:
    ex.conn, ex.pool = object(), pool
    out: list[tuple[bytes, bytes]] = ex.response_edits.edit_pairs([(b"server", b"app")])
    return out


def test_without_the_cookie_the_answer_names_its_endpoint() -> None:
    ex = FakeExchange()
    key = _affinity().key(ex)  # type: ignore[arg-type]
    assert key is not None and key.startswith("connection:")
    token = endpoint_token(POOLS[1].address)
    assert _answered(ex, POOLS[1]) == [
        (b"server", b"app"), (b"set-cookie", f"sticky={token}; Path=/; Max-Age=60; "
                                             f"HttpOnly".encode())]


def test_concurrent_requests_of_one_connection_share_their_key() -> None:
    """The same connection, the same key; another connection (another client port), another
    key, even when its object reuses the first one's memory (the same id)."""
    affinity = _affinity()
    first, second, other = FakeExchange(), FakeExchange(), FakeExchange(port=40001)
    second.downstream = first.downstream
    keys = [affinity.key(ex) for ex in (first, second, other)]  # type: ignore[arg-type]
    assert keys[0] == keys[1] != keys[2]
    later = FakeExchange(port=40002)
    later.downstream = first.downstream  # (a new connection where the old one was)
    later.downstream.transport = FakeTransport(40002)
    assert affinity.key(later) != keys[0]  # type: ignore[arg-type]


def test_a_cookie_naming_a_serving_endpoint_costs_no_edits() -> None:
    """The request goes where its cookie says: nothing to set, so the answer's head is made
    as without the feature (no edits to apply)."""
    token = endpoint_token(POOLS[0].address)
    ex = FakeExchange(f"sticky={token}".encode())
    assert _affinity().key(ex) == token  # type: ignore[arg-type]
    assert ex.response_edits is None


def test_a_cookie_naming_the_endpoint_that_answered_is_not_set_again() -> None:
    """Installed by a second pick (a retry) that came back to the endpoint named."""
    token = endpoint_token(POOLS[0].address)
    ex = FakeExchange(f"sticky={token}".encode())
    affinity = _affinity()
    affinity.key(ex)  # type: ignore[arg-type]
    ex.pool = POOLS[1]  # tried first (say, the cookie was stale then)
    affinity.key(ex)  # type: ignore[arg-type]
    assert _answered(ex, POOLS[0]) == [(b"server", b"app")]


def test_another_endpoints_answer_sets_the_cookie_anew() -> None:
    """A stale token, a value the proxy did not make, an ejected endpoint's token, or a retry
    that went elsewhere: the cookie is made to name the endpoint that did answer."""
    named = endpoint_token(POOLS[0].address)
    ejected = CookieAffinity(ConsistentHash("httpCookie", "sticky", "/", 60.0), POOLS,
                             lambda p: p.address, lambda p: p is not POOLS[0])
    for sent, affinity, retried in ((endpoint_token("127.0.0.1:1"), _affinity(), False),
                                    ("user-42", _affinity(), False),
                                    (named, ejected, False),
                                    (named, _affinity(), True)):
        ex = FakeExchange(f"sticky={sent}".encode())
        assert affinity.key(ex) == sent  # type: ignore[arg-type]
        if retried:  # the first pick went to the endpoint named; the retry elsewhere
            assert ex.response_edits is None
            ex.pool = POOLS[0]
            assert affinity.key(ex) == sent  # type: ignore[arg-type]
        cookies = [v for n, v in _answered(ex, POOLS[1]) if n == b"set-cookie"]
        assert cookies == [f"sticky={endpoint_token(POOLS[1].address)}; Path=/; Max-Age=60; "
                           f"HttpOnly".encode()], (sent, retried)


def test_a_local_reply_sets_no_cookie() -> None:
    """No endpoint answered (a timeout, no healthy upstream...): nothing to be sticky to."""
    ex = FakeExchange()
    _affinity().key(ex)  # type: ignore[arg-type]
    ex.pool = POOLS[0]  # picked, but the attempt was dropped: no connection
    assert ex.response_edits.edit_pairs([(b"content-type", b"text/plain")]) == [
        (b"content-type", b"text/plain")]


def test_a_retry_keeps_the_first_edits_and_the_rules_own_apply_first() -> None:
    """The key is looked at again on a retry: the edits are installed once, over the rule's."""

    class RuleEdits:
        def edit_pairs(self, headers: list[tuple[bytes, bytes]]) -> list[tuple[bytes, bytes]]:
            return [*headers, (b"x-rule", b"1")]

        def apply(self, lines: list[bytes]) -> list[bytes]:
            return [*lines, b"x-rule: 1\r\n"]

    ex = FakeExchange()
    ex.response_edits = RuleEdits()
    affinity = _affinity()
    affinity.key(ex)  # type: ignore[arg-type]
    edits = ex.response_edits
    affinity.key(ex)  # type: ignore[arg-type]
    assert ex.response_edits is edits and isinstance(edits, SetCookie)
    ex.conn, ex.pool = object(), POOLS[0]
    lines = edits.apply([b"HTTP/1.1 200 OK\r\n", b"server: app\r\n"])
    token = endpoint_token(POOLS[0].address)
    assert lines == [b"HTTP/1.1 200 OK\r\n", b"server: app\r\n", b"x-rule: 1\r\n",
                     f"set-cookie: sticky={token}; Path=/; Max-Age=60; HttpOnly\r\n".encode()]


def test_without_a_ttl_there_is_no_key_and_no_cookie_to_set() -> None:
    """Envoy's rule: no cookie and no ttl, no hash (any endpoint); the cookie, when the client
    has one of its own, is still the key."""
    affinity = _affinity(ttl=None)
    ex = FakeExchange()
    assert affinity.key(ex) is None  # type: ignore[arg-type]
    assert ex.response_edits is None
    ex = FakeExchange(b"sticky=mine")
    assert affinity.key(ex) == "mine"  # type: ignore[arg-type]
    assert ex.response_edits is None
