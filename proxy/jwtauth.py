"""End-user authentication: the JWTs of the RequestAuthentication policies that apply here.

Built once per snapshot (the JWK Sets are parsed into key objects then, never per request) and
run only by a listener that has such a policy, so other traffic pays nothing. Istio's
semantics: a request without a token passes with no principal; a request with a token that
does not verify is refused (``jwt_invalid``, 401). Signatures are checked by PyJWT, with the
algorithms that belong to the key the token names: never ``none``, never HMAC.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any
from urllib.parse import unquote_plus

from proxy.headers import spellings

if TYPE_CHECKING:
    from meshctl.api.authn import JwtRule, RequestAuthenticationSpec
    from proxy.exchange import Exchange

log = logging.getLogger("ami.proxy.jwt")

CLOCK_SKEW = 60.0  # seconds of leeway on exp / nbf / iat, as Envoy's jwt_authn default
MAX_TOKEN = 16384  # bytes: a longer "token" is refused before any parsing
CACHE_SIZE = 256  # verified tokens kept per snapshot (as Envoy's jwt_cache), oldest out first

WWW_AUTHENTICATE = ((b"www-authenticate", b'Bearer error="invalid_token"'),)


class InvalidToken(Exception):
    """A token was presented and does not verify; the message says why (debug log)."""


@dataclass(slots=True, eq=False)  # compared by identity
class _Issuer:
    rule: JwtRule
    by_kid: dict[str, list[tuple[Any, tuple[str, ...]]]] = field(default_factory=dict)
    keys: list[tuple[Any, tuple[str, ...]]] = field(default_factory=list)
    # keys without a kid of their own: candidates for every token, whatever kid it names
    # (as Envoy's jwt_verify_lib skips only a key whose kid differs)
    unnamed: list[tuple[Any, tuple[str, ...]]] = field(default_factory=list)


@dataclass(slots=True)
class _Location:
    """Where tokens are looked for: a header (lower-case name, prefix) or a query parameter."""

    header: bytes | None
    prefix: str
    param: str | None
    issuers: dict[str, list[_Issuer]] = field(default_factory=dict)  # iss -> its rules here


Authenticated = tuple[str, Mapping[str, Any]]  # (principal '<iss>/<sub>', claims)


class JwtAuthenticator:
    """Finds, verifies and strips the request's JWT; see the module docstring."""

    def __init__(self, specs: Sequence[RequestAuthenticationSpec]) -> None:
        from meshctl.api.authn import load_key, parse_jwks

        self.locations: list[_Location] = []
        found: dict[tuple[bytes | None, str, str | None], _Location] = {}
        self.output_headers: set[bytes] = set()
        for spec in specs:
            for rule in spec.jwt_rules:
                # Every rule counts, even of an issuer another rule (or policy) names too: a
                # token is accepted if one of its issuer's rules where it was found verifies
                # it (Envoy's requires_any over Istio's per-rule providers). Dropping the later
                # rule left its locations unchecked and its output header forgeable.
                issuer = _Issuer(rule)
                for key, algorithms in parse_jwks(rule.jwks or '{"keys": []}', "jwks",
                                                  allow_empty=True):
                    entry = (load_key(key, algorithms[0]), algorithms)
                    issuer.keys.append(entry)
                    if isinstance(key.get("kid"), str):
                        issuer.by_kid.setdefault(key["kid"], []).append(entry)
                    elif "kid" not in key:
                        issuer.unnamed.append(entry)
                places: list[tuple[bytes | None, str, str | None]] = [
                    (h.name.encode("latin-1"), h.prefix, None) for h in rule.from_headers]
                places += [(None, "", p) for p in rule.from_params]
                for place in places:
                    loc = found.get(place)
                    if loc is None:
                        loc = found[place] = _Location(*place)
                        self.locations.append(loc)
                    loc.issuers.setdefault(rule.issuer, []).append(issuer)
                if rule.output_payload_to_header:
                    # every spelling an app could read as it (see headers.spellings)
                    self.output_headers.update(spellings(
                        rule.output_payload_to_header.lower().encode("latin-1")))
        self.header_names = frozenset(loc.header for loc in self.locations if loc.header)
        self.uses_params = any(loc.param is not None for loc in self.locations)
        # token -> (issuer, claims) of tokens verified with these keys: a client sends the same
        # token many times, and a signature check costs far more than the request
        self._verified: dict[str, tuple[_Issuer, dict[str, Any]]] = {}
        self.clock = time.time

    def authenticate(self, ex: Exchange) -> Authenticated | None:
        """The request's principal and claims, or None when it has no token; raises
        InvalidToken for one that does not verify. Edits the headers sent to the app: the
        token's header is removed (unless forwardOriginalToken) and outputPayloadToHeader is
        set from the verified token, never from the client."""
        found: list[tuple[str, _Location]] = []
        if self.header_names:
            for loc in self.locations:
                if loc.header is None:
                    continue
                tokens = _header_tokens(ex.headers, loc.header, loc.prefix)
                if len(tokens) > 1:
                    raise InvalidToken(f"more than one token in {loc.header.decode()}")
                if tokens:
                    found.append((tokens[0], loc))
        if self.uses_params and ex.query:
            params = _query_params(ex.query)
            for loc in self.locations:
                if loc.param is None:
                    continue
                values = params.get(loc.param, [])
                if len(values) > 1:
                    raise InvalidToken(f"more than one token in parameter {loc.param}")
                if values:
                    found.append((values[0], loc))
        if len({token for token, _ in found}) > 1:
            raise InvalidToken("more than one token in the request")
        if not found:
            if self.output_headers:
                ex.headers = [h for h in ex.headers if h[0].lower() not in self.output_headers]
            return None
        token = found[0][0]
        issuer, claims = self._verify(token, [loc for _, loc in found])
        rule = issuer.rule
        drop = set(self.output_headers)
        if not rule.forward_original_token:
            for _, loc in found:
                if loc.header is not None:
                    drop.update(spellings(loc.header))
            names = {loc.param for _, loc in found if loc.param is not None}
            if names:
                _drop_params(ex, names)
        headers = [h for h in ex.headers if h[0].lower() not in drop] if drop \
            else ex.headers
        if rule.output_payload_to_header:
            headers.append((rule.output_payload_to_header.encode("latin-1"),
                            token.split(".")[1].encode("ascii")))
        ex.headers = headers
        return f"{claims['iss']}/{claims.get('sub', '')}", claims

    def _verify(self, token: str, locations: list[_Location]) -> tuple[_Issuer, dict[str, Any]]:
        cached = self._verified.get(token)
        if cached is not None:
            issuer, claims = cached
            # checked as numbers when the token was verified (_verify_signed); here again,
            # the token may have been cached before its exp (or the clock stepped back)
            now = self.clock()
            exp, nbf = claims.get("exp"), claims.get("nbf")
            if exp is not None and now >= exp + CLOCK_SKEW:
                del self._verified[token]
                raise InvalidToken("Signature has expired")
            if nbf is not None and now < nbf - CLOCK_SKEW:
                raise InvalidToken("The token is not yet valid (nbf)")
            if any(issuer in loc.issuers.get(claims["iss"], ()) for loc in locations):
                return cached
            # else found where its issuer is not accepted: verified again below, and refused
        verified = self._verify_signed(token, locations)
        if len(self._verified) >= CACHE_SIZE:
            del self._verified[next(iter(self._verified))]
        self._verified[token] = verified
        return verified

    def _verify_signed(self, token: str, locations: list[_Location],
                       ) -> tuple[_Issuer, dict[str, Any]]:
        import jwt

        if len(token) > MAX_TOKEN:
            raise InvalidToken("token too long")
        try:
            unverified_all = jwt.api_jwt.decode_complete(token,
                                                         options={"verify_signature": False})
        except jwt.PyJWTError as err:
            raise InvalidToken(f"malformed token: {err}") from None
        header, unverified = unverified_all["header"], unverified_all["payload"]
        iss = unverified.get("iss")
        rules: list[_Issuer] = []
        if isinstance(iss, str):
            for loc in locations:
                rules += [i for i in loc.issuers.get(iss, ()) if i not in rules]
        if not rules:
            raise InvalidToken(f"issuer {iss!r} not accepted here")
        alg, kid = header.get("alg"), header.get("kid")
        if kid is not None and not isinstance(kid, str):
            raise InvalidToken(f"unknown kid {kid!r}")
        last: Exception = InvalidToken(f"no key of {iss} verifies alg {alg!r}")
        for issuer in rules:
            rule = issuer.rule
            if kid is not None:
                candidates = issuer.by_kid.get(kid, [])
                if issuer.unnamed:
                    candidates = [*candidates, *issuer.unnamed]
                if not candidates:
                    last = InvalidToken(f"unknown kid {kid!r}")
                    continue
            else:
                candidates = issuer.keys
            for key, algorithms in candidates:
                if alg not in algorithms:
                    continue
                try:
                    claims = jwt.decode(token, key, algorithms=[alg], issuer=rule.issuer,
                                        audience=list(rule.audiences) or None,
                                        leeway=CLOCK_SKEW,
                                        # iat is no validity bound: an IdP whose clock
                                        # runs ahead must not get its fresh tokens refused
                                        # (Envoy checks only exp and nbf)
                                        options={"verify_aud": bool(rule.audiences),
                                                 "verify_iat": False})
                except jwt.PyJWTError as err:
                    last = err
                    continue
                if not isinstance(claims.get("sub", ""), str):
                    raise InvalidToken("sub is not a string")
                for name in ("exp", "nbf", "iat"):
                    # PyJWT takes int(value), so "exp": "1700000000" would pass there, and
                    # then never expire in the cache; RFC 7519: a NumericDate is a JSON number
                    if name in claims and not _numeric_date(claims[name]):
                        raise InvalidToken(f"{name} is not a NumericDate (a JSON number)")
                return issuer, claims
        raise InvalidToken(str(last))


