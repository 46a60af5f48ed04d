"""IssueCertificate: sign a sidecar's CSR for the identity its bootstrap token proves.

The requester never chooses its identity: the token is checked for (namespace, service) and the
certificate carries `spiffe_id_for(trustDomain, namespace, service)` whatever the CSR asks for.
The control plane's namespace (ami-system) is refused whatever the token: its identity is the
one a sidecar's privileged admin routes answer.
Nor whether it is a trusted gateway: the gateway marker goes only to a proxy that asked with
its gateway token and that the registry holds as a gateway registered with it.
Also here: loading (or creating) the CA for `meshctl serve`, and the control plane's own TLS
server certificate, signed by the mesh CA so sidecars verify it with the trust bundle.
"""

from __future__ import annotations

import datetime as dt
import ipaddress
import logging
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path

import grpc
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.x509.oid import ExtendedKeyUsageOID
from grpc import aio

from meshctl.api import mesh_pb2
from meshctl.api.kinds import MeshConfigSpec
from meshctl.ca import (
    MIN_TTL,
    BootstrapTokens,
    CAError,
    CANotFoundError,
    CertificateAuthority,
    CsrRejected,
    init_ca,
    spiffe_id_for,
)
from meshctl.ca import files as ca_files
from meshctl.ca.builders import CLOCK_SKEW, authority_key_id, new_key, utc
from meshctl.ca.spiffe import reserved_namespace
from proxy.adminauth import CONTROL_PLANE_NAMESPACE, CONTROL_PLANE_SERVICE

log = logging.getLogger("ami.controlplane.ca")
# The control plane's own identity is spiffe://<td>/ns/CONTROL_PLANE_NAMESPACE/sa/..._SERVICE,
# defined beside the sidecar's admin rules (proxy/adminauth.py), which take it alone over mTLS.
CONTROL_PLANE_CERT_LIFETIME = 30 * 86_400.0


