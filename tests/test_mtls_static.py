"""Static-mode sidecars with --identity-dir: mTLS between real proxy processes, who gets in.

One CA in tmp issues the identities. `productpage` runs an outbound listener; `reviews` runs a
STRICT inbound listener in front of an echo backend (which reports the headers it got), with an
AuthorizationPolicy; a second `reviews` runs PERMISSIVE; a third runs STRICT with a DENY-only
policy on `/admin/*`. Raw TLS clients from the test play the refused peers (no cert, another CA,
expired, plaintext) and send request targets byte for byte (dot segments, encoded slashes).
"""

from __future__ import annotations

import asyncio
import json
import socket
import ssl
import time
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
import yaml
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from meshctl.ca import CertificateAuthority, init_ca, spiffe_id_for
from proxy.identity import WorkloadIdentity, generate_key_and_csr
from tests.closeorder import close_order
from tests.proxyharness import (
    Message,
    ProxyProcess,
    free_port,
    get,
    metric_value,
    read_response,
    roundtrip,
)

TD = "cluster.local"
DEADLINE = 10.0
REFUSED = (ssl.SSLError, ConnectionError, asyncio.IncompleteReadError, EOFError)


def sid(service: str) -> str:
    """The SPIFFE id of a service in the default namespace."""
    return spiffe_id_for(TD, "default", service)


def mint(ca: CertificateAuthority, service: str, ttl: float = 3600,
         bundle: bytes | None = None) -> WorkloadIdentity:
    """An identity issued the way a sidecar gets one: own key, CSR, signed by `ca`."""
    key_pem, csr_pem = generate_key_and_csr(sid(service))
    issued = ca.sign_csr(csr_pem, sid(service), ttl)
    return WorkloadIdentity.from_pem(key_pem, issued.cert_pem, issued.chain_pem,
                                     bundle if bundle is not None else ca.trust_bundle())


def mesh_ca(directory: Path, backdate: float = 0.0) -> CertificateAuthority:
    """A CA of trust domain TD in `directory`, made `backdate` seconds ago (its intermediate
    valid since then: a start ahead of a peer's clock, or room to issue expired leaves)."""
    init_ca(directory, TD, clock=lambda: time.time() - backdate)
    return CertificateAuthority(directory)


def write_identity_dir(directory: Path, identity: WorkloadIdentity) -> Path:
    """key.pem, cert.pem, chain.pem, bundle.pem as `--identity-dir` reads them."""
    directory.mkdir(parents=True, exist_ok=True)
    for name, data in (("key.pem", identity.key_pem), ("cert.pem", identity.cert_pem),
                       ("chain.pem", identity.chain_pem), ("bundle.pem", identity.bundle_pem)):
        (directory / name).write_bytes(data)
    (directory / "key.pem").chmod(0o600)
    return directory


def start_proxy(tmp: Path, identity: WorkloadIdentity, snap: dict[str, Any],
                inbound: int | None = None, extra: tuple[str, ...] = ()) -> ProxyProcess:
    """A static-mode proxy process with `snap` (listeners filled in) and `identity`."""
    tmp.mkdir(parents=True, exist_ok=True)
    proc = ProxyProcess(tmp, {}, args=("--identity-dir",
                                       str(write_identity_dir(tmp / "identity", identity)),
                                       *extra))
    listeners = {"outbound": f"127.0.0.1:{proc.outbound}", "admin": f"127.0.0.1:{proc.admin}"}
    if inbound is not None:
        listeners = {"inbound": f"127.0.0.1:{inbound}", "admin": f"127.0.0.1:{proc.admin}"}
    proc.config.write_text(yaml.safe_dump({"version": "static-1", "listeners": listeners, **snap}))
    return proc.start()


def client_ctx(identity: WorkloadIdentity | None, trust: bytes) -> ssl.SSLContext:
    """A test TLS client trusting `trust`, presenting `identity` (or no certificate)."""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.check_hostname = False
    ctx.load_verify_locations(cadata=trust.decode())
    if identity is not None:
        from proxy.tls import _private_file

        with _private_file(identity.cert_pem + identity.chain_pem) as cert, \
                _private_file(identity.key_pem) as key:
            ctx.load_cert_chain(cert, key)
    return ctx


