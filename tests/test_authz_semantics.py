"""AuthorizationPolicy semantics an Istio user relies on, through a real PERMISSIVE sidecar.

One static-mode `reviews` sidecar (real process, mTLS from a CA in tmp) in PERMISSIVE mode, so
both plaintext callers (no identity) and mTLS peers reach the policies:

- DENY everything, for service `ratings` only (not this sidecar's service);
- DENY from service `ratings`; DENY when `x-user: mallory`;
- ALLOW `/open/*` to anyone; ALLOW anything from `productpage`; ALLOW `/alice/*` when
  `x-user: alice`.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import pytest

from meshctl.ca import CertificateAuthority
from tests.proxyharness import Message, ProxyProcess, free_port, get, roundtrip
from tests.test_mtls_static import (
    client_ctx,
    mesh_ca,
    mint,
    start_proxy,
    tls_roundtrip,
)

POLICIES = [
    # for another service: must not apply here (a static config may list it)
    {"selector": {"service": "ratings"}, "action": "DENY", "rules": [{}]},
    {"action": "DENY", "rules": [{"from": [{"services": ["ratings"]}]}]},
    {"action": "DENY", "rules": [{"when": [{"header": "x-user", "values": ["mallory"]}]}]},
    {"action": "ALLOW", "rules": [
        {"to": [{"paths": ["/open/*"]}]},
        {"from": [{"services": ["productpage"]}]},
        {"to": [{"paths": ["/alice/*"]}], "when": [{"header": "X-User", "values": ["alice"]}]},
    ]},
]


@dataclass
class Env:
    ca: CertificateAuthority
    proxy: ProxyProcess
    port: int


@pytest.fixture(scope="module")
def env(tmp_path_factory: pytest.TempPathFactory, echo: int) -> Iterator[Env]:
    tmp = tmp_path_factory.mktemp("authz")
    ca = mesh_ca(tmp / "ca")
    proxy: ProxyProcess | None = None
    try:
        port = free_port()
        proxy = start_proxy(tmp / "reviews", mint(ca, "reviews"), {
            "node": {"service": "reviews"}, "app": f"127.0.0.1:{echo}",
            "mesh": {"mtls": "PERMISSIVE"}, "inbound": {"authorization": POLICIES}},
            inbound=port)
        yield Env(ca, proxy, port)
    finally:
        if proxy is not None:
            proxy.stop()


async def plain(env: Env, path: str, extra: str = "") -> Message:
    return await roundtrip(env.port, get("reviews", path, extra=extra))


async def as_service(env: Env, service: str, path: str, extra: str = "") -> Message:
    ctx = client_ctx(mint(env.ca, service), env.ca.trust_bundle())
    return await tls_roundtrip(env.port, ctx, get("reviews", path, extra=extra))


def verdict(resp: Message) -> tuple[int, str | None]:
    return resp.status, resp.header("x-ami-reason")


DENIED = (403, "not_authorized")
ALLOWED = (200, None)


async def test_allow_rule_without_source_admits_plaintext(env: Env) -> None:
    """A rule with no `from` matches every caller, a plaintext one included (as in Istio)."""
    assert verdict(await plain(env, "/open/x")) == ALLOWED


async def test_policy_selecting_another_service_does_not_apply(env: Env) -> None:
    """`selector.service: ratings` is not about `reviews`, even when its sidecar's config
    lists it (static mode): its DENY-everything is not applied here."""
    assert verdict(await as_service(env, "productpage", "/open/x")) == ALLOWED


async def test_allow_by_identity_never_matches_plaintext(env: Env) -> None:
    """A plaintext caller has no identity: an ALLOW `from` cannot match it, so with ALLOW
    policies present it is refused wherever only identity-based rules admit."""
    assert verdict(await plain(env, "/private")) == DENIED
    assert verdict(await as_service(env, "productpage", "/private")) == ALLOWED


async def test_deny_by_identity_does_not_match_plaintext(env: Env) -> None:
    """Istio's well-known pitfall, kept: a DENY `from` a service refuses that service over mTLS
    but cannot match a plaintext caller (it has no identity to compare), so in PERMISSIVE
    plaintext passes such a DENY. STRICT, or ALLOW rules with `from`, shut plaintext out."""
    assert verdict(await as_service(env, "ratings", "/open/x")) == DENIED
    assert verdict(await plain(env, "/open/x")) == ALLOWED


async def test_when_header_name_is_case_insensitive(env: Env) -> None:
    """`when` names a header in any case; the request may send it in any case."""
    assert verdict(await plain(env, "/alice/x", "X-USER: alice\r\n")) == ALLOWED
    assert verdict(await plain(env, "/alice/x", "x-user: bob\r\n")) == DENIED
    assert verdict(await plain(env, "/alice/x")) == DENIED  # absent header: no match


@pytest.mark.parametrize("order", [("alice", "mallory"), ("mallory", "alice")])
async def test_deny_condition_matches_any_value_of_a_repeated_header(
        env: Env, order: tuple[str, str]) -> None:
    """A header sent twice matches a DENY condition if any of its values is listed: the app
    may read either value, so a DENY cannot be dodged by putting an innocent one first."""
    extra = "".join(f"x-user: {v}\r\n" for v in order)
    assert verdict(await plain(env, "/open/x", extra)) == DENIED


async def test_allow_condition_needs_every_value_of_a_repeated_header(env: Env) -> None:
    """A header sent twice matches an ALLOW condition only if all its values are listed, and
    their joined value too (Envoy's RBAC reads `alice,alice`): an allowed first value does not
    vouch for a second one the app may read instead, and alice twice is not `alice`."""
    assert verdict(await plain(env, "/alice/x", "x-user: alice\r\nx-user: bob\r\n")) == DENIED
    assert verdict(await plain(env, "/alice/x", "x-user: alice\r\nX-User: alice\r\n")) == DENIED
    assert verdict(await plain(env, "/alice/x", "X-User: alice\r\n")) == ALLOWED



@pytest.mark.parametrize("value", ["mallory ", "mallory\t", "mallory \t "])
async def test_trailing_whitespace_does_not_dodge_a_deny(env: Env, value: str) -> None:
    """A value's trailing whitespace is not part of it (RFC 9110 5.5), as the app reads it:
    `x-user: mallory ` is denied like `x-user: mallory`."""
    assert verdict(await plain(env, "/open/x", f"x-user: {value}\r\n")) == DENIED
    assert verdict(await plain(env, "/open/x", f"x-other: {value}\r\n")) == ALLOWED


async def test_an_underscore_spelling_counts_as_the_header(env: Env) -> None:
    """`x_user` is `x-user` to WSGI/CGI apps (both are HTTP_X_USER): a DENY on `x-user`
    sees it, and an ALLOW on `x-user: alice` does not vouch for an `x_user` it does not allow."""
    assert verdict(await plain(env, "/open/x", "x_user: mallory\r\n")) == DENIED
    assert verdict(await plain(env, "/alice/x", "x_user: alice\r\n")) == ALLOWED
    assert verdict(await plain(env, "/alice/x", "x-user: alice\r\nx_user: bob\r\n")) == DENIED