class IssueError(Exception):
    """A refused request: the gRPC status code and a message safe to show the caller."""

    def __init__(self, code: grpc.StatusCode, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


def rfc3339(ts: float) -> str:
    """POSIX seconds as RFC 3339 UTC, second precision (the proto's not_after/cert_expiry)."""
    return dt.datetime.fromtimestamp(ts, tz=dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


class CertificateService:
    """Verifies bootstrap tokens and signs CSRs; counts what it issued and refused."""

    def __init__(self, ca: CertificateAuthority, tokens: BootstrapTokens,
                 mesh_config: Callable[[], MeshConfigSpec] = MeshConfigSpec,
                 trusted_gateway: Callable[[str, str, str], bool] = lambda *_: False) -> None:
        """`mesh_config` returns the current MeshConfig (read per request: TTL changes apply);
        `trusted_gateway(proxy, namespace, service)`: whether the registry holds that proxy
        as a gateway of that service registered with its gateway token."""
        self.ca = ca
        self.tokens = tokens
        self.mesh_config = mesh_config
        self.trusted_gateway = trusted_gateway
        self._signer_mtime = self._signer_stamp()
        self.issued = 0
        self.refused = 0
        self.issued_by_service: dict[tuple[str, str], int] = {}

    def issue(self, request: mesh_pb2.CertificateRequest) -> mesh_pb2.CertificateResponse:
        """Sign `request.csr_pem` for the service the token proves; IssueError if refused."""
        try:
            response = self._issue(request)
        except IssueError:
            self.refused += 1
            raise
        key = (request.namespace or "default", request.service)
        self.issued += 1
        self.issued_by_service[key] = self.issued_by_service.get(key, 0) + 1
        return response

    def _issue(self, request: mesh_pb2.CertificateRequest) -> mesh_pb2.CertificateResponse:
        namespace = request.namespace or "default"
        if not request.service:
            raise IssueError(grpc.StatusCode.INVALID_ARGUMENT, "service: required")
        reserved = reserved_namespace(namespace)
        if reserved is not None:  # the control plane's own identity: never a proxy's
            log.warning("refused a certificate for %s/%s: %s", namespace, request.service,
                        reserved)
            raise IssueError(grpc.StatusCode.PERMISSION_DENIED, reserved)
        if not request.token:
            raise IssueError(grpc.StatusCode.UNAUTHENTICATED, "token: required")
        # kind() is None for malformed names too, so no name probing through error texts.
        # A gateway token proves its service's identity as the service token does.
        kind = self.tokens.kind(request.token, namespace, request.service)
        if kind is None:
            log.warning("refused a certificate for %s/%s: bad bootstrap token",
                        namespace, request.service)
            raise IssueError(grpc.StatusCode.PERMISSION_DENIED,
                             f"the token is not valid for {namespace}/{request.service}")
        gateway = kind == "gateway" and self._registered_gateway(request, namespace)
        self._reload_if_rotated()
        mesh = self.mesh_config()
        spiffe_id = spiffe_id_for(mesh.trust_domain, namespace, request.service)
        ttl = max(mesh.certificate_ttl, MIN_TTL)
        try:
            issued = self.ca.sign_csr(request.csr_pem.encode(), spiffe_id, ttl, gateway=gateway)
        except CsrRejected as exc:
            raise IssueError(grpc.StatusCode.INVALID_ARGUMENT, str(exc)) from None
        except CAError as exc:
            log.error("cannot sign for %s: %s", spiffe_id, exc)
            raise IssueError(grpc.StatusCode.FAILED_PRECONDITION, str(exc)) from None
        log.info("issued %s%s until %s", spiffe_id, " (gateway)" if gateway else "",
                 rfc3339(issued.not_after))
        return mesh_pb2.CertificateResponse(
            cert_chain_pem=(issued.cert_pem + issued.chain_pem).decode("ascii"),
            trust_bundle_pem=self.ca.trust_bundle().decode("ascii"),
            not_after=rfc3339(issued.not_after))

    def _registered_gateway(self, request: mesh_pb2.CertificateRequest, namespace: str) -> bool:
        """A gateway token's request: marked if the registry holds the proxy it names as a
        gateway registered with that token. A proxy that names none predates the marker: its
        certificate is issued unmarked, as before (sidecars drop its XFCC). One that names a
        proxy not registered (yet) is refused: it asks again once its Register is in."""
        if not request.proxy:
            log.warning("issuing %s/%s's gateway token a certificate without the gateway "
                        "marker: the proxy did not say its name (built before gateway "
                        "certificates), so sidecars drop its x-forwarded-client-cert",
                        namespace, request.service)
            return False
        if not self.trusted_gateway(request.proxy, namespace, request.service):
            raise IssueError(grpc.StatusCode.FAILED_PRECONDITION,
                             f"proxy {request.proxy!r} is not registered as a gateway of "
                             f"{namespace}/{request.service} with its gateway token (yet): a "
                             "gateway token's certificate is for a registered gateway")
        return True

    def current_ca(self) -> CertificateAuthority:
        """The CA as it is on disk now (reloaded after `meshctl certs rotate`)."""
        self._reload_if_rotated()
        return self.ca

    def _signer_stamp(self) -> float:
        try:
            return self.ca.files.ca_cert.stat().st_mtime
        except OSError:
            return 0.0

    def _reload_if_rotated(self) -> None:
        """`meshctl certs rotate` replaced the intermediate on disk: sign with the new one."""
        stamp = self._signer_stamp()
        if stamp != self._signer_mtime:
            try:
                self.ca = CertificateAuthority(self.ca.files.directory)
            except CAError as exc:
                log.error("the CA directory changed but cannot be loaded: %s", exc)
                return
            self._signer_mtime = stamp
            log.info("CA reloaded: signing with the intermediate now in %s",
                     self.ca.files.directory)

    async def handle(
        self, request: mesh_pb2.CertificateRequest,
        context: aio.ServicerContext[mesh_pb2.CertificateRequest, mesh_pb2.CertificateResponse],
    ) -> mesh_pb2.CertificateResponse:
        """The gRPC method body: `IssueCertificate` delegates here."""
        try:
            return self.issue(request)
        except IssueError as exc:
            await context.abort(exc.code, exc.message)
            raise AssertionError("unreachable") from None  # abort always raises


def load_or_init_ca(certs_dir: Path, trust_domain: str = "cluster.local",
                    *, clock: Callable[[], float] = time.time) -> CertificateAuthority:
    """The CA in `certs_dir`, created first (`meshctl certs init` semantics) if there is none."""
    try:
        return CertificateAuthority(certs_dir, clock=clock)
    except CANotFoundError:
        log.warning("no mesh CA in %s: creating one (trust domain %s)", certs_dir, trust_domain)
        init_ca(certs_dir, trust_domain, clock=clock)
        return CertificateAuthority(certs_dir, clock=clock)


@dataclass(frozen=True, slots=True)
class ServerCertificate:
    """The control plane's TLS key and certificate chain (PEM) plus the roots to hand out."""

    key_pem: bytes
    chain_pem: bytes
    bundle_pem: bytes
    issued_at: float = 0.0  # POSIX seconds
    not_after: float = 0.0

    def credentials(self) -> grpc.ServerCredentials:
        """gRPC server credentials (no client certificate: sidecars authenticate by token)."""
        return grpc.ssl_server_credentials([(self.key_pem, self.chain_pem)])


def control_plane_certificate(ca: CertificateAuthority, hosts: Iterable[str],
                              *, clock: Callable[[], float] = time.time) -> ServerCertificate:
    """A certificate for `hosts` (DNS names or IPs) signed by the mesh intermediate.

    gRPC checks the target host name, so unlike workload certs this one carries DNS/IP SANs
    next to its SPIFFE id (the intermediate's name constraint restricts URIs only). It is a
    client certificate too: the control plane presents it to sidecars' admin listeners.
    """
    key = new_key()
    now = clock()
    not_after = min(now + CONTROL_PLANE_CERT_LIFETIME, ca.ca_cert.not_valid_after_utc.timestamp())
    sans: list[x509.GeneralName] = [x509.UniformResourceIdentifier(spiffe_id_for(
        ca.trust_domain, CONTROL_PLANE_NAMESPACE, CONTROL_PLANE_SERVICE))]
    for host in dict.fromkeys(["localhost", "127.0.0.1", *hosts]):
        try:
            sans.append(x509.IPAddress(ipaddress.ip_address(host.strip("[]"))))
        except ValueError:
            sans.append(x509.DNSName(host))
    cert = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([]))
        .issuer_name(ca.ca_cert.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(utc(max(now - CLOCK_SKEW, ca.ca_cert.not_valid_before_utc.timestamp())))
        .not_valid_after(utc(not_after))
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH,
                                              ExtendedKeyUsageOID.CLIENT_AUTH]), critical=False)
        # Key ids: sidecars verify it as a client certificate with X509_STRICT, which needs AKI.
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()),
                       critical=False)
        .add_extension(authority_key_id(ca.ca_cert), critical=False)
        .add_extension(x509.SubjectAlternativeName(sans), critical=True)
        .sign(ca_files.load_signing_key(ca.files.ca_key), hashes.SHA256())
    )
    key_pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                serialization.NoEncryption())
    chain = ca_files.cert_pem(cert) + ca_files.cert_pem(ca.ca_cert)
    return ServerCertificate(key_pem, chain, ca.trust_bundle(), now, not_after)