async def tls_roundtrip(port: int, ctx: ssl.SSLContext, raw: bytes) -> Message:
    """Send `raw` over TLS and read one response; the refusal errors propagate."""
    reader, writer = await asyncio.wait_for(
        asyncio.open_connection("127.0.0.1", port, ssl=ctx), DEADLINE)
    try:
        writer.write(raw)
        await writer.drain()
        return await asyncio.wait_for(read_response(reader), DEADLINE)
    finally:
        writer.close()


def echoed_headers(resp: Message) -> list[tuple[str, str]]:
    """The request headers the echo backend saw, lower-cased names."""
    return [(k.lower(), v) for k, v in json.loads(resp.body)["headers"]]


@dataclass
class Mesh:
    """The running processes and the identities of this module's scenario."""

    ca: CertificateAuthority
    bundle: bytes
    productpage: WorkloadIdentity
    ratings: WorkloadIdentity
    client: ProxyProcess
    strict: ProxyProcess
    strict_port: int
    permissive: ProxyProcess
    permissive_port: int
    guarded: ProxyProcess
    guarded_port: int


AUTHZ = [
    {"action": "DENY", "rules": [{"to": [{"methods": ["DELETE"]}]}]},
    {"action": "ALLOW", "rules": [
        {"from": [{"services": ["productpage"]}], "to": [{"paths": ["/api/*"]}]},
        {"to": [{"paths": ["/health"]}]},
    ]},
]
# Without an ALLOW policy every mesh identity is admitted: only this DENY guards /admin/*.
DENY_ADMIN = [{"action": "DENY", "rules": [{"to": [{"paths": ["/admin/*"]}]}]}]


@pytest.fixture(scope="module")
def mesh(tmp_path_factory: pytest.TempPathFactory, echo: int) -> Iterator[Mesh]:
    """CA, echo backend, a STRICT, a PERMISSIVE and a STRICT DENY-only `reviews`, and a
    `productpage` client."""
    tmp = tmp_path_factory.mktemp("mtls")
    # The CA starts two hours back so it can also issue an already-expired certificate.
    ca = mesh_ca(tmp / "ca", backdate=7200)
    procs: list[ProxyProcess] = []
    try:
        strict_port, permissive_port, guarded_port = free_port(), free_port(), free_port()
        reviews = mint(ca, "reviews")
        inbound = {"node": {"service": "reviews", "labels": {"version": "v1"}},
                   "app": f"127.0.0.1:{echo}", "inbound": {"authorization": AUTHZ}}
        strict = start_proxy(tmp / "strict", reviews, {**inbound, "mesh": {"mtls": "STRICT"}},
                             inbound=strict_port)
        procs.append(strict)
        permissive = start_proxy(tmp / "permissive", reviews,
                                 {"node": inbound["node"], "app": inbound["app"],
                                  "mesh": {"mtls": "PERMISSIVE"}}, inbound=permissive_port)
        procs.append(permissive)
        guarded = start_proxy(tmp / "guarded", reviews,
                              {**inbound, "inbound": {"authorization": DENY_ADMIN},
                               "mesh": {"mtls": "STRICT"}}, inbound=guarded_port)
        procs.append(guarded)

        def endpoint(identity: str) -> dict[str, Any]:
            return {"endpoints": [{"address": f"127.0.0.1:{strict_port}",
                                   "labels": {"version": "v1"}, "identity": identity}]}

        productpage = mint(ca, "productpage")
        client = start_proxy(tmp / "client", productpage, {
            "node": {"service": "productpage", "labels": {"version": "v1"}},
            "mesh": {"mtls": "STRICT"},
            "services": {"reviews": endpoint(sid("reviews")),
                         "impostor": endpoint(sid("details"))},
        })
        procs.append(client)
        yield Mesh(ca, ca.trust_bundle(), productpage, mint(ca, "ratings"), client, strict,
                   strict_port, permissive, permissive_port, guarded, guarded_port)
    finally:
        for proc in procs:
            proc.stop()


async def test_outbound_to_inbound_over_mtls_sets_xfcc(mesh: Mesh) -> None:
    """A call through both sidecars arrives with XFCC naming the caller's SPIFFE id."""
    resp = await roundtrip(mesh.client.outbound, get("reviews", "/api/reviews/1"))
    assert resp.status == 200, resp.body
    xfcc = [v for k, v in echoed_headers(resp) if k == "x-forwarded-client-cert"]
    assert xfcc == [f"By={sid('reviews')};URI={sid('productpage')}"]


