"""End-user JWTs (RequestAuthentication + AuthorizationPolicy requestPrincipals), through real
processes: `meshctl serve`, a `reviews` sidecar in front of an echo app, a `productpage` client
sidecar, a gateway, and a JWKS server on 127.0.0.1 for `jwksUri` (keys made in the test).

- `reviews-jwt`: issuer https://idp.test with inline keys (RSA kid r1, EC kid e1), audience
  bookinfo, payload to `x-jwt-payload`; issuer https://rotating.test from the jwksUri,
  forwardOriginalToken.
- `a-mesh-jwt`, namespace-wide, sorted first: the same issuer https://idp.test from header
  `x-idp-token`, no audience; both rules of the issuer apply (neither hides the other).
- DENY `/secure/*` from notRequestPrincipals ["*"] (a token is required there); DENY
  principal https://idp.test/mallory; DENY `/admin/*` when claim groups has `guests`.
- The gateway: its own RequestAuthentication and a DENY notRequestPrincipals ["*"] on
  `/api/*`, both selecting service `gateway`.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import http.client
import json
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import jwt
import pytest
from aiohttp import web
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from jwt.algorithms import ECAlgorithm, RSAAlgorithm

from tests import meshbuilder
from tests.helpers_mesh import PYTHON, ROOT, MeshProcess, http_get, wait_for
from tests.proxyharness import Backends, echo_app

pytestmark = pytest.mark.timeout(240)

IDP = "https://idp.test"
ROTATING = "https://rotating.test"


def rsa_key() -> rsa.RSAPrivateKey:
    return rsa.generate_private_key(public_exponent=65537, key_size=2048)


def public_jwk(key: Any, kid: str) -> dict[str, Any]:
    algorithm = RSAAlgorithm if isinstance(key, rsa.RSAPrivateKey) else ECAlgorithm
    jwk = json.loads(algorithm.to_jwk(key.public_key()))
    jwk["kid"] = kid
    return dict(jwk)


@dataclass
class Jwks:
    """What the JWKS server serves now (the test changes it)."""

    keys: list[dict[str, Any]] = field(default_factory=list)
    status: int = 200
    served: int = 0


def jwks_app(state: Jwks) -> web.Application:
    async def handler(_: web.Request) -> web.Response:
        state.served += 1
        if state.status != 200:
            return web.Response(status=state.status, text="down")
        return web.json_response({"keys": state.keys})

    app = web.Application()
    app.router.add_get("/jwks", handler)
    return app


@dataclass
class Mesh:
    tmp: Path
    cp: MeshProcess
    procs: list[MeshProcess]
    client: MeshProcess
    gateway: MeshProcess
    gateway_port: int
    jwks: Jwks
    keys: dict[str, Any]


def resources(jwks_uri: str, keys: dict[str, Any]) -> str:
    inline = json.dumps({"keys": [public_jwk(keys["r1"], "r1"), public_jwk(keys["e1"], "e1")]})
    return f"""\
apiVersion: ami.mesh/v1alpha1
kind: MeshConfig
metadata: {{name: default}}
spec: {{mtls: {{mode: STRICT}}}}
---
apiVersion: ami.mesh/v1alpha1
kind: RequestAuthentication
metadata: {{name: reviews-jwt}}
spec:
  selector: {{service: reviews}}
  jwtRules:
    - issuer: {IDP}
      audiences: [bookinfo]
      jwks: '{inline}'
      outputPayloadToHeader: x-jwt-payload
    - issuer: {ROTATING}
      jwksUri: {jwks_uri}
      forwardOriginalToken: true
---
apiVersion: ami.mesh/v1alpha1
kind: RequestAuthentication
metadata: {{name: a-mesh-jwt}}
spec:
  jwtRules:
    - issuer: {IDP}
      jwks: '{inline}'
      fromHeaders: [{{name: x-idp-token}}]
---
apiVersion: ami.mesh/v1alpha1
kind: AuthorizationPolicy
metadata: {{name: reviews-require-jwt}}
spec:
  selector: {{service: reviews}}
  action: DENY
  rules:
    - from: [{{notRequestPrincipals: ["*"]}}]
      to: [{{paths: ["/secure/*"]}}]
    - from: [{{requestPrincipals: ["{IDP}/mallory"]}}]
    - to: [{{paths: ["/admin/*"]}}]
      when: [{{claim: groups, values: [guests]}}]
---
apiVersion: ami.mesh/v1alpha1
kind: Gateway
metadata: {{name: bookinfo}}
spec:
  listen: 127.0.0.1:8080
  rules: [{{destination: reviews}}]
---
apiVersion: ami.mesh/v1alpha1
kind: RequestAuthentication
metadata: {{name: gateway-jwt}}
spec:
  selector: {{service: gateway}}
  jwtRules:
    - issuer: {IDP}
      jwks: '{inline}'
---
apiVersion: ami.mesh/v1alpha1
kind: AuthorizationPolicy
metadata: {{name: gateway-require-jwt}}
spec:
  selector: {{service: gateway}}
  action: DENY
  rules: [{{from: [{{notRequestPrincipals: ["*"]}}], to: [{{paths: ["/api/*"]}}]}}]
"""


@pytest.fixture(scope="module")
def mesh(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Mesh]:
    tmp = tmp_path_factory.mktemp("jwt")
    backends = Backends()
    keys = {"r1": rsa_key(), "e1": ec.generate_private_key(ec.SECP256R1()),
            "u1": rsa_key(), "u2": rsa_key()}
    state = Jwks(keys=[public_jwk(keys["u1"], "u1")])
    jwks_port = backends.aiohttp(jwks_app(state))
    with meshbuilder.Mesh(tmp) as mesh:
        mesh.defer(backends.close)
        app = backends.aiohttp(echo_app())
        # jwksUri refetched every second here, so rotation shows without a 20-minute wait
        cp = mesh.control_plane(resources(f"http://127.0.0.1:{jwks_port}/jwks", keys),
                                warmup=0.0, args=("--jwks-refresh", "1")).cp
        mesh.sidecar("reviews", app=f"127.0.0.1:{app}")
        client = mesh.sidecar("productpage")
        gateway = mesh.gateway("gateway-jwt")
        gateway_port = int(gateway.info["gateway"].rpartition(":")[2])
        m = Mesh(tmp, cp, mesh.procs, client, gateway, gateway_port, state, keys)
        mesh.wait_synced()
        wait_for(lambda: call(m, "/open")[0] == 200, 20, "reviews reachable over mTLS")
        wait_for(lambda: call(m, "/open", token(m, "u1", iss=ROTATING))[0] == 200, 20,
                 "the jwksUri keys fetched and pushed")
        yield m


def token(m: Mesh, kid: str, *, iss: str = IDP, sub: str = "alice", aud: Any = "bookinfo",
          alg: str | None = None, key: Any = None, **claims: Any) -> str:
    now = int(time.time())
    payload = {"iss": iss, "sub": sub, "aud": aud, "iat": now, "exp": now + 300, **claims}
    payload = {k: v for k, v in payload.items() if v is not None}
    signer = key or m.keys[kid]
    return jwt.encode(payload, signer, headers={"kid": kid},
                      algorithm=alg or ("ES256" if kid == "e1" else "RS256"))


def call(m: Mesh, path: str, bearer: str | None = None, headers: dict[str, str] | None = None,
         via_gateway: bool = False) -> tuple[int, dict[str, str], bytes]:
    """GET through productpage's sidecar to reviews (or through the gateway)."""
    sent = {"Host": "reviews", **(headers or {})}
    if bearer is not None:
        sent["Authorization"] = f"Bearer {bearer}"
    if via_gateway:
        host, port = "127.0.0.1", m.gateway_port
    else:
        host, _, p = m.client.info["outbound"].rpartition(":")
        port = int(p)
    conn = http.client.HTTPConnection(host, port, timeout=10)
    try:
        conn.request("GET", path, headers=sent)
        resp = conn.getresponse()
        return resp.status, {k.lower(): v for k, v in resp.getheaders()}, resp.read()
    finally:
        conn.close()


def app_headers(body: bytes) -> dict[str, str]:
    return {k.lower(): v for k, v in json.loads(body)["headers"]}


def refused(result: tuple[int, dict[str, str], bytes]) -> bool:
    status, headers, _ = result
    return (status == 401 and headers.get("x-ami-reason") == "jwt_invalid"
            and headers.get("www-authenticate", "").startswith("Bearer"))


