"""RequestAuthentication: which JSON Web Tokens a service (or the gateway) accepts from end users.

As Istio's kind of the same name: a request carrying a token that fails validation is refused
(401 ``jwt_invalid``); a request without one passes with no principal, so requiring a token is
an AuthorizationPolicy's job (``requestPrincipals`` / ``notRequestPrincipals``).

The keys are inline (``jwks``) or fetched by the control plane (``jwksUri``), which then
pushes them inline: sidecars never fetch anything.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from meshctl.api import fields as F
from meshctl.api.errors import fail
from meshctl.api.fields import Fields

JWKS_URI = r"^https?://[^\s/?#]+[^\s]*$"
DEFAULT_HEADER = ("authorization", "Bearer ")

# What a key of each type may verify. Symmetric (HMAC, kty "oct") keys and "none" are never
# accepted: a token is verified only with an algorithm that belongs to the key it names, which
# closes the classic confusions (alg "none", HS256 signed with an RSA public key as secret).
RSA_ALGORITHMS = ("RS256", "RS384", "RS512", "PS256", "PS384", "PS512")
EC_ALGORITHMS = {"P-256": "ES256", "P-384": "ES384", "P-521": "ES512"}
OKP_CURVES = ("Ed25519", "Ed448")
MAX_JWKS_BYTES = 1 << 20


@dataclass(frozen=True, slots=True)
class JwtHeader:
    """A header a token is taken from (lower-case ``name``), after ``prefix`` (e.g. 'Bearer ')."""

    name: str
    prefix: str = ""


@dataclass(frozen=True, slots=True)
class JwtRule:
    """One issuer's tokens: where they are found, how they are verified, what is forwarded."""

    issuer: str
    audiences: tuple[str, ...] = ()
    jwks: str | None = None  # a JWK Set as JSON text
    jwks_uri: str | None = None  # fetched by the control plane, which then sets ``jwks``
    from_headers: tuple[JwtHeader, ...] = (JwtHeader(*DEFAULT_HEADER),)
    from_params: tuple[str, ...] = ()
    forward_original_token: bool = False
    output_payload_to_header: str | None = None


@dataclass(frozen=True, slots=True)
class RequestAuthenticationSpec:
    """spec of a RequestAuthentication; ``service`` None applies to the whole namespace."""

    service: str | None
    jwt_rules: tuple[JwtRule, ...]


def parse_request_authentication(data: object, path: str) -> RequestAuthenticationSpec:
    """Parse RequestAuthentication.spec."""
    return _parse_spec(data, path, False)


def parse_snapshot_authentication(data: object, path: str) -> RequestAuthenticationSpec:
    """Parse a snapshot's inbound.authentication item: as the resource, but a JWK Set may be
    empty (the control plane could not fetch a jwksUri yet: every token of that issuer is
    refused until it can)."""
    return _parse_spec(data, path, True)


def _parse_spec(data: object, path: str, snapshot: bool) -> RequestAuthenticationSpec:
    f = Fields(data, path)
    service = f.optional("selector", F.service_selector)
    rules = f.value("jwtRules", F.list_of(lambda d, p: _parse_jwt_rule(d, p, snapshot)), ())
    f.finish()
    return RequestAuthenticationSpec(service, rules)


def _parse_jwt_rule(data: object, path: str, snapshot: bool) -> JwtRule:
    f = Fields(data, path)
    issuer = f.required("issuer", F.string(F.HEADER_VALUE, "an issuer without line breaks"), "")
    audiences = f.value("audiences", F.list_of(F.string(F.HEADER_VALUE, "an audience")), ())
    jwks = f.optional("jwks", _jwks_text_snapshot if snapshot else _jwks_text)
    jwks_uri = f.optional("jwksUri", F.string(JWKS_URI, "an http:// or https:// URL"))
    if f.has("jwks") and f.has("jwksUri"):
        f.add(f.path, "set one of jwks and jwksUri, not both")
    elif not f.has("jwks") and not f.has("jwksUri"):
        f.add(f.path, "set jwks (an inline JWK Set) or jwksUri (fetched by the control plane)")
    headers = f.value("fromHeaders", F.list_of(_parse_header, 1), None)
    params = f.value("fromParams", F.list_of(F.string(r"^[^\s&=#]+$", "a query parameter name"),
                                             1), ())
    forward = f.value("forwardOriginalToken", F.boolean, False)
    output = f.optional("outputPayloadToHeader", F.string(F.HEADER_NAME, "an HTTP header name"))
    f.finish()
    # Istio: naming any location replaces the default (Authorization: Bearer).
    if headers is None:
        headers = () if params else (JwtHeader(*DEFAULT_HEADER),)
    return JwtRule(issuer, audiences, jwks, jwks_uri, headers, params, forward,
                   output.lower() if output else None)