async def test_large_bodies_cross_the_mtls_hop_intact_on_concurrent_connections(
        mesh: Mesh) -> None:
    """1 MiB up and back over the mTLS hop, four at once: TLS reads larger than the shared
    receive buffer (64 KiB) and interleaved connections deliver every byte in order."""
    bodies = [bytes([65 + i]) * 700_000 + bytes(range(256)) * 1200 for i in range(4)]
    responses = await asyncio.gather(*(
        roundtrip(mesh.client.outbound, get("reviews", f"/api/upload/{i}", body=body,
                                            method="POST"))
        for i, body in enumerate(bodies)))
    for body, resp in zip(bodies, responses, strict=True):
        assert resp.status == 200, resp.body[:200]
        assert json.loads(resp.body)["body"].encode("latin-1") == body


async def test_forged_xfcc_is_stripped(mesh: Mesh) -> None:
    """An XFCC header sent by the app is dropped; only the sidecar's own reaches the backend."""
    forged = f"x-forwarded-client-cert: By={sid('reviews')};URI={sid('admin')}\r\n"
    resp = await roundtrip(mesh.client.outbound, get("reviews", "/api/x", extra=forged))
    xfcc = [v for k, v in echoed_headers(resp) if k == "x-forwarded-client-cert"]
    assert xfcc == [f"By={sid('reviews')};URI={sid('productpage')}"]


async def test_forged_xfcc_from_a_peer_is_stripped(mesh: Mesh) -> None:
    """A mesh peer sending its own XFCC straight to the inbound listener cannot pass it on."""
    forged = f"x-forwarded-client-cert: URI={sid('admin')}\r\n"
    resp = await tls_roundtrip(mesh.strict_port, client_ctx(mesh.productpage, mesh.bundle),
                               get("reviews", "/api/x", extra=forged))
    assert resp.status == 200
    xfcc = [v for k, v in echoed_headers(resp) if k == "x-forwarded-client-cert"]
    assert xfcc == [f"By={sid('reviews')};URI={sid('productpage')}"]


@pytest.mark.parametrize("name", ["x_forwarded_client_cert", "X-Forwarded_Client-Cert"])
async def test_xfcc_spelled_with_underscores_is_stripped(mesh: Mesh, name: str) -> None:
    """WSGI/CGI servers map `-` and `_` in header names to the same variable
    (HTTP_X_FORWARDED_CLIENT_CERT), where a forged value would sit next to the sidecar's
    real XFCC: such spellings are dropped too, from the app side and from a peer."""
    forged = f"{name}: By={sid('reviews')};URI={sid('admin')}\r\n"
    via_app = await roundtrip(mesh.client.outbound, get("reviews", "/api/x", extra=forged))
    via_peer = await tls_roundtrip(mesh.strict_port, client_ctx(mesh.productpage, mesh.bundle),
                                   get("reviews", "/api/x", extra=forged))
    for resp in (via_app, via_peer):
        assert resp.status == 200
        xfcc = [v for k, v in echoed_headers(resp)
                if k.replace("_", "-") == "x-forwarded-client-cert"]
        assert xfcc == [f"By={sid('reviews')};URI={sid('productpage')}"]


async def test_inbound_metric_reports_mutual_tls(mesh: Mesh) -> None:
    """Requests that came over mTLS are labelled connection_security_policy=mutual_tls."""
    await roundtrip(mesh.client.outbound, get("reviews", "/api/metric"))
    text = await mesh.strict.metrics()
    assert metric_value(text, "ami_requests_total", reporter="destination",
                        connection_security_policy="mutual_tls") >= 1
    # the caller's version comes from its sidecar's x-ami-peer, sent (and believed) over mTLS
    assert metric_value(text, "ami_requests_total", reporter="destination",
                        source_workload="productpage", source_version="v1") >= 1


async def test_certificate_expiry_is_exposed_for_alerting(mesh: Mesh) -> None:
    """/metrics carries the workload certificate's expiry (alert well before it lapses) and
    its start, so deploy/alerts.yml can alert on the fraction of its lifetime left."""
    text = await mesh.client.metrics()
    expiry = metric_value(text, "ami_certificate_expiry_timestamp_seconds",
                          spiffe_id=sid("productpage"))
    assert expiry == pytest.approx(mesh.productpage.not_after, abs=1)
    issued = metric_value(text, "ami_certificate_issued_timestamp_seconds",
                          spiffe_id=sid("productpage"))
    assert issued == pytest.approx(mesh.productpage.not_before, abs=1)


