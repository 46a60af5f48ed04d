"""Scrub secrets (tokens, keys, JWTs, credentials) from what a bug report holds."""

from __future__ import annotations

import re
from collections.abc import Iterable
from typing import Any

REDACTED = "<redacted>"

# Mapping keys whose values are credentials wherever they appear (compared lower-case, without
# '-' and '_'): headers as a tap or an error may echo them, and token fields of any answer.
SECRET_KEYS = frozenset({
    "authorization", "proxyauthorization", "cookie", "setcookie", "xapikey", "apikey",
    "token", "apitoken", "admintoken", "bootstraptoken", "accesstoken", "idtoken",
    "refreshtoken", "password", "passwd", "secret", "clientsecret",
})
# A JWK's private members (RFC 7518 §6.2.2, §6.3.2, §6.4): never published, redacted if pasted.
JWK_PRIVATE = frozenset({"d", "p", "q", "dp", "dq", "qi", "oth", "k"})

_PEM_PRIVATE = re.compile(
    r"-----BEGIN ([A-Z0-9 ]*)PRIVATE KEY-----.*?-----END \1PRIVATE KEY-----", re.S)
_JWT = re.compile(r"\beyJ[A-Za-z0-9_-]{4,}\.[A-Za-z0-9_-]{4,}\.[A-Za-z0-9_-]*")
_BEARER = re.compile(r"\b(Bearer|Basic)\s+[A-Za-z0-9._~+/=-]+", re.I)
_SECRET_QUERY = re.compile(
    r"([?&](?:access_token|id_token|token|api_key|apikey|key|password|secret|code)=)[^&#\s\"']*",
    re.I)


def _norm(key: str) -> str:
    return key.lower().replace("-", "").replace("_", "")


class Redactor:
    """Knows the literal secrets at hand (the API token) and the shapes of the others."""

    def __init__(self, literals: Iterable[str | None] = ()) -> None:
        # Longest first, so a token that contains another is replaced whole.
        self.literals = sorted({s for s in literals if s and len(s) >= 8}, key=len, reverse=True)

    def text(self, value: str) -> str:
        """A string with every secret shape and known secret replaced."""
        for literal in self.literals:
            value = value.replace(literal, REDACTED)
        value = _PEM_PRIVATE.sub(f"-----BEGIN PRIVATE KEY-----{REDACTED}-----END PRIVATE KEY-----",
                                 value)
        value = _JWT.sub(REDACTED, value)
        value = _BEARER.sub(lambda m: f"{m.group(1)} {REDACTED}", value)
        return _SECRET_QUERY.sub(lambda m: m.group(1) + REDACTED, value)

    def data(self, value: Any) -> Any:
        """A decoded JSON value with secret fields and secret-shaped strings replaced."""
        if isinstance(value, dict):
            jwk = "kty" in value
            return {k: (REDACTED if _norm(str(k)) in SECRET_KEYS or (jwk and k in JWK_PRIVATE)
                        else self.data(v)) for k, v in value.items()}
        if isinstance(value, list):
            if len(value) == 2 and isinstance(value[0], str) and _norm(value[0]) in SECRET_KEYS:
                return [value[0], REDACTED]  # a (name, matcher) pair: a config dump's headers
            return [self.data(v) for v in value]
        if isinstance(value, str):
            return self.text(value)
        return value