def test_valid_token_reaches_the_app_without_it_and_with_its_payload(mesh: Mesh) -> None:
    """A valid RSA or EC token passes; the app gets no Authorization header (Istio's default
    forwardOriginalToken: false) and the verified payload in outputPayloadToHeader."""
    for kid in ("r1", "e1"):
        tok = token(mesh, kid, groups=["users"])
        status, _, body = call(mesh, "/open", tok, {"x-jwt-payload": "forged"})
        assert status == 200, body
        seen = app_headers(body)
        assert "authorization" not in seen
        assert seen["x-jwt-payload"] == tok.split(".")[1]
        padded = seen["x-jwt-payload"] + "=" * (-len(seen["x-jwt-payload"]) % 4)
        assert json.loads(base64.urlsafe_b64decode(padded))["sub"] == "alice"


def test_no_token_passes_without_principal_and_payload_header_cannot_be_forged(
        mesh: Mesh) -> None:
    """Istio semantics: no token is no principal, not a refusal; a client's own
    x-jwt-payload never reaches the app."""
    status, _, body = call(mesh, "/open", headers={"x-jwt-payload": "forged",
                                                  "Authorization": "Basic dXNlcjpwdw=="})
    assert status == 200
    seen = app_headers(body)
    assert "x-jwt-payload" not in seen
    assert seen["authorization"] == "Basic dXNlcjpwdw=="  # not a Bearer token: left alone


def test_underscore_spellings_cannot_forge_the_payload_or_smuggle_a_token(
        mesh: Mesh) -> None:
    """WSGI/CGI apps read `x_jwt_payload` as `x-jwt-payload` (HTTP_X_JWT_PAYLOAD): that
    spelling is removed too, token or not; and a token in `x_idp_token` (a fromHeaders
    location's other spelling) is verified like one in `x-idp-token`, never passed on
    unverified."""
    status, _, body = call(mesh, "/open", headers={"x_jwt_payload": "forged"})
    assert status == 200
    assert not {"x_jwt_payload", "x-jwt-payload"} & set(app_headers(body))
    tok = token(mesh, "r1")
    status, _, body = call(mesh, "/open", tok, {"x_jwt_payload": "forged"})
    assert status == 200 and app_headers(body)["x-jwt-payload"] == tok.split(".")[1]
    assert "x_jwt_payload" not in app_headers(body)
    assert refused(call(mesh, "/open", headers={"x_idp_token": "not.a.token"}))


def test_two_policies_naming_one_issuer_both_apply(mesh: Mesh) -> None:
    """`a-mesh-jwt` (namespace-wide) and `reviews-jwt` both name https://idp.test: the token
    is checked wherever either looks for it, and each rule's own settings hold. Before, the
    first policy by name won for the issuer and the other's rule was dropped: `x-jwt-payload`
    was neither set nor stripped (forgeable) and a token in x-idp-token was never checked."""
    tok = token(mesh, "r1")
    status, _, body = call(mesh, "/open", tok, {"x-jwt-payload": "forged"})
    assert status == 200, body
    assert app_headers(body)["x-jwt-payload"] == tok.split(".")[1]
    assert refused(call(mesh, "/open", headers={"x-idp-token": token(mesh, "r1", key=rsa_key())}))
    # a-mesh-jwt has no audience: a token for another audience passes from its header only,
    # with its principal (mallory is denied), and without x-jwt-payload (not its rule)
    other = token(mesh, "r1", aud="other")
    assert refused(call(mesh, "/open", other))
    status, _, body = call(mesh, "/open", headers={"x-idp-token": other,
                                                  "x-jwt-payload": "forged"})
    assert status == 200, body
    seen = app_headers(body)
    assert "x-idp-token" not in seen and "x-jwt-payload" not in seen
    # now cached as verified by a-mesh-jwt's rule: that does not carry to reviews-jwt's
    assert refused(call(mesh, "/open", other))
    status, _, _ = call(mesh, "/open", headers={"x-idp-token": token(mesh, "r1", aud="other",
                                                                     sub="mallory")})
    assert status == 403


def test_deny_not_request_principals_requires_a_token(mesh: Mesh) -> None:
    status, headers, _ = call(mesh, "/secure/data")
    assert (status, headers.get("x-ami-reason")) == (403, "not_authorized")
    assert call(mesh, "/secure/data", token(mesh, "r1"))[0] == 200