async def test_plaintext_to_strict_is_refused(mesh: Mesh) -> None:
    """A plaintext HTTP request to a STRICT inbound listener gets no HTTP response."""
    name = "ami_tls_handshake_failures_total"
    before = metric_value(await mesh.strict.metrics(), name, listener="inbound")
    with pytest.raises(REFUSED):
        await roundtrip(mesh.strict_port, get("reviews", "/health"))
    assert metric_value(await mesh.strict.metrics(), name, listener="inbound") == before + 1


async def test_handshake_without_client_cert_is_refused(mesh: Mesh) -> None:
    """A TLS client that trusts the mesh but presents no certificate is refused."""
    with pytest.raises(REFUSED):
        await tls_roundtrip(mesh.strict_port, client_ctx(None, mesh.bundle),
                            get("reviews", "/health"))


async def test_cert_from_another_ca_is_refused(mesh: Mesh, tmp_path: Path) -> None:
    """A certificate with the right SPIFFE id but from a different CA is refused."""
    foreign = mint(mesh_ca(tmp_path / "other"), "productpage", bundle=mesh.bundle)
    with pytest.raises(REFUSED):
        await tls_roundtrip(mesh.strict_port, client_ctx(foreign, mesh.bundle),
                            get("reviews", "/health"))


async def test_expired_cert_is_refused(mesh: Mesh) -> None:
    """A mesh certificate that expired an hour ago is refused."""
    past = CertificateAuthority(mesh.ca.files.directory, clock=lambda: time.time() - 3600)
    expired = mint(past, "productpage", ttl=60)
    assert expired.not_after < time.time()
    with pytest.raises(REFUSED):
        await tls_roundtrip(mesh.strict_port, client_ctx(expired, mesh.bundle),
                            get("reviews", "/health"))


def health_over_tls(port: int, ctx: ssl.SSLContext, session: ssl.SSLSession | None = None
                    ) -> tuple[bytes, ssl.SSLSession | None, bool]:
    """GET /health on a blocking TLS socket, offering `session` for resumption; returns the
    response head, the session (a TLS 1.3 ticket arrives with the response) and whether the
    handshake resumed `session`."""
    with socket.create_connection(("127.0.0.1", port), timeout=DEADLINE) as raw, \
            ctx.wrap_socket(raw, session=session) as tls:
        tls.sendall(get("reviews", "/health"))
        head = b""
        while b"\r\n\r\n" not in head and (chunk := tls.recv(4096)):
            head += chunk
        return head, tls.session, tls.session_reused


@pytest.mark.parametrize("version", [ssl.TLSVersion.TLSv1_2, ssl.TLSVersion.TLSv1_3])
async def test_expired_cert_cannot_resume_an_earlier_session(
        mesh: Mesh, version: ssl.TLSVersion) -> None:
    """A peer whose certificate expired cannot get in by resuming a TLS session from while it
    was valid: resumption skips certificate verification, so the listener offers none. Proved
    without waiting for an expiry (a certificate about to expire would make the first,
    valid handshake a race against the clock): every connection is a full handshake, so the
    certificate is verified each time (an expired one is refused, as the test above shows)."""
    ctx = client_ctx(mint(mesh.ca, "productpage"), mesh.bundle)
    ctx.maximum_version = version
    head, session, _ = await asyncio.to_thread(health_over_tls, mesh.strict_port, ctx)
    assert head.startswith(b"HTTP/1.1 200"), head
    head, _, resumed = await asyncio.to_thread(health_over_tls, mesh.strict_port, ctx, session)
    assert head.startswith(b"HTTP/1.1 200"), head
    assert not resumed  # a full handshake: the certificate was verified again


