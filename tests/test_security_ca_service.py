"""IssueCertificate: tokens decide the identity, MeshConfig the TTL, over a real TLS gRPC port."""

from __future__ import annotations

import base64
import hashlib
import hmac
import time
from collections.abc import AsyncIterator
from pathlib import Path

import grpc
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from grpc import aio

from meshctl.api import mesh_pb2
from meshctl.api.gatewaycert import gateway_policy, is_gateway_certificate
from meshctl.api.kinds import MeshConfigSpec
from meshctl.ca import BootstrapTokens, CertificateAuthority, fingerprint, init_ca
from meshctl.ca import files as ca_files
from meshctl.ca.spiffe import uri_sans
from meshctl.controlplane.ca_service import (
    CertificateService,
    IssueError,
    control_plane_certificate,
    load_or_init_ca,
)
from meshctl.controlplane.xds import MeshControlService, start_grpc_server
from proxy.identity import generate_key_and_csr
from proxy.identity_agent import grpc_issuer

REVIEWS = "spiffe://cluster.local/ns/default/sa/reviews"


@pytest.fixture
def service(tmp_path: Path) -> CertificateService:
    """A CA service over a fresh CA with a 2-minute certificate TTL."""
    init_ca(tmp_path / "ca")
    return CertificateService(CertificateAuthority(tmp_path / "ca"),
                              BootstrapTokens.load(tmp_path / "ca"),
                              lambda: MeshConfigSpec(certificate_ttl=120.0))


def request(service: CertificateService, for_service: str, token_of: str,
            asks_for: str = REVIEWS) -> mesh_pb2.CertificateRequest:
    """A CSR asking for `asks_for`, claiming `for_service` with `token_of`'s token."""
    _, csr = generate_key_and_csr(asks_for)
    return mesh_pb2.CertificateRequest(csr_pem=csr.decode(), service=for_service,
                                       namespace="default",
                                       token=service.tokens.token_for("default", token_of))


def test_issues_the_tokens_identity_whatever_the_csr_asks(service: CertificateService) -> None:
    """A CSR asking for `admin` with reviews' token gets exactly reviews' SPIFFE id."""
    before = time.time()
    resp = service.issue(request(service, "reviews", "reviews",
                                 asks_for="spiffe://cluster.local/ns/default/sa/admin"))
    leaf, *chain = x509.load_pem_x509_certificates(resp.cert_chain_pem.encode())
    assert uri_sans(leaf) == [REVIEWS]
    assert chain and chain[0].subject == service.ca.ca_cert.subject
    assert before + 120 - 2 <= leaf.not_valid_after_utc.timestamp() <= time.time() + 120
    assert resp.not_after == leaf.not_valid_after_utc.strftime("%Y-%m-%dT%H:%M:%SZ")
    assert resp.trust_bundle_pem.encode() == service.ca.trust_bundle()
    assert (service.issued, service.issued_by_service) == (1, {("default", "reviews"): 1})


def test_one_services_token_cannot_get_anothers_identity(service: CertificateService) -> None:
    """ratings' token presented for reviews is PERMISSION_DENIED and counted as refused."""
    with pytest.raises(IssueError) as err:
        service.issue(request(service, "reviews", "ratings"))
    assert err.value.code == grpc.StatusCode.PERMISSION_DENIED
    assert (service.issued, service.refused) == (0, 1)


def test_a_gateway_token_gets_its_services_identity_and_no_other(
        service: CertificateService) -> None:
    """A gateway token proves its service as the service token does (a gateway needs its
    certificate); another service's gateway token is refused like its service token."""
    req = request(service, "reviews", "reviews")
    req.token = service.tokens.gateway_token_for("default", "reviews")
    leaf, *_ = x509.load_pem_x509_certificates(service.issue(req).cert_chain_pem.encode())
    assert uri_sans(leaf) == [REVIEWS]
    req.token = service.tokens.gateway_token_for("default", "ratings")
    with pytest.raises(IssueError) as err:
        service.issue(req)
    assert err.value.code == grpc.StatusCode.PERMISSION_DENIED
    assert (service.issued, service.refused) == (1, 1)