def test_request_principal_and_claim_conditions(mesh: Mesh) -> None:
    """DENY by principal `<iss>/<sub>`; DENY when a list claim holds a value. No token
    matches no claim condition, so the claim DENY alone does not stop it (as in Istio)."""
    status, headers, _ = call(mesh, "/open", token(mesh, "r1", sub="mallory"))
    assert (status, headers.get("x-ami-reason")) == (403, "not_authorized")
    assert call(mesh, "/admin/x", token(mesh, "r1", groups=["users", "guests"]))[0] == 403
    assert call(mesh, "/admin/x", token(mesh, "r1", groups=["admins"]))[0] == 200
    assert call(mesh, "/admin/x", token(mesh, "r1", groups="guests"))[0] == 403
    assert call(mesh, "/admin/x")[0] == 200


def _hs256_with_public_key(mesh: Mesh) -> str:
    """The classic confusion: HS256 'signed' with the RSA public key (PEM) as the secret."""
    pem = mesh.keys["r1"].public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)

    def b64(data: bytes) -> bytes:
        return base64.urlsafe_b64encode(data).rstrip(b"=")

    head = b64(json.dumps({"alg": "HS256", "typ": "JWT", "kid": "r1"}).encode())
    body = b64(json.dumps({"iss": IDP, "sub": "alice", "aud": "bookinfo",
                           "exp": int(time.time()) + 300}).encode())
    signature = b64(hmac.new(pem, head + b"." + body, hashlib.sha256).digest())
    return (head + b"." + body + b"." + signature).decode()


def _alg_none(mesh: Mesh) -> str:
    return jwt.encode({"iss": IDP, "sub": "alice", "aud": "bookinfo"}, None, algorithm="none",
                      headers={"kid": "r1"})


PITFALLS = {
    "bad signature": lambda m: token(m, "r1", key=rsa_key()),
    "expired": lambda m: token(m, "r1", exp=int(time.time()) - 120),
    "not yet valid": lambda m: token(m, "r1", nbf=int(time.time()) + 300),
    # PyJWT int()s these, so a string once passed, and then never expired in the token cache
    "exp a string": lambda m: token(m, "r1", exp=str(int(time.time()) + 300)),
    "nbf a string": lambda m: token(m, "r1", nbf=str(int(time.time()) - 10)),
    "wrong issuer": lambda m: token(m, "r1", iss="https://evil.test"),
    "wrong audience": lambda m: token(m, "r1", aud="other"),
    "unknown kid": lambda m: token(m, "nope", key=m.keys["r1"], alg="RS256"),
    "alg none": _alg_none,
    "HS256 with the public key": _hs256_with_public_key,
    "ES256 under the RSA key's kid": lambda m: token(m, "r1", alg="ES256", key=m.keys["e1"]),
    "malformed": lambda m: "not.a.jwt",
    "rotating issuer signed by the inline key": lambda m: token(m, "r1", iss=ROTATING),
}


@pytest.mark.parametrize("pitfall", list(PITFALLS))
def test_invalid_tokens_are_refused_with_401(mesh: Mesh, pitfall: str) -> None:
    result = call(mesh, "/open", PITFALLS[pitfall](mesh))
    assert refused(result), (pitfall, result)


def test_clock_skew_is_tolerated(mesh: Mesh) -> None:
    """exp a few seconds past (within the 60 s skew, as Envoy) still passes."""
    assert call(mesh, "/open", token(mesh, "r1", exp=int(time.time()) - 20))[0] == 200


def test_two_bearer_tokens_are_refused(mesh: Mesh) -> None:
    """Which one would the app read? Ambiguity is refused, like a repeated DENY header."""
    host, _, port = mesh.client.info["outbound"].rpartition(":")
    conn = http.client.HTTPConnection(host, int(port), timeout=10)
    try:
        conn.putrequest("GET", "/open", skip_host=True)
        conn.putheader("Host", "reviews")
        conn.putheader("Authorization", f"Bearer {token(mesh, 'r1')}")
        conn.putheader("Authorization", f"Bearer {token(mesh, 'r1', sub='bob')}")
        conn.endheaders()
        resp = conn.getresponse()
        resp.read()
        assert (resp.status, resp.getheader("x-ami-reason")) == (401, "jwt_invalid")
    finally:
        conn.close()


def test_forward_original_token_keeps_the_header(mesh: Mesh) -> None:
    tok = token(mesh, "u1", iss=ROTATING)
    status, _, body = call(mesh, "/open", tok)
    assert status == 200
    assert app_headers(body)["authorization"] == f"Bearer {tok}"