def _numeric_date(value: object) -> bool:
    return (isinstance(value, int | float) and not isinstance(value, bool)
            and math.isfinite(value))


def _header_tokens(headers: list[tuple[bytes, bytes]], name: bytes, prefix: str) -> list[str]:
    """Tokens in every occurrence of header ``name`` that starts with ``prefix`` (its case
    ignored, as the Bearer scheme's); a value without the prefix holds no token. Its `_`
    spellings count as the name (an app may read `x_token` as `x-token`: it must not get a
    token no one verified)."""
    out = []
    size = len(name)
    key = name.replace(b"_", b"-")
    low = prefix.lower()
    for n, v in headers:
        if len(n) == size and n.lower().replace(b"_", b"-") == key:
            text = v.decode("latin-1")
            if text[:len(low)].lower() == low:
                token = text[len(low):].strip()
                if token:
                    out.append(token)
    return out


def _drop_params(ex: Exchange, names: set[str]) -> None:
    """Remove the token's query parameters from what is sent to the app (the request
    target; the path's bytes as they came), as Envoy's jwt_authn does unless `forward`: the
    app, and any log of its request URLs, must not get the token."""
    kept = "&".join(pair for pair in ex.query.split("&")
                    if unquote_plus(pair.partition("=")[0]) not in names)
    ex.query = kept
    path = ex.target.split(b"?", 1)[0]
    ex.target = path + b"?" + kept.encode("latin-1") if kept else path


def _query_params(query: str) -> dict[str, list[str]]:
    params: dict[str, list[str]] = {}
    for pair in query.split("&"):
        name, _, value = pair.partition("=")
        if value:
            params.setdefault(unquote_plus(name), []).append(unquote_plus(value))
    return params