def token_minted_before_the_reservation(secret: bytes, namespace: str, service: str) -> str:
    """A service token as BootstrapTokens made it for any namespace, ami-system included, before
    that namespace was reserved (a token an operator may still hold)."""
    mac = hmac.new(secret, f"{namespace}/{service}".encode(), hashlib.sha256).digest()
    return "ami1." + base64.urlsafe_b64encode(mac).rstrip(b"=").decode()


def test_the_control_planes_identity_is_never_issued(service: CertificateService) -> None:
    """spiffe://.../ns/ami-system/sa/meshctl is the control plane's identity, the one a
    sidecar's privileged admin routes answer: no token is made for its namespace, and a
    request with a token that verifies (made before the reservation) is PERMISSION_DENIED,
    nothing issued."""
    secret = ca_files.read(service.ca.files.bootstrap_secret)
    assert token_minted_before_the_reservation(secret, "default", "reviews") == \
        service.tokens.token_for("default", "reviews")  # the helper makes real tokens
    with pytest.raises(ValueError, match="reserved for the control plane"):
        service.tokens.token_for("ami-system", "meshctl")
    with pytest.raises(ValueError, match="reserved for the control plane"):
        service.tokens.gateway_token_for("ami-system", "meshctl")
    for name in ("meshctl", "reviews"):  # the whole namespace is the control plane's
        _, csr = generate_key_and_csr(f"spiffe://cluster.local/ns/ami-system/sa/{name}")
        req = mesh_pb2.CertificateRequest(
            csr_pem=csr.decode(), service=name, namespace="ami-system",
            token=token_minted_before_the_reservation(secret, "ami-system", name))
        assert service.tokens.kind(req.token, "ami-system", name) is None
        with pytest.raises(IssueError) as err:
            service.issue(req)
        assert err.value.code == grpc.StatusCode.PERMISSION_DENIED
        assert "namespace 'ami-system' is reserved for the control plane" in err.value.message
    assert (service.issued, service.refused) == (0, 2)


def marked_service(tmp_path: Path) -> CertificateService:
    """A CA service whose registry holds one trusted gateway: `gw`, of default/reviews."""
    init_ca(tmp_path / "ca")
    return CertificateService(CertificateAuthority(tmp_path / "ca"),
                              BootstrapTokens.load(tmp_path / "ca"), MeshConfigSpec,
                              lambda *proxy: proxy == ("gw", "default", "reviews"))


def issued_leaf(service: CertificateService, req: mesh_pb2.CertificateRequest) -> x509.Certificate:
    return x509.load_pem_x509_certificates(service.issue(req).cert_chain_pem.encode())[0]


def test_the_gateway_marker_goes_to_a_registered_gateway_with_its_gateway_token(
        tmp_path: Path) -> None:
    """Marked: the gateway token, naming a proxy the registry holds as that service's trusted
    gateway; still exactly one URI SAN. Unmarked: the service token naming that gateway, and a
    gateway token naming no proxy (one built before the marker). A gateway token naming a
    proxy the registry does not hold as one (yet) is FAILED_PRECONDITION: asked again later."""
    service = marked_service(tmp_path)
    req = request(service, "reviews", "reviews")
    req.proxy = "gw"
    assert not is_gateway_certificate(issued_leaf(service, req))  # the service token
    req.token = service.tokens.gateway_token_for("default", "reviews")
    leaf = issued_leaf(service, req)
    assert is_gateway_certificate(leaf) and uri_sans(leaf) == [REVIEWS]
    policies = leaf.extensions.get_extension_for_class(x509.CertificatePolicies)
    assert not policies.critical
    req.proxy = ""
    assert not is_gateway_certificate(issued_leaf(service, req))
    req.proxy = "reviews-v1-9080"
    with pytest.raises(IssueError) as err:
        service.issue(req)
    assert err.value.code == grpc.StatusCode.FAILED_PRECONDITION
    assert "'reviews-v1-9080' is not registered as a gateway of default/reviews" in str(err.value)
    assert (service.issued, service.refused) == (3, 1)