def odd_leaf(ca: CertificateAuthority, sans: list[x509.GeneralName]) -> Any:
    """A client certificate the mesh CA signed but would never issue: other identity SANs.

    Chain-valid, so only the proxy's identity check can stop it."""
    key = ec.generate_private_key(ec.SECP256R1())
    now = datetime.now(UTC)
    builder = (x509.CertificateBuilder()
               .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "productpage")]))
               .issuer_name(ca.ca_cert.subject).public_key(key.public_key())
               .serial_number(x509.random_serial_number())
               .not_valid_before(now - timedelta(minutes=5))
               .not_valid_after(now + timedelta(hours=1))
               .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.CLIENT_AUTH]), False)
               .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(
                   ca.ca_cert.public_key()), False)  # type: ignore[arg-type]
               .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()),
                              False))
    if sans:
        builder = builder.add_extension(x509.SubjectAlternativeName(sans), False)
    cert = builder.sign(ca._ca_key, hashes.SHA256())
    return SimpleNamespace(
        cert_pem=cert.public_bytes(serialization.Encoding.PEM),
        chain_pem=mint(ca, "productpage").chain_pem,
        key_pem=key.private_bytes(serialization.Encoding.PEM,
                                  serialization.PrivateFormat.PKCS8,
                                  serialization.NoEncryption()))


@pytest.mark.parametrize("sans", [
    [],
    [x509.UniformResourceIdentifier(sid("productpage")),
     x509.UniformResourceIdentifier(sid("ratings"))],
    [x509.UniformResourceIdentifier("https://productpage.example")],
    [x509.DNSName("productpage")],
], ids=["no-san", "two-spiffe-ids", "non-spiffe-uri", "dns-only"])
async def test_mesh_signed_cert_without_exactly_one_spiffe_id_is_refused(
        mesh: Mesh, sans: list[x509.GeneralName]) -> None:
    """Chain of trust alone is not enough: the peer needs exactly one SPIFFE URI SAN, even
    for a path every mesh identity may call (/health), and the refusal is counted."""
    name = "ami_tls_handshake_failures_total"
    before = metric_value(await mesh.strict.metrics(), name, listener="inbound")
    with pytest.raises(REFUSED):
        await tls_roundtrip(mesh.strict_port, client_ctx(odd_leaf(mesh.ca, sans), mesh.bundle),
                            get("reviews", "/health"))
    assert metric_value(await mesh.strict.metrics(), name, listener="inbound") == before + 1


@pytest.mark.parametrize("uri", [
    f"{sid('productpage')}/extra",
    "spiffe://cluster.local/ns/default/sa/productpage/sa/productpage",
    "spiffe://cluster.local/x/ns/default/sa/productpage",
], ids=["extra-segment", "repeated-sa", "prefixed"])
async def test_source_service_is_read_only_from_an_exact_workload_id(
        mesh: Mesh, uri: str) -> None:
    """`services`/`namespaces` come from an id of the exact form .../ns/<ns>/sa/<service>: a
    chain-valid certificate whose id merely contains those segments is no `productpage` for an
    ALLOW `from services: [productpage]` (it still gets the paths any identity may call)."""
    ctx = client_ctx(odd_leaf(mesh.ca, [x509.UniformResourceIdentifier(uri)]), mesh.bundle)
    resp = await tls_roundtrip(mesh.strict_port, ctx, get("reviews", "/api/x"))
    assert (resp.status, resp.header("x-ami-reason")) == (403, "not_authorized"), resp.body
    assert (await tls_roundtrip(mesh.strict_port, ctx, get("reviews", "/health"))).status == 200


async def test_stalled_handshakes_count_against_the_connection_limit(
        mesh: Mesh, tmp_path: Path) -> None:
    """Clients that connect and never start TLS hold a slot until the handshake timeout: with
    the limit reached a new connection is closed at once (and counted), not queued."""
    port = free_port()
    proxy = start_proxy(tmp_path / "limited", mint(mesh.ca, "reviews"),
                        {"node": {"service": "reviews"}, "app": "127.0.0.1:9",
                         "mesh": {"mtls": "STRICT"}}, inbound=port,
                        extra=("--max-connections", "2", "--header-timeout", "30"))
    stalled = []
    try:
        for _ in range(2):
            stalled.append((await asyncio.open_connection("127.0.0.1", port))[1])

        async def refused() -> float:
            return metric_value(await proxy.metrics(), "ami_connections_refused_total",
                                listener="inbound")
        # The acceptor takes connections in arrival order: the two stalled ones first.
        with pytest.raises(REFUSED):
            await tls_roundtrip(port, client_ctx(mesh.productpage, mesh.bundle),
                                get("reviews", "/health"))
        assert await refused() == 1
    finally:
        for writer in stalled:
            writer.close()
        proxy.stop()


