"""What meshctl bug-report's redaction takes out of API answers before they reach the archive."""

from __future__ import annotations

import json

from meshctl.bugreport.redact import REDACTED, Redactor

JWT = "eyJhbGciOiJSUzI1NiJ9.eyJzdWIiOiJqYXNvbiJ9.c2lnbmF0dXJl"
PEM = ("-----BEGIN EC PRIVATE KEY-----\nMHcCAQEEIBk2mT0kcy1vZGUtc2VjcmV0LWtleS1tYXRlcmlhbA==\n"
       "-----END EC PRIVATE KEY-----")
CERT = "-----BEGIN CERTIFICATE-----\nMIIBcertificatebody\n-----END CERTIFICATE-----"


def test_secret_shapes_in_text_are_replaced() -> None:
    r = Redactor(["the-api-token-value"])
    text = r.text(f"a {JWT} b; Authorization: Bearer abc.def-ghi; Basic dXNlcjpwdw==; "
                  f"GET /cb?code=s3cr3t&state=ok&access_token=t0k; token the-api-token-value\n"
                  f"{PEM}\n{CERT}")
    for secret in (JWT, "abc.def-ghi", "dXNlcjpwdw==", "s3cr3t", "t0k", "the-api-token-value",
                   "MHcCAQEEIBk2mT0k"):
        assert secret not in text
    assert "state=ok" in text and "Bearer <redacted>" in text
    assert CERT in text  # certificates are public: support needs them


def test_secret_fields_and_jwk_private_members_are_replaced() -> None:
    doc = {
        "metadata": {"name": "api"},
        "headers": {"Authorization": "x", "x-api-key": "k1", "cookie": "c", "accept": "*/*"},
        "spec": {"jwtRules": [{"issuer": "i", "jwks": {"keys": [
            {"kty": "RSA", "n": "modulus", "e": "AQAB", "d": "private-exponent", "p": "p1"},
            {"kty": "oct", "k": "shared-secret"}]}}]},
        "adminToken": "adm-value", "bootstrap_token": "boot-value",
        "matches": [["x-api-key", {"kind": "exact", "value": "k2"}],
                    ["end-user", {"kind": "exact", "value": "jason"}]],
        "issuer": "d",  # only a JWK's members are private by name
    }
    out = Redactor().data(doc)
    flat = json.dumps(out)
    for secret in ("\"x\"", "k1", "\"c\"", "private-exponent", "p1", "shared-secret",
                   "adm-value", "boot-value", "k2"):
        assert secret not in flat, secret
    keys = out["spec"]["jwtRules"][0]["jwks"]["keys"]
    assert keys[0] == {"kty": "RSA", "n": "modulus", "e": "AQAB", "d": REDACTED, "p": REDACTED}
    assert out["headers"]["accept"] == "*/*" and out["issuer"] == "d"
    assert out["matches"][1] == ["end-user", {"kind": "exact", "value": "jason"}]


def test_short_literals_are_not_replaced_everywhere() -> None:
    """An empty or tiny token would turn every letter into <redacted>."""
    assert Redactor(["", None, "ab"]).text("abc") == "abc"