def test_gateway_requires_a_token_where_its_policy_says(mesh: Mesh) -> None:
    """Policies selecting service `gateway` apply at the gateway listener: /api/* needs a
    valid token there, a bad one is 401, and the gateway strips the token before the mesh."""
    status, headers, _ = call(mesh, "/api/x", via_gateway=True)
    assert (status, headers.get("x-ami-reason")) == (403, "not_authorized")
    assert refused(call(mesh, "/api/x", token(mesh, "r1", key=rsa_key()), via_gateway=True))
    status, _, body = call(mesh, "/api/x", token(mesh, "r1"), via_gateway=True)
    assert status == 200, body
    assert "authorization" not in app_headers(body)
    assert call(mesh, "/open", via_gateway=True)[0] == 200


def _metric(mesh: Mesh, name: str) -> float:
    _, text = http_get(mesh.cp.info["api"] + "/metrics")
    for line in text.decode().splitlines():
        if line.startswith(name + " "):
            return float(line.split()[1])
    return 0.0


def test_jwks_uri_rotation_and_fetch_failure_keep_working_keys(mesh: Mesh) -> None:
    """The control plane refetches the jwksUri: a key served later is picked up and a key
    withdrawn stops working; while the server fails, the last good keys stay in use."""
    u1, u2 = token(mesh, "u1", iss=ROTATING), token(mesh, "u2", iss=ROTATING)
    assert call(mesh, "/open", u1)[0] == 200
    assert refused(call(mesh, "/open", u2))
    mesh.jwks.keys = [public_jwk(mesh.keys["u2"], "u2")]
    wait_for(lambda: call(mesh, "/open", u2)[0] == 200, 20, "the rotated key in use")
    assert refused(call(mesh, "/open", u1))
    failures = _metric(mesh, "ami_controlplane_jwks_fetch_failures_total")
    mesh.jwks.status = 500
    try:
        wait_for(lambda: _metric(mesh, "ami_controlplane_jwks_fetch_failures_total")
                 >= failures + 2, 20, "failed refetches counted")
        assert call(mesh, "/open", u2)[0] == 200, "the last good keys are kept"
        assert "fetch failed (HTTP 500); keeping the last good keys" in mesh.cp.output()
        _, out, _ = meshctl(mesh, "check")  # says so, before the old keys are rotated out
        assert "last fetch failed: HTTP 500" in out and "End-user authentication" in out, out
    finally:
        mesh.jwks.status = 200


def meshctl(mesh: Mesh, *args: str) -> tuple[int, str, str]:
    import subprocess

    out = subprocess.run([PYTHON, "-m", "meshctl", "--control-plane", mesh.cp.info["api"],
                          *args], capture_output=True, text=True, cwd=ROOT, timeout=60,
                         env={"AMI_TOKEN": mesh.cp.info["token"], "PATH": "/usr/bin"})
    return out.returncode, out.stdout, out.stderr


def test_meshctl_get_apply_delete_and_proxy_config(mesh: Mesh) -> None:
    code, out, err = meshctl(mesh, "get", "ra")
    assert code == 0, err
    assert "reviews-jwt" in out and f"{IDP},{ROTATING}" in out and "inline,uri" in out
    code, out, err = meshctl(mesh, "get", "requestauthentication", "reviews-jwt", "-o", "yaml")
    assert code == 0 and "jwksUri" in out, err
    reviews = next(p for p in mesh.procs if p.info["name"].startswith("reviews"))
    code, out, err = meshctl(mesh, "proxy-config", reviews.info["name"])
    assert code == 0, err
    assert f"AUTHENTICATION: issuers {IDP}, {ROTATING}" in out
    # a new policy through apply, then delete
    doc = mesh.tmp / "extra.yaml"
    doc.write_text(f"""\
apiVersion: ami.mesh/v1alpha1
kind: RequestAuthentication
metadata: {{name: ratings-jwt}}
spec:
  selector: {{service: ratings}}
  jwtRules: [{{issuer: {IDP}, jwksUri: 'http://127.0.0.1:1/jwks'}}]
""")
    code, out, err = meshctl(mesh, "apply", "-f", str(doc))
    assert code == 0, err
    assert "ratings-jwt" in meshctl(mesh, "get", "ra")[1]
    code, out, err = meshctl(mesh, "delete", "ra", "ratings-jwt")
    assert code == 0, err
    assert "ratings-jwt" not in meshctl(mesh, "get", "ra")[1]
