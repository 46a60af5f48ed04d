"""RequestAuthentication validation, AuthorizationPolicy principals/claims parsing, the
snapshot's inline keys and the control plane's JWKS cache (fetch through a narrow seam)."""

from __future__ import annotations

import asyncio
import json
from typing import Any

import pytest
from aiohttp import web
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from jwt.algorithms import ECAlgorithm, RSAAlgorithm

from meshctl.api.authn import MAX_JWKS_BYTES
from meshctl.api.authz import Source, principal_matches
from meshctl.api.errors import ValidationError
from meshctl.api.resources import load_documents
from meshctl.controlplane.jwks import EMPTY_JWKS, JwksCache, JwksFetchError, http_fetch, usable_jwks
from proxy.config import ConfigError, Snapshot

RSA_JWK = {**json.loads(RSAAlgorithm.to_jwk(
    rsa.generate_private_key(public_exponent=65537, key_size=2048).public_key())), "kid": "r"}
EC_JWK = {**json.loads(ECAlgorithm.to_jwk(
    ec.generate_private_key(ec.SECP256R1()).public_key())), "kid": "e"}


def issues_of(spec: dict[str, Any], kind: str = "RequestAuthentication") -> list[str]:
    text = json.dumps({"apiVersion": "ami.mesh/v1alpha1", "kind": kind,
                       "metadata": {"name": "a"}, "spec": spec})
    try:
        load_documents(text, "r.yaml")
    except ValidationError as err:
        return [str(i) for i in err.issues]
    return []


def jwks(*keys: Any) -> str:
    return json.dumps({"keys": list(keys)})


def test_a_valid_resource_parses() -> None:
    assert issues_of({"selector": {"service": "reviews"}, "jwtRules": [
        {"issuer": "https://idp", "jwks": jwks(RSA_JWK, EC_JWK), "audiences": ["a"]},
        {"issuer": "https://other", "jwksUri": "https://idp/keys.json",
         "fromHeaders": [{"name": "x-jwt"}], "fromParams": ["token"],
         "forwardOriginalToken": True, "outputPayloadToHeader": "x-payload"}]}) == []


@pytest.mark.parametrize(("rule", "message"), [
    ({"jwks": jwks(RSA_JWK)}, "spec.jwtRules[0].issuer: field is required"),
    ({"issuer": "i"}, "spec.jwtRules[0]: set jwks (an inline JWK Set) or jwksUri"),
    ({"issuer": "i", "jwks": jwks(RSA_JWK), "jwksUri": "https://x/k"},
     "spec.jwtRules[0]: set one of jwks and jwksUri, not both"),
    ({"issuer": "i", "jwks": "{not json"}, "spec.jwtRules[0].jwks: not valid JSON"),
    ({"issuer": "i", "jwks": '{"keys": []}'}, "spec.jwtRules[0].jwks: the JWK Set has no keys"),
    ({"issuer": "i", "jwks": jwks({"kty": "oct", "k": "c2VjcmV0"})},
     "spec.jwtRules[0].jwks: keys[0]: symmetric (HMAC, kty 'oct') keys are not supported"),
    ({"issuer": "i", "jwks": jwks(RSA_JWK, {"kty": "XYZ", "kid": "k2"})},
     "spec.jwtRules[0].jwks: keys[1] (kid 'k2'): unsupported key type (kty) 'XYZ'"),
    ({"issuer": "i", "jwks": jwks({**RSA_JWK, "alg": "HS256"})},
     "spec.jwtRules[0].jwks: keys[0] (kid 'r'): alg 'HS256' does not fit a RSA key"),
    ({"issuer": "i", "jwks": jwks({**EC_JWK, "crv": "P-192"})},
     "spec.jwtRules[0].jwks: keys[0] (kid 'e'): unsupported EC curve 'P-192'"),
    ({"issuer": "i", "jwks": jwks({**RSA_JWK, "d": "AQAB"})},
     "spec.jwtRules[0].jwks: keys[0] (kid 'r'): this is a private key"),
    ({"issuer": "i", "jwks": jwks({**RSA_JWK, "n": "AA"})},
     "spec.jwtRules[0].jwks: keys[0] (kid 'r'): not a usable RSA public key"),
    ({"issuer": "i", "jwksUri": "ftp://idp/keys"},
     "spec.jwtRules[0].jwksUri: invalid value 'ftp://idp/keys', expected an http:// or "
     "https:// URL"),
    ({"issuer": "i", "jwks": {"keys": []}},
     "spec.jwtRules[0].jwks: expected a JWK Set as a JSON string, got a mapping"),
    ({"issuer": "i", "jwksUri": "https://x/k", "fromHeaders": [{"prefix": "Bearer "}]},
     "spec.jwtRules[0].fromHeaders[0].name: field is required"),
    ({"issuer": "i", "jwksUri": "https://x/k", "outputPayloadToHeader": "bad header"},
     "spec.jwtRules[0].outputPayloadToHeader: invalid value 'bad header'"),
    ({"issuer": "i", "jwksUri": "https://x/k", "forwardToken": True},
     "spec.jwtRules[0].forwardToken: unknown field, did you mean 'forwardOriginalToken'?"),
])
def test_invalid_rules_name_file_document_and_field(rule: dict[str, Any], message: str) -> None:
    issues = issues_of({"jwtRules": [rule]})
    assert any(i.startswith("r.yaml doc 1: " + message) for i in issues), issues