async def test_valid_peer_cert_is_accepted_directly(mesh: Mesh) -> None:
    """The control case for the refusals: the same client with a valid mesh cert gets in."""
    resp = await tls_roundtrip(mesh.strict_port, client_ctx(mesh.productpage, mesh.bundle),
                               get("reviews", "/health"))
    assert resp.status == 200


async def test_unexpected_server_identity_is_refused_by_outbound(mesh: Mesh) -> None:
    """An endpoint presenting a valid mesh cert for another service fails with 503."""
    resp = await roundtrip(mesh.client.outbound, get("impostor", "/api/x"))
    assert resp.status == 503
    assert resp.header("x-ami-reason") == "upstream_connect_failure"


async def test_permissive_accepts_mtls_and_plaintext(mesh: Mesh) -> None:
    """PERMISSIVE serves plaintext and mTLS on one port, labelling each correctly."""
    plain = await roundtrip(mesh.permissive_port, get("reviews", "/any"))
    assert plain.status == 200
    assert not [k for k, _ in echoed_headers(plain) if k == "x-forwarded-client-cert"]
    tls = await tls_roundtrip(mesh.permissive_port, client_ctx(mesh.productpage, mesh.bundle),
                              get("reviews", "/any"))
    assert tls.status == 200
    assert ("x-forwarded-client-cert", f"By={sid('reviews')};URI={sid('productpage')}") \
        in echoed_headers(tls)
    text = await mesh.permissive.metrics()
    for policy in ("none", "mutual_tls"):
        assert metric_value(text, "ami_requests_total", reporter="destination",
                            connection_security_policy=policy) >= 1, policy


async def test_authz_allows_declared_source_and_path(mesh: Mesh) -> None:
    """productpage may call /api/*; any mesh identity may call /health."""
    ctx = client_ctx(mesh.ratings, mesh.bundle)
    assert (await roundtrip(mesh.client.outbound, get("reviews", "/api/ok"))).status == 200
    assert (await tls_roundtrip(mesh.strict_port, ctx, get("reviews", "/health"))).status == 200


async def test_authz_denies_other_source(mesh: Mesh) -> None:
    """ratings is not allowed /api/*: 403 not_authorized and the denial metric counts it."""
    before = metric_value(await mesh.strict.metrics(), "ami_authorization_denied_total")
    resp = await tls_roundtrip(mesh.strict_port, client_ctx(mesh.ratings, mesh.bundle),
                               get("reviews", "/api/secret"))
    assert resp.status == 403
    assert resp.header("x-ami-reason") == "not_authorized"
    after = metric_value(await mesh.strict.metrics(), "ami_authorization_denied_total")
    assert after == before + 1


async def test_authz_denies_by_method_and_path(mesh: Mesh) -> None:
    """DENY on DELETE wins over the ALLOW; a path no rule allows is denied too."""
    delete = await roundtrip(mesh.client.outbound, get("reviews", "/api/x", method="DELETE"))
    assert (delete.status, delete.header("x-ami-reason")) == (403, "not_authorized")
    other = await roundtrip(mesh.client.outbound, get("reviews", "/admin"))
    assert (other.status, other.header("x-ami-reason")) == (403, "not_authorized")


@pytest.mark.parametrize("target", [
    "/admin/x",
    "/public/../admin/x",
    "/public/..%2Fadmin/x",
    "/public/%2e%2e%2fadmin/x",
    "//admin/x",
    "/%2e%2e/admin/x",
    "/./admin/x",
    "/admin%2Fx",
    "/public/..%5cadmin/x",
    "/%61dmin/x",
    "/adm%69n/x",
    "/public/%2e%2e/%61dmin/x",
    "/public\\..\\admin/x",
    "/admin\\x",
])
async def test_authz_deny_holds_for_non_normalised_paths(mesh: Mesh, target: str) -> None:
    """A DENY on /admin/* also refuses dot segments, encoded slashes/dots, encoded letters
    (which the app decodes) and doubled slashes that normalise to /admin/x (each would be
    admitted if matched as sent)."""
    name = "ami_authorization_denied_total"
    before = metric_value(await mesh.guarded.metrics(), name, destination_service="reviews")
    resp = await tls_roundtrip(mesh.guarded_port, client_ctx(mesh.productpage, mesh.bundle),
                               get("reviews", target))
    assert (resp.status, resp.header("x-ami-reason")) == (403, "not_authorized"), resp.body
    after = metric_value(await mesh.guarded.metrics(), name, destination_service="reviews")
    assert after == before + 1