def test_a_csr_cannot_ask_for_the_gateway_marker(tmp_path: Path) -> None:
    """A CSR carrying the marker's policy (and the gateway's id) with the service token, even
    naming the registered gateway: the certificate has no marker (the CA copies nothing from
    a CSR but its key)."""
    service = marked_service(tmp_path)
    key = ec.generate_private_key(ec.SECP256R1())
    csr = (x509.CertificateSigningRequestBuilder().subject_name(x509.Name([]))
           .add_extension(x509.SubjectAlternativeName([x509.UniformResourceIdentifier(REVIEWS)]),
                          critical=True)
           .add_extension(gateway_policy(), critical=False).sign(key, hashes.SHA256()))
    req = mesh_pb2.CertificateRequest(
        csr_pem=csr.public_bytes(serialization.Encoding.PEM).decode(), service="reviews",
        namespace="default", token=service.tokens.token_for("default", "reviews"), proxy="gw")
    leaf = issued_leaf(service, req)
    assert not is_gateway_certificate(leaf)
    with pytest.raises(x509.ExtensionNotFound):
        leaf.extensions.get_extension_for_class(x509.CertificatePolicies)


def test_missing_token_and_bad_csr_are_refused(service: CertificateService) -> None:
    """No token is UNAUTHENTICATED; a CSR that is not one is INVALID_ARGUMENT."""
    req = request(service, "reviews", "reviews")
    req.token = ""
    with pytest.raises(IssueError) as err:
        service.issue(req)
    assert err.value.code == grpc.StatusCode.UNAUTHENTICATED
    req = request(service, "reviews", "reviews")
    req.csr_pem = "not a csr"
    with pytest.raises(IssueError) as err:
        service.issue(req)
    assert err.value.code == grpc.StatusCode.INVALID_ARGUMENT


def test_ttl_is_at_least_a_minute(tmp_path: Path) -> None:
    """A MeshConfig TTL below the minimum is raised to 60 s, never issued shorter."""
    init_ca(tmp_path / "ca")
    svc = CertificateService(CertificateAuthority(tmp_path / "ca"),
                             BootstrapTokens.load(tmp_path / "ca"),
                             lambda: MeshConfigSpec(certificate_ttl=5.0))
    leaf = x509.load_pem_x509_certificates(
        svc.issue(request(svc, "reviews", "reviews")).cert_chain_pem.encode())[0]
    assert leaf.not_valid_after_utc.timestamp() >= time.time() + 55


def test_load_or_init_ca_creates_once(tmp_path: Path) -> None:
    """A missing CA is created; the next call loads the same one rather than replacing it."""
    first = load_or_init_ca(tmp_path / "certs", "example.org")
    again = load_or_init_ca(tmp_path / "certs", "example.org")
    assert first.trust_domain == "example.org"
    assert fingerprint(first.ca_cert) == fingerprint(again.ca_cert)


class _Servicer(MeshControlService):
    """The config servicer with IssueCertificate delegated to the CA service (as serve wires it)."""

    def __init__(self, ca_service: CertificateService) -> None:
        self.ca_service = ca_service

    async def IssueCertificate(
        self, request: mesh_pb2.CertificateRequest,
        context: aio.ServicerContext[mesh_pb2.CertificateRequest, mesh_pb2.CertificateResponse],
    ) -> mesh_pb2.CertificateResponse:
        return await self.ca_service.handle(request, context)


@pytest.fixture
async def tls_port(service: CertificateService) -> AsyncIterator[int]:
    """A gRPC server over TLS with a control-plane cert from the mesh CA."""
    creds = control_plane_certificate(service.ca, ["127.0.0.1"]).credentials()
    server, port = await start_grpc_server(_Servicer(service), "127.0.0.1:0", creds)
    yield port
    await server.stop(None)