def test_authorization_principals_and_claims_validate() -> None:
    assert issues_of({"action": "DENY", "rules": [
        {"from": [{"notRequestPrincipals": ["*"]}]},
        {"from": [{"requestPrincipals": ["https://idp/*", "*@example.com"]}],
         "when": [{"claim": "groups", "values": ["admins"]}]}]}, "AuthorizationPolicy") == []
    issues = issues_of({"rules": [
        {"from": [{"requestPrincipals": ["a*b"]}],
         "when": [{"claim": "groups", "header": "x", "values": ["v"]}, {"values": ["v"]}]}]},
        "AuthorizationPolicy")
    assert issues == [
        "r.yaml doc 1: spec.rules[0].from[0].requestPrincipals[0]: invalid value 'a*b', "
        "expected '<issuer>/<subject>', with at most one '*' at its start or end, or '*'",
        "r.yaml doc 1: spec.rules[0].when[0]: set one of header (a request header) and claim "
        "(a claim of the request's JWT)",
        "r.yaml doc 1: spec.rules[0].when[1]: set one of header (a request header) and claim "
        "(a claim of the request's JWT)"]


def test_principal_patterns() -> None:
    assert principal_matches("*", "i/s") and not principal_matches("*", None)
    assert principal_matches("https://idp/*", "https://idp/alice")
    assert principal_matches("*/alice", "https://idp/alice")
    assert not principal_matches("https://idp/alice", "https://idp/alice2")
    deny_anonymous = Source(not_request_principals=("*",))
    assert deny_anonymous.matches(None, None, None, None)
    assert not deny_anonymous.matches(None, None, None, "i/s")


def test_snapshot_refuses_a_jwks_uri_and_accepts_an_empty_set() -> None:
    """A sidecar never fetches: a snapshot with jwksUri is refused; the control plane's empty
    set (nothing fetched yet) is accepted."""
    rule = {"issuer": "i", "jwksUri": "https://idp/keys"}
    with pytest.raises(ConfigError, match=r"inbound.authentication\[0\].jwtRules\[0\].jwksUri"):
        Snapshot.from_dict({"inbound": {"authentication": [{"jwtRules": [rule]}]}})
    snap = Snapshot.from_dict({"inbound": {"authentication": [
        {"jwtRules": [{"issuer": "i", "jwks": EMPTY_JWKS}]}]}})
    assert snap.authentication[0].jwt_rules[0].issuer == "i"


def test_usable_jwks_skips_keys_it_cannot_verify_with() -> None:
    body = jwks({"kty": "RSA", "use": "enc", "n": "x", "e": "AQAB"},
                {"kty": "oct", "k": "c2VjcmV0"}, RSA_JWK).encode()
    assert json.loads(usable_jwks(body))["keys"] == [RSA_JWK]


