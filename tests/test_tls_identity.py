"""Tests for the sidecar's identity handling: key/CSR generation, SPIFFE ids, renewal timing."""

from __future__ import annotations

import datetime as dt
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec

from meshctl.ca import CertificateAuthority
from proxy.identity import IdentityError, WorkloadIdentity, generate_key_and_csr, peer_spiffe_id
from tests.test_tls import REVIEWS, mint, new_ca


@pytest.fixture
def ca(tmp_path: Path) -> CertificateAuthority:
    """The mesh CA."""
    return new_ca(tmp_path / "ca")


def test_generated_csr_is_p256_self_proving_and_asks_for_the_id() -> None:
    """The CSR is signed by the new P-256 key and requests exactly the given SPIFFE id."""
    key_pem, csr_pem = generate_key_and_csr(REVIEWS)
    csr = x509.load_pem_x509_csr(csr_pem)
    key = serialization.load_pem_private_key(key_pem, password=None)
    assert isinstance(key, ec.EllipticCurvePrivateKey) and key.curve.name == "secp256r1"
    assert csr.is_signature_valid
    assert csr.public_key() == key.public_key()
    san = csr.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert san.get_values_for_type(x509.UniformResourceIdentifier) == [REVIEWS]
    assert b"PRIVATE KEY" not in csr_pem


def test_generate_refuses_a_non_spiffe_id() -> None:
    """Asking for an identity that is not a spiffe:// URI is an error."""
    with pytest.raises(IdentityError):
        generate_key_and_csr("https://reviews")


def test_identity_rejects_a_key_that_does_not_match_the_cert(ca: CertificateAuthority) -> None:
    """from_pem cross-checks the private key against the certificate."""
    good = mint(ca, "reviews")
    other_key, _ = generate_key_and_csr(REVIEWS)
    with pytest.raises(IdentityError, match="does not match"):
        WorkloadIdentity.from_pem(other_key, good.cert_pem, good.chain_pem, good.bundle_pem)


def test_identity_reads_id_and_validity(ca: CertificateAuthority) -> None:
    """from_pem takes the SPIFFE id and validity from the certificate."""
    identity = mint(ca, "reviews", ttl=600)
    assert identity.spiffe_id == REVIEWS
    assert identity.lifetime == pytest.approx(660, abs=2)  # 600 s + 60 s backdating


def test_expires_in_counts_down_to_not_after(ca: CertificateAuthority) -> None:
    """expires_in is the time left until not_after (renewal timing lives in the identity agent)."""
    identity = mint(ca, "reviews", ttl=3600)
    assert identity.expires_in(identity.not_after - 5) == pytest.approx(5)


def cert_with_uris(*uris: str) -> bytes:
    """A throwaway self-signed DER cert carrying the given URI SANs."""
    key = ec.generate_private_key(ec.SECP256R1())
    now = dt.datetime.now(dt.UTC)
    builder = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([]))
        .issuer_name(x509.Name([]))
        .public_key(key.public_key())
        .serial_number(1)
        .not_valid_before(now)
        .not_valid_after(now + dt.timedelta(hours=1))
    )
    if uris:
        sans = x509.SubjectAlternativeName([x509.UniformResourceIdentifier(u) for u in uris])
        builder = builder.add_extension(sans, critical=True)
    return builder.sign(key, hashes.SHA256()).public_bytes(serialization.Encoding.DER)


def test_peer_id_is_the_single_spiffe_uri() -> None:
    """peer_spiffe_id returns the one spiffe:// URI SAN."""
    assert peer_spiffe_id(cert_with_uris(REVIEWS)) == REVIEWS


@pytest.mark.parametrize(
    "uris",
    [(), (REVIEWS, "spiffe://cluster.local/ns/default/sa/admin"), ("https://reviews",)],
    ids=["none", "two", "not-spiffe"],
)
def test_peer_id_rejects_zero_many_or_non_spiffe_uris(uris: tuple[str, ...]) -> None:
    """Zero URI SANs, more than one, or a non-spiffe URI is not a mesh identity."""
    with pytest.raises(IdentityError):
        peer_spiffe_id(cert_with_uris(*uris))


def test_peer_id_rejects_garbage() -> None:
    """Bytes that are not a certificate raise IdentityError, not a parser exception."""
    with pytest.raises(IdentityError):
        peer_spiffe_id(b"\x30\x03\x02\x01")
