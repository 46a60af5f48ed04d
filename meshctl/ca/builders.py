"""X.509 construction: the root, the intermediate and workload certificates."""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable

from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from meshctl.api.gatewaycert import gateway_policy
from meshctl.ca.files import SigningKey

Clock = Callable[[], float]

DAY = 86_400.0
ROOT_LIFETIME = 3650 * DAY
INTERMEDIATE_LIFETIME = 365 * DAY
# Backdate not_before so a peer whose clock is a little behind ours still accepts the cert.
CLOCK_SKEW = 60.0


def utc(ts: float) -> dt.datetime:
    """A POSIX timestamp as an aware UTC datetime (what cryptography wants)."""
    return dt.datetime.fromtimestamp(ts, tz=dt.UTC)


def new_key() -> ec.EllipticCurvePrivateKey:
    """A fresh ECDSA P-256 key: the only key type the mesh issues."""
    return ec.generate_private_key(ec.SECP256R1())


def _ca_name(trust_domain: str, role: str) -> x509.Name:
    return x509.Name(
        [
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, "Ami mesh"),
            x509.NameAttribute(NameOID.COMMON_NAME, f"Ami {role} CA ({trust_domain})"),
        ]
    )


def _ca_key_usage() -> x509.KeyUsage:
    return x509.KeyUsage(
        digital_signature=True,
        content_commitment=False,
        key_encipherment=False,
        data_encipherment=False,
        key_agreement=False,
        key_cert_sign=True,
        crl_sign=True,
        encipher_only=False,
        decipher_only=False,
    )


def make_root(trust_domain: str, now: float) -> tuple[x509.Certificate, ec.EllipticCurvePrivateKey]:
    """A self-signed ECDSA P-256 root valid for 10 years."""
    key = new_key()
    name = _ca_name(trust_domain, "root")
    ski = x509.SubjectKeyIdentifier.from_public_key(key.public_key())
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(utc(now - CLOCK_SKEW))
        .not_valid_after(utc(now + ROOT_LIFETIME))
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .add_extension(_ca_key_usage(), critical=True)
        .add_extension(ski, critical=False)
        .add_extension(
            x509.SubjectAlternativeName(
                [x509.UniformResourceIdentifier(f"spiffe://{trust_domain}")]
            ),
            critical=False,
        )
        .sign(key, hashes.SHA256())
    )
    return cert, key


def make_intermediate(
    root_cert: x509.Certificate,
    root_key: SigningKey,
    trust_domain: str,
    now: float,
    *,
    name_constraints: bool,
) -> tuple[x509.Certificate, ec.EllipticCurvePrivateKey]:
    """An ECDSA P-256 intermediate, pathlen 0, for one year (never past its root's expiry).

    With `name_constraints`, verifiers reject any URI it signs outside `spiffe://<trust_domain>`,
    so a stolen intermediate key cannot mint identities of another trust domain.
    """
    key = new_key()
    not_after = min(now + INTERMEDIATE_LIFETIME, root_cert.not_valid_after_utc.timestamp())
    builder = (
        x509.CertificateBuilder()
        .subject_name(_ca_name(trust_domain, "intermediate"))
        .issuer_name(root_cert.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(utc(max(now - CLOCK_SKEW, root_cert.not_valid_before_utc.timestamp())))
        .not_valid_after(utc(not_after))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(_ca_key_usage(), critical=True)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .add_extension(authority_key_id(root_cert), critical=False)
        .add_extension(
            x509.SubjectAlternativeName(
                [x509.UniformResourceIdentifier(f"spiffe://{trust_domain}")]
            ),
            critical=False,
        )
    )
    if name_constraints:
        permitted: list[x509.GeneralName] = [x509.UniformResourceIdentifier(trust_domain)]
        builder = builder.add_extension(
            x509.NameConstraints(permitted_subtrees=permitted, excluded_subtrees=None),
            critical=True,
        )
    return builder.sign(root_key, hashes.SHA256()), key


def make_workload_cert(
    public_key: ec.EllipticCurvePublicKey,
    spiffe_id: str,
    issuer_cert: x509.Certificate,
    issuer_key: SigningKey,
    not_before: float,
    not_after: float,
    *,
    gateway: bool = False,
) -> x509.Certificate:
    """A workload (leaf) certificate whose only identity is one URI SAN, `spiffe_id`.

    The subject is empty, so the SAN is critical (RFC 5280 4.2.1.6), as SPIFFE X509-SVIDs do.
    With `gateway`, it also carries the gateway marker (a certificate policy, non-critical).
    """
    builder = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([]))
        .issuer_name(issuer_cert.subject)
        .public_key(public_key)
        .serial_number(x509.random_serial_number())
        .not_valid_before(utc(not_before))
        .not_valid_after(utc(not_after))
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=True,
                key_cert_sign=False,
                crl_sign=False,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(
            x509.ExtendedKeyUsage(
                [ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH]
            ),
            critical=False,
        )
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(public_key), critical=False)
        .add_extension(authority_key_id(issuer_cert), critical=False)
        .add_extension(
            x509.SubjectAlternativeName([x509.UniformResourceIdentifier(spiffe_id)]), critical=True
        )
    )
    if gateway:
        builder = builder.add_extension(gateway_policy(), critical=False)
    return builder.sign(issuer_key, hashes.SHA256())


def authority_key_id(issuer: x509.Certificate) -> x509.AuthorityKeyIdentifier:
    """The AKI of a certificate `issuer` signs (strict verifiers, OpenSSL's X509_STRICT among
    them, refuse a certificate without one)."""
    try:
        ski = issuer.extensions.get_extension_for_class(x509.SubjectKeyIdentifier).value
        return x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(ski)
    except x509.ExtensionNotFound:  # a brought-in root without SKI
        return x509.AuthorityKeyIdentifier.from_issuer_public_key(issuer.public_key())  # type: ignore[arg-type]