async def test_jwks_cache_fetches_on_change_refreshes_and_keeps_last_good_keys() -> None:
    """want() fetches new URIs and URIs of a changed resource at once; run() refreshes them
    all every `refresh` seconds; a failed fetch keeps the last good set and is counted."""
    served: dict[str, Any] = {"u": jwks(RSA_JWK).encode()}
    calls: list[str] = []
    changes: list[int] = []

    async def fetch(uri: str) -> bytes:
        calls.append(uri)
        body = served[uri]
        if isinstance(body, Exception):
            raise body
        return bytes(body)

    class Counters:
        jwks_fetches = 0
        jwks_fetch_failures = 0

    counters = Counters()
    cache = JwksCache(refresh=0.2, fetch=fetch, on_change=lambda: changes.append(1),
                      counters=counters)
    task = asyncio.create_task(cache.run())

    async def until(check: Any, what: str) -> None:
        deadline = asyncio.get_running_loop().time() + 5
        while not check():
            assert asyncio.get_running_loop().time() < deadline, what
            await asyncio.sleep(0.01)

    try:
        assert cache.jwks("u") == EMPTY_JWKS
        cache.want({"u": 3})
        await until(lambda: cache.jwks("u") != EMPTY_JWKS, "first fetch")
        assert changes == [1]
        cache.want({"u": 3})  # same resourceVersion: no fetch beyond the periodic ones
        served["u"] = jwks(RSA_JWK, EC_JWK).encode()
        cache.want({"u": 4})  # the resource changed: fetched now
        await until(lambda: "\"e\"" in cache.jwks("u"), "fetch after a change")
        good = cache.jwks("u")
        served["u"] = OSError("connection refused")
        await until(lambda: counters.jwks_fetch_failures >= 2, "refresh failures")
        assert cache.jwks("u") == good and "connection refused" in cache.errors["u"]
        cache.want({})  # no resource names it any more: forgotten
        assert cache.jwks("u") == EMPTY_JWKS
    finally:
        task.cancel()


def test_a_cached_token_is_refused_once_expired() -> None:
    """Verified tokens are cached per snapshot; a hit still checks exp (with the skew)."""
    import time

    import jwt

    from meshctl.api.authn import parse_request_authentication
    from proxy.jwtauth import CLOCK_SKEW, InvalidToken, JwtAuthenticator

    key = ec.generate_private_key(ec.SECP256R1())
    authn = JwtAuthenticator([parse_request_authentication(
        {"jwtRules": [{"issuer": "i", "jwks": jwks(
            {**json.loads(ECAlgorithm.to_jwk(key.public_key())), "kid": "k"})}]}, "spec")])
    now = time.time()
    token = jwt.encode({"iss": "i", "sub": "s", "exp": int(now) + 10}, key, algorithm="ES256",
                       headers={"kid": "k"})

    class Exchange:
        def __init__(self) -> None:
            self.headers = [(b"authorization", b"Bearer " + token.encode())]
            self.query = ""

    assert authn.authenticate(Exchange()) is not None  # type: ignore[arg-type]
    assert authn.authenticate(Exchange()) is not None  # type: ignore[arg-type]  # cached
    authn.clock = lambda: now + 11 + CLOCK_SKEW
    with pytest.raises(InvalidToken):
        authn.authenticate(Exchange())  # type: ignore[arg-type]


async def test_http_fetch_reads_a_set_sent_in_chunks_and_caps_the_size() -> None:
    """A real HTTP server on 127.0.0.1 sends the set in small chunks (as a large provider set
    arrives over the network): all of it is read, not the first chunk; a body over the cap
    is refused however it is sent."""
    keys = [{**RSA_JWK, "kid": f"k{i}"} for i in range(30)]
    body = jwks(*keys).encode()
    big = b" " * (MAX_JWKS_BYTES + 10)

    async def chunked(request: web.Request) -> web.StreamResponse:
        data = big if request.path == "/big" else body
        resp = web.StreamResponse(headers={"Content-Type": "application/json"})
        await resp.prepare(request)
        for i in range(0, len(data), 4096):
            await resp.write(data[i:i + 4096])
            await asyncio.sleep(0)  # let each chunk go out on its own
        await resp.write_eof()
        return resp

    app = web.Application()
    app.router.add_get("/jwks", chunked)
    app.router.add_get("/big", chunked)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    try:
        port = runner.addresses[0][1]
        got = await http_fetch(f"http://127.0.0.1:{port}/jwks")
        assert got == body
        assert len(json.loads(usable_jwks(got))["keys"]) == 30
        with pytest.raises(JwksFetchError, match="larger than"):
            await http_fetch(f"http://127.0.0.1:{port}/big")
    finally:
        await runner.cleanup()
