"""A header sent more than once, through real proxies: every header matcher (route matches, and
so a rule's fault, mirror and rate limit; AuthorizationPolicy `when` conditions) reads its
values joined with ',' in order, as Envoy does (HeaderUtility::getAllOfHeaderAsString).

The outbound proxy routes `reviews`: `x-user: jason` exactly → an injected 418; `x-user:
jason,admin` exactly → v2; anything else → v1. The inbound sidecar's policies: DENY `x-user`
`jason,admin` or `mallory`; ALLOW `/open/*`, and `/user/*` for `x-user: jason`.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest

from tests.proxyharness import Backends, Message, free_port, get, roundtrip
from tests.test_mtls_static import mesh_ca, mint, start_proxy
from tests.traffic_backends import TrafficProxy, endpoints, start_backend, started

ROUTES = [{"host": "reviews", "rules": [
    {"matches": [{"headers": {"x-user": {"exact": "jason"}}}],
     "backends": [{"subset": "v1"}], "fault": {"abort": {"httpStatus": 418}}},
    {"matches": [{"headers": {"x-user": {"exact": "jason,admin"}}}],
     "backends": [{"subset": "v2"}]},
    {"backends": [{"subset": "v1"}]}]}]
POLICIES = [
    {"name": "default/deny-users", "action": "DENY",
     "rules": [{"when": [{"header": "x-user", "values": ["jason,admin", "mallory"]}]}]},
    {"name": "default/allow", "action": "ALLOW",
     "rules": [{"to": [{"paths": ["/open/*"]}]},
               {"to": [{"paths": ["/user/*"]}],
                "when": [{"header": "x-user", "values": ["jason"]}]}]},
]


def users(*values: str) -> str:
    """`x-user` lines, one per value, as sent."""
    return "".join(f"x-user: {v}\r\n" for v in values)


@pytest.fixture(scope="module")
def outbound(tmp_path_factory: pytest.TempPathFactory) -> Iterator[TrafficProxy]:
    hub = Backends()
    v1, v2 = start_backend(hub, version="v1"), start_backend(hub, version="v2")
    proxy = TrafficProxy(tmp_path_factory.mktemp("repeated"),
                         {"reviews": {"endpoints": endpoints(v1, v2)}}, ROUTES)
    yield from started(proxy, hub)


@pytest.fixture(scope="module")
def inbound(tmp_path_factory: pytest.TempPathFactory, echo: int) -> Iterator[int]:
    tmp = tmp_path_factory.mktemp("repeatedauthz")
    port = free_port()
    proxy = start_proxy(tmp / "reviews", mint(mesh_ca(tmp / "ca"), "reviews"), {
        "node": {"service": "reviews"}, "app": f"127.0.0.1:{echo}",
        "mesh": {"mtls": "PERMISSIVE"}, "inbound": {"authorization": POLICIES}}, inbound=port)
    try:
        yield port
    finally:
        proxy.stop()


async def routed(proxy: TrafficProxy, extra: str) -> Message:
    return await roundtrip(proxy.outbound, get("reviews", "/", extra=extra))


def answer(resp: Message) -> str | None:
    """The version that answered, or the injected status."""
    return str(resp.status) if resp.status != 200 else resp.header("x-version")


async def test_a_route_matches_a_repeated_header_as_its_values_joined(
        outbound: TrafficProxy) -> None:
    """Two `x-user` lines, jason then admin, are `jason,admin` (v2), not their first value
    (the 418 rule); each value trimmed; the same text sent on one line matches alike; one
    `jason` line is the 418 rule's; admin then jason is neither rule's (order kept)."""
    assert answer(await routed(outbound, users("jason"))) == "418"
    assert answer(await routed(outbound, users("jason", "admin"))) == "v2"
    assert answer(await routed(outbound, "x-user:  jason \r\nx-user: admin \r\n")) == "v2"
    assert answer(await routed(outbound, users("jason,admin"))) == "v2"
    assert answer(await routed(outbound, users("admin", "jason"))) == "v1"
    assert answer(await routed(outbound, "")) == "v1"


async def status(port: int, path: str, extra: str) -> int:
    return (await roundtrip(port, get("reviews", path, extra=extra))).status


async def test_authorization_conditions_read_the_joined_value_too(inbound: int) -> None:
    """An ALLOW condition on `jason` holds for one `jason` line, not for two (Envoy's RBAC
    reads `jason,jason`); a DENY of `jason,admin` refuses jason then admin sent on two lines
    as on one; a DENY of `mallory` still refuses mallory sent beside another value (Ami
    also judges each value alone, refusing more than Envoy)."""
    assert await status(inbound, "/user/1", users("jason")) == 200
    assert await status(inbound, "/user/2", users("jason", "jason")) == 403
    assert await status(inbound, "/open/1", users("jason")) == 200
    assert await status(inbound, "/open/2", users("jason", "admin")) == 403
    assert await status(inbound, "/open/3", users("jason,admin")) == 403
    assert await status(inbound, "/open/4", users("admin", "jason")) == 200
    assert await status(inbound, "/open/5", users("jason", "mallory")) == 403


class Lines:
    """A request's header lines as the proxy parsed them (proxy.policy.matching.RequestView)."""

    method, path, query = "GET", "/", ""

    def __init__(self, *lines: tuple[bytes, bytes]) -> None:
        self.headers = list(lines)


def test_the_join_is_decided_in_one_place() -> None:
    """meshctl.api.matches.joined (authorization) and the route matchers' joined_header read
    alike: None when absent, the one value as is, values trimmed and joined with ',' (HTTP/2
    cookie crumbs with '; ', as one Cookie line)."""
    from meshctl.api.matches import joined
    from proxy.policy.matching import joined_header

    lines = Lines((b"X-User", b" a "), (b"cookie", b"a=1"), (b"x-user", b"b"),
                  (b"Cookie", b"b=2 "))
    assert joined_header(lines, "x-user") == joined("x-user", ["a", "b"]) == "a,b"
    assert joined_header(lines, "cookie") == joined("cookie", ["a=1", "b=2"]) == "a=1; b=2"
    assert joined_header(lines, "x-other") is None

    assert joined("x-user", []) is None
    assert joined("x-user", ["a"]) == "a"
    assert joined("x-user", ["a", "b", ""]) == "a,b,"
    assert joined("cookie", ["a=1", "b=2"]) == "a=1; b=2"
    values: list[Any] = ["x"]
    assert joined("x-user", values) is values[0]