async def test_issue_over_tls_grpc(service: CertificateService, tls_port: int,
                                   tmp_path: Path) -> None:
    """A sidecar verifying the control plane with the trust bundle gets its certificate."""
    bundle = tmp_path / "bundle.pem"
    bundle.write_bytes(service.ca.trust_bundle())
    resp = await grpc_issuer(f"127.0.0.1:{tls_port}", bundle)(
        request(service, "reviews", "reviews"))
    leaf = x509.load_pem_x509_certificates(resp.cert_chain_pem.encode())[0]
    assert uri_sans(leaf) == [REVIEWS]


async def test_wrong_token_over_grpc_is_permission_denied(
        service: CertificateService, tls_port: int, tmp_path: Path) -> None:
    """The refusal reaches the sidecar as a gRPC status, with no certificate."""
    bundle = tmp_path / "bundle.pem"
    bundle.write_bytes(service.ca.trust_bundle())
    with pytest.raises(aio.AioRpcError) as err:
        await grpc_issuer(f"127.0.0.1:{tls_port}", bundle)(
            request(service, "reviews", "productpage"))
    assert err.value.code() == grpc.StatusCode.PERMISSION_DENIED


async def test_control_plane_from_another_ca_is_not_trusted(
        service: CertificateService, tls_port: int, tmp_path: Path) -> None:
    """A sidecar with another mesh's bundle refuses this control plane (TLS fails)."""
    init_ca(tmp_path / "other")
    bundle = tmp_path / "other-bundle.pem"
    bundle.write_bytes(CertificateAuthority(tmp_path / "other").trust_bundle())
    with pytest.raises(aio.AioRpcError) as err:
        await grpc_issuer(f"127.0.0.1:{tls_port}", bundle, timeout=3.0)(
            request(service, "reviews", "reviews"))
    assert err.value.code() == grpc.StatusCode.UNAVAILABLE
    assert service.issued == 0


def test_control_plane_certificate_is_accepted_as_a_client_certificate(
        service: CertificateService) -> None:
    """A sidecar's TLS server context (client certificate required, X509_STRICT) completes a
    handshake with the control plane presenting its certificate (it calls the sidecars' admin
    listeners over mTLS) and reads its SPIFFE id. Before, the certificate was serverAuth only,
    without the authority key id a strict verifier wants, and this handshake failed."""
    import socket
    import ssl
    from concurrent.futures import ThreadPoolExecutor

    from proxy.tls import load_pem_pair, server_context, verify_peer
    from tests.test_mtls_static import mint

    own = control_plane_certificate(service.ca, ["127.0.0.1"])
    client = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    client.check_hostname = False
    client.load_verify_locations(cadata=service.ca.trust_bundle().decode())
    load_pem_pair(client, own.chain_pem, own.key_pem)
    a, b = socket.socketpair()
    with a, b, ThreadPoolExecutor(1) as pool, \
            server_context(mint(service.ca, "reviews")).wrap_socket(a, server_side=True,
                                                                   do_handshake_on_connect=False
                                                                   ) as sidecar, \
            client.wrap_socket(b, do_handshake_on_connect=False) as control_plane:
        done = pool.submit(sidecar.do_handshake)
        control_plane.do_handshake()
        done.result(timeout=10)
        assert verify_peer(sidecar, None) == "spiffe://cluster.local/ns/ami-system/sa/meshctl"


def test_a_malformed_policies_extension_is_no_marker(tmp_path: Path) -> None:
    """A certificate whose certificatePolicies does not parse carries no marker (and reading
    it raises nothing): the inbound listener reads it on every mTLS connection."""
    from cryptography.x509.oid import ExtensionOID

    from meshctl.ca.builders import utc

    key = ec.generate_private_key(ec.SECP256R1())
    cert = (x509.CertificateBuilder().subject_name(x509.Name([])).issuer_name(x509.Name([]))
            .public_key(key.public_key()).serial_number(1)
            .not_valid_before(utc(time.time() - 60)).not_valid_after(utc(time.time() + 60))
            .add_extension(x509.UnrecognizedExtension(ExtensionOID.CERTIFICATE_POLICIES,
                                                      b"\x30\x03\x06\x01"), critical=False)
            .sign(key, hashes.SHA256()))
    assert not is_gateway_certificate(cert)