def _parse_header(data: object, path: str) -> JwtHeader:
    f = Fields(data, path)
    name = f.required("name", F.string(F.HEADER_NAME, "an HTTP header name"), "")
    prefix = f.value("prefix", _prefix, "")
    f.finish()
    return JwtHeader(name.lower(), prefix)


def _prefix(value: object, path: str) -> str:
    if not isinstance(value, str):
        fail(path, f"expected a string, got {F.describe(value)}")
    return F.string(F.HEADER_VALUE, "a header value prefix")(value, path) if value else ""


def _jwks_text(value: object, path: str, allow_empty: bool = False) -> str:
    if not isinstance(value, str):
        fail(path, f"expected a JWK Set as a JSON string, got {F.describe(value)}")
    parse_jwks(value, path, allow_empty)
    return value


def _jwks_text_snapshot(value: object, path: str) -> str:
    return _jwks_text(value, path, True)


def parse_jwks(text: str | bytes, path: str, allow_empty: bool = False,
               ) -> list[tuple[Mapping[str, Any], tuple[str, ...]]]:
    """The keys of a JWK Set (JSON) with the algorithms each may verify; raises
    ValidationError naming the key that is wrong (``keys[1]: ...``)."""
    if len(text) > MAX_JWKS_BYTES:
        fail(path, f"JWK Set larger than {MAX_JWKS_BYTES} bytes")
    try:
        data = json.loads(text)
    except (ValueError, UnicodeDecodeError) as err:
        fail(path, f"not valid JSON: {err}")
    if not isinstance(data, Mapping) or not isinstance(data.get("keys"), list):
        fail(path, 'expected a JWK Set: a JSON object with a "keys" list')
    keys = data["keys"]
    if not keys and not allow_empty:
        fail(path, "the JWK Set has no keys")
    out = []
    for index, key in enumerate(keys):
        where = f"keys[{index}]"
        if not isinstance(key, Mapping):
            fail(path, f"{where}: expected a JSON object, got {F.describe(key)}")
        try:
            algorithms = jwk_algorithms(key)
            _load_key(key, algorithms[0])
        except ValueError as err:
            kid = f" (kid {key['kid']!r})" if isinstance(key.get("kid"), str) else ""
            fail(path, f"{where}{kid}: {err}")
        out.append((key, algorithms))
    return out


def jwk_algorithms(key: Mapping[str, Any]) -> tuple[str, ...]:
    """The signature algorithms a JWK may verify; ValueError for a key Ami does not accept."""
    kty, alg, crv = key.get("kty"), key.get("alg"), key.get("crv")
    if "d" in key:
        raise ValueError("this is a private key: publish only the public part (no 'd')")
    if key.get("use") not in (None, "sig"):
        raise ValueError(f"use {key.get('use')!r}: only signing keys (use 'sig') verify tokens")
    if kty == "RSA":
        allowed: tuple[str, ...] = RSA_ALGORITHMS
    elif kty == "EC":
        if crv not in EC_ALGORITHMS:
            raise ValueError(f"unsupported EC curve {crv!r}, expected one of "
                             f"{', '.join(EC_ALGORITHMS)}")
        allowed = (EC_ALGORITHMS[crv],)
    elif kty == "OKP":
        if crv not in OKP_CURVES:
            raise ValueError(f"unsupported OKP curve {crv!r}, expected one of "
                             f"{', '.join(OKP_CURVES)}")
        allowed = ("EdDSA",)
    elif kty == "oct":
        raise ValueError("symmetric (HMAC, kty 'oct') keys are not supported: a shared secret "
                         "in a resource and every sidecar would let each of them mint tokens")
    else:
        raise ValueError(f"unsupported key type (kty) {kty!r}, expected RSA, EC or OKP")
    if alg is None:
        return allowed
    if alg not in allowed:
        raise ValueError(f"alg {alg!r} does not fit a {kty} key (expected one of "
                         f"{', '.join(allowed)})")
    return (alg,)


def _load_key(key: Mapping[str, Any], algorithm: str) -> Any:
    import jwt

    try:
        return jwt.PyJWK(dict(key), algorithm).key
    except (jwt.PyJWTError, ValueError, TypeError, KeyError) as err:
        raise ValueError(f"not a usable {key.get('kty')} public key: {err}") from None


def load_key(key: Mapping[str, Any], algorithm: str) -> Any:
    """The public key object of a JWK (checked by ``parse_jwks``), for PyJWT."""
    return _load_key(key, algorithm)