async def test_authz_deny_only_policy_admits_other_paths(mesh: Mesh) -> None:
    """The control for the above: the DENY-only policy admits the same peer elsewhere, and a
    non-normal target reaches the app normalised."""
    ctx = client_ctx(mesh.productpage, mesh.bundle)
    plain = await tls_roundtrip(mesh.guarded_port, ctx, get("reviews", "/public/x"))
    assert plain.status == 200, plain.body
    dotted = await tls_roundtrip(mesh.guarded_port, ctx, get("reviews", "/admin/..%2Fpublic/y"))
    assert dotted.status == 200, dotted.body
    assert json.loads(dotted.body)["raw_path"] == "/public/y"


@pytest.mark.parametrize("target", [
    "/api/../admin/x",
    "/api/..%2Fadmin/x",
    "/api/%2e%2e/admin/x",
    "/api/%2E%2E%2Fadmin/x",
    "/api//../admin/x",  # repeated slashes are merged before dot segments go
])
async def test_authz_allow_prefix_holds_for_non_normalised_paths(mesh: Mesh,
                                                                 target: str) -> None:
    """An ALLOW for /api/* does not admit a target that only starts with /api/ before
    normalisation: productpage gets 403 not_authorized for what is really /admin/x."""
    resp = await tls_roundtrip(mesh.strict_port, client_ctx(mesh.productpage, mesh.bundle),
                               get("reviews", target))
    assert (resp.status, resp.header("x-ami-reason")) == (403, "not_authorized"), resp.body


async def test_sslscan_inbound_listener(mesh: Mesh) -> None:
    """sslscan against the running STRICT inbound: only TLS 1.2/1.3, only AEAD ciphers."""
    from tests.test_tls_scan import AEAD_MARKERS, accepted_ciphers, enabled_protocols, scan_port

    report = await scan_port(mesh.strict_port)
    assert enabled_protocols(report) == {"tls1.2", "tls1.3"}
    accepted = accepted_ciphers(report)
    assert accepted, "the scanner negotiated no cipher at all"
    assert [name for _, name in accepted if not any(m in name for m in AEAD_MARKERS)] == []


async def test_permissive_first_byte_and_handshake_share_the_header_timeout(
        mesh: Mesh, tmp_path: Path) -> None:
    """PERMISSIVE waits for a client's first byte to tell TLS from plaintext; a client that
    sends it late (at 0.8 x --header-timeout) and never finishes its handshake is closed at
    --header-timeout from the accept, not a whole timeout after its first byte (1.8 x).

    Proved by order, not by an upper bound on time: a second client `b`, accepted at 0.4 x
    and sending its first byte at once, has its deadline at 1.4 x, so `a` must be closed
    first; were the handshake given a whole timeout after the first byte, `a` (1.8 x) would
    be closed after `b`."""
    header_timeout = 2.0
    port = free_port()
    proxy = start_proxy(tmp_path / "permissive-slow", mint(mesh.ca, "reviews"),
                        {"node": {"service": "reviews"}, "app": "127.0.0.1:9",
                         "mesh": {"mtls": "PERMISSIVE"}}, inbound=port,
                        extra=("--header-timeout", str(header_timeout)))
    hello_start = b"\x16\x03\x01\x02\x00"  # a TLS record header: the ClientHello begins

    def slow_clients() -> tuple[float, list[tuple[str, float]]]:
        start = time.monotonic()  # before the connection: before the proxy starts its timer
        with socket.create_connection(("127.0.0.1", port)) as a:
            time.sleep(header_timeout * 0.4)  # the clients' pace, not a wait
            with socket.create_connection(("127.0.0.1", port)) as b:
                b.sendall(hello_start)
                time.sleep(header_timeout * 0.4)
                a.sendall(hello_start)
                return start, close_order({"a": a, "b": b}, header_timeout * 5)

    try:
        before = metric_value(await proxy.metrics(), "ami_tls_handshake_failures_total",
                              listener="inbound")
        start, closed = await asyncio.to_thread(slow_clients)
        assert [name for name, _ in closed] == ["a", "b"], closed
        assert closed[0][1] - start >= header_timeout * 0.9  # not before its time (lower bound)
        assert metric_value(await proxy.metrics(), "ami_tls_handshake_failures_total",
                            listener="inbound") == before + 2
    finally:
        proxy.stop()
