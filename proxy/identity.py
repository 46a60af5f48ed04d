"""Workload identity on the sidecar: key + CSR generation, the current cert, renewal timing.

No control-plane dependency: the sidecar makes its key here, sends only the CSR, and keeps the
private key in memory.
"""

from __future__ import annotations

from dataclasses import dataclass

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.types import PublicKeyTypes

from meshctl.api.gatewaycert import is_gateway_certificate

SPIFFE_SCHEME = "spiffe://"
# Renew between 50% and 70% of the lifetime: early enough to survive a control-plane outage of
# a third of the lifetime, jittered so a fleet issued together does not renew together.
RENEW_FROM, RENEW_TO = 0.5, 0.7


class IdentityError(Exception):
    """A certificate does not carry exactly one usable SPIFFE identity, or does not match."""


def generate_key_and_csr(spiffe_id: str) -> tuple[bytes, bytes]:
    """A new ECDSA P-256 key (PKCS#8 PEM) and a CSR for it asking for `spiffe_id` (PEM)."""
    if not spiffe_id.startswith(SPIFFE_SCHEME):
        raise IdentityError(f"{spiffe_id!r} is not a spiffe:// id")
    key = ec.generate_private_key(ec.SECP256R1())
    csr = (
        x509.CertificateSigningRequestBuilder()
        .subject_name(x509.Name([]))
        .add_extension(
            x509.SubjectAlternativeName([x509.UniformResourceIdentifier(spiffe_id)]), critical=True
        )
        .sign(key, hashes.SHA256())
    )
    key_pem = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    return key_pem, csr.public_bytes(serialization.Encoding.PEM)


def spiffe_id_of(cert: x509.Certificate) -> str:
    """The certificate's single spiffe:// URI SAN; IdentityError if there is not exactly one."""
    try:
        san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
        uris = san.get_values_for_type(x509.UniformResourceIdentifier)
    except x509.ExtensionNotFound:
        uris = []
    if len(uris) != 1:
        raise IdentityError(f"peer certificate has {len(uris)} URI SANs, expected exactly one")
    if not uris[0].startswith(SPIFFE_SCHEME):
        raise IdentityError(f"peer URI SAN {uris[0]!r} is not a spiffe:// id")
    return uris[0]


def peer_spiffe_id(cert_der: bytes) -> str:
    """The SPIFFE id of a peer certificate in DER (as `SSLObject.getpeercert(True)` gives it)."""
    return spiffe_id_of(_load_der(cert_der))


def peer_identity(cert_der: bytes) -> tuple[str, bool]:
    """A peer certificate's SPIFFE id and whether it carries the gateway marker, from one
    parse (an inbound connection's, meshctl/api/gatewaycert.py)."""
    cert = _load_der(cert_der)
    return spiffe_id_of(cert), is_gateway_certificate(cert)


def _load_der(cert_der: bytes) -> x509.Certificate:
    try:
        return x509.load_der_x509_certificate(cert_der)
    except ValueError as e:
        raise IdentityError(f"peer certificate unreadable: {e}") from None


@dataclass(frozen=True, slots=True)
class WorkloadIdentity:
    """One issued identity: key, leaf, intermediates, trust bundle (all PEM) and validity.

    Build it with `from_pem`, which checks the parts belong together.
    """

    key_pem: bytes
    cert_pem: bytes
    chain_pem: bytes  # intermediates between the leaf and a root; may be empty
    bundle_pem: bytes  # trusted roots
    spiffe_id: str
    not_before: float  # POSIX seconds
    not_after: float
    gateway: bool = False  # the leaf carries the gateway marker (meshctl/api/gatewaycert.py)

    @classmethod
    def from_pem(
        cls, key_pem: bytes, cert_pem: bytes, chain_pem: bytes, bundle_pem: bytes
    ) -> WorkloadIdentity:
        """Parse and cross-check: the key matches the leaf, which has one SPIFFE id."""
        try:
            cert = x509.load_pem_x509_certificate(cert_pem)
            key = serialization.load_pem_private_key(key_pem, password=None)
            if chain_pem.strip():
                x509.load_pem_x509_certificates(chain_pem)
            x509.load_pem_x509_certificates(bundle_pem)
        except (ValueError, TypeError) as e:
            raise IdentityError(f"unreadable identity material: {e}") from None
        if _spki(key.public_key()) != _spki(cert.public_key()):
            raise IdentityError("the private key does not match the certificate")
        return cls(
            key_pem=key_pem,
            cert_pem=cert_pem,
            chain_pem=chain_pem,
            bundle_pem=bundle_pem,
            spiffe_id=spiffe_id_of(cert),
            not_before=cert.not_valid_before_utc.timestamp(),
            not_after=cert.not_valid_after_utc.timestamp(),
            gateway=is_gateway_certificate(cert),
        )

    @property
    def lifetime(self) -> float:
        """Seconds from not_before to not_after."""
        return self.not_after - self.not_before

    def expires_in(self, now: float) -> float:
        """Seconds left until not_after at `now` (negative once expired)."""
        return self.not_after - now


def _spki(public_key: PublicKeyTypes) -> bytes:
    return public_key.public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )
