"""Tests for the mesh CA: directory layout, CSR signing rules, rotation and bootstrap tokens."""

from __future__ import annotations

import stat
import time
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import ExtendedKeyUsageOID

from meshctl.ca import (
    MIN_TTL,
    BootstrapTokens,
    CAError,
    CAExistsError,
    CaFiles,
    CertificateAuthority,
    CsrRejected,
    add_trusted_root,
    fingerprint,
    init_ca,
    renew_intermediate,
    retire_root,
    rotate_root,
    spiffe_id_for,
    trusted_roots,
)
from meshctl.ca.builders import DAY

REVIEWS = "spiffe://cluster.local/ns/default/sa/reviews"


def csr_for(key: ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey, *uris: str) -> bytes:
    """A PEM CSR for `key` asking for the given URI SANs."""
    builder = x509.CertificateSigningRequestBuilder().subject_name(x509.Name([]))
    if uris:
        sans = [x509.UniformResourceIdentifier(u) for u in uris]
        builder = builder.add_extension(x509.SubjectAlternativeName(sans), critical=False)
    return builder.sign(key, hashes.SHA256()).public_bytes(serialization.Encoding.PEM)


def p256() -> ec.EllipticCurvePrivateKey:
    """A fresh P-256 key."""
    return ec.generate_private_key(ec.SECP256R1())


@pytest.fixture
def ca_dir(tmp_path: Path) -> Path:
    """A freshly initialised CA directory."""
    init_ca(tmp_path / "ca")
    return tmp_path / "ca"


def test_init_writes_the_layout_with_private_keys(ca_dir: Path) -> None:
    """init_ca writes every file, keys and the token secret with mode 0600, certs readable."""
    files = CaFiles(ca_dir)
    for path in files.managed():
        assert path.is_file(), path
    for path in (files.root_key, files.ca_key, files.bootstrap_secret):
        assert stat.S_IMODE(path.stat().st_mode) == 0o600, path
    assert stat.S_IMODE(files.ca_cert.stat().st_mode) == 0o644
    assert not list(ca_dir.glob(".*.tmp")), "atomic writes leave no temp files"


def test_init_refuses_to_overwrite_unless_forced(ca_dir: Path) -> None:
    """A second init fails and keeps the CA; with force it replaces the root."""
    before = (ca_dir / "root-cert.pem").read_bytes()
    with pytest.raises(CAExistsError):
        init_ca(ca_dir)
    assert (ca_dir / "root-cert.pem").read_bytes() == before
    init_ca(ca_dir, force=True)
    assert (ca_dir / "root-cert.pem").read_bytes() != before


def test_root_and_intermediate_have_the_promised_shape(ca_dir: Path) -> None:
    """Root: P-256, 10 years, self-signed; intermediate: P-256, 1 year, pathlen 0, constrained."""
    root = x509.load_pem_x509_certificate((ca_dir / "root-cert.pem").read_bytes())
    inter = x509.load_pem_x509_certificate((ca_dir / "ca-cert.pem").read_bytes())
    for cert, days in ((root, 3650), (inter, 365)):
        key = cert.public_key()
        assert isinstance(key, ec.EllipticCurvePublicKey) and key.curve.name == "secp256r1"
        life = cert.not_valid_after_utc - cert.not_valid_before_utc
        assert abs(life.total_seconds() - days * DAY) <= 120
    inter.verify_directly_issued_by(root)
    assert inter.extensions.get_extension_for_class(x509.BasicConstraints).value.path_length == 0
    nc = inter.extensions.get_extension_for_class(x509.NameConstraints).value
    assert nc.permitted_subtrees == [x509.UniformResourceIdentifier("cluster.local")]
    chain = x509.load_pem_x509_certificates((ca_dir / "cert-chain.pem").read_bytes())
    assert chain == [inter, root]


def test_signed_cert_has_exactly_the_identity_the_ca_chose(ca_dir: Path) -> None:
    """SANs requested in the CSR are ignored: the cert carries only the given SPIFFE id."""
    ca = CertificateAuthority(ca_dir)
    csr = csr_for(p256(), "spiffe://cluster.local/ns/kube-system/sa/admin", "https://evil")
    issued = ca.sign_csr(csr, REVIEWS, 3600)
    cert = x509.load_pem_x509_certificate(issued.cert_pem)
    san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert list(san) == [x509.UniformResourceIdentifier(REVIEWS)]
    assert cert.extensions.get_extension_for_class(x509.BasicConstraints).value.ca is False
    ku = cert.extensions.get_extension_for_class(x509.KeyUsage).value
    assert ku.digital_signature and ku.key_agreement and not ku.key_cert_sign
    eku = cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    assert set(eku) == {ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH}
    cert.verify_directly_issued_by(ca.ca_cert)
    assert x509.load_pem_x509_certificates(issued.chain_pem) == [ca.ca_cert]


def test_not_before_is_backdated_and_ttl_is_clamped(ca_dir: Path) -> None:
    """not_before is up to a minute early; TTL is raised to 60 s and cut at the CA's expiry."""
    now = time.time()
    ca = CertificateAuthority(ca_dir, clock=lambda: now)
    short = ca.sign_csr(csr_for(p256()), REVIEWS, 1)
    cert = x509.load_pem_x509_certificate(short.cert_pem)
    assert now - 61 <= cert.not_valid_before_utc.timestamp() <= now - 59
    assert short.not_after == pytest.approx(now + MIN_TTL)
    long = ca.sign_csr(csr_for(p256()), REVIEWS, 10 * 365 * DAY)
    assert long.not_after == pytest.approx(ca.ca_cert.not_valid_after_utc.timestamp(), abs=1)


def test_ca_refuses_to_sign_once_the_intermediate_is_expiring(ca_dir: Path) -> None:
    """With under a minute of intermediate life left, signing fails instead of a tiny cert."""
    end = CertificateAuthority(ca_dir).ca_cert.not_valid_after_utc.timestamp()
    late = CertificateAuthority(ca_dir, clock=lambda: end - 30)
    with pytest.raises(CAError, match="renew"):
        late.sign_csr(csr_for(p256()), REVIEWS, 3600)


def test_csr_with_a_wrong_signature_is_refused(ca_dir: Path) -> None:
    """A CSR whose signature does not verify (no proof of key possession) is refused."""
    der = bytearray(
        x509.load_pem_x509_csr(csr_for(p256())).public_bytes(serialization.Encoding.DER)
    )
    der[-1] ^= 0x01  # last byte of the ECDSA signature's s value: still valid DER
    pem = x509.load_der_x509_csr(bytes(der)).public_bytes(serialization.Encoding.PEM)
    with pytest.raises(CsrRejected, match="signature"):
        CertificateAuthority(ca_dir).sign_csr(pem, REVIEWS, 3600)


@pytest.mark.parametrize(
    "key",
    [ec.generate_private_key(ec.SECP384R1()), rsa.generate_private_key(65537, 2048)],
    ids=["p384", "rsa2048"],
)
def test_csr_keys_other_than_p256_are_refused(
    ca_dir: Path, key: ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey
) -> None:
    """Only ECDSA P-256 workload keys are signed."""
    with pytest.raises(CsrRejected, match="P-256"):
        CertificateAuthority(ca_dir).sign_csr(csr_for(key), REVIEWS, 3600)


@pytest.mark.parametrize(
    "spiffe_id",
    [
        "spiffe://other.domain/ns/default/sa/reviews",
        "https://cluster.local/ns/default/sa/reviews",
        "spiffe://cluster.local",
        "spiffe://cluster.local/ns//sa/x",
        "spiffe://cluster.local/ns/../sa/x",
    ],
)
def test_identities_outside_the_trust_domain_or_malformed_are_refused(
    ca_dir: Path, spiffe_id: str
) -> None:
    """The CA only issues well-formed workload ids of its own trust domain."""
    with pytest.raises(CsrRejected):
        CertificateAuthority(ca_dir).sign_csr(csr_for(p256()), spiffe_id, 3600)


def test_garbage_csr_is_refused(ca_dir: Path) -> None:
    """Bytes that are not a CSR are a CsrRejected, not a crash."""
    with pytest.raises(CsrRejected):
        CertificateAuthority(ca_dir).sign_csr(b"-----BEGIN CERTIFICATE REQUEST-----\n", REVIEWS, 60)


def test_spiffe_id_for_builds_and_validates() -> None:
    """spiffe_id_for formats the id and rejects names that would change its structure."""
    assert spiffe_id_for("cluster.local", "default", "reviews") == REVIEWS
    for bad in ("a/b", "", "UPPER", "-x"):
        with pytest.raises(ValueError):
            spiffe_id_for("cluster.local", "default", bad)


def test_bring_your_own_root_keeps_its_key_out(tmp_path: Path) -> None:
    """A brought-in root signs the intermediate but its key is not copied into the directory."""
    init_ca(tmp_path / "corp", "corp.example")
    corp = CaFiles(tmp_path / "corp")
    files = init_ca(
        tmp_path / "ca", "corp.example", root_cert=corp.root_cert, root_key=corp.root_key
    )
    assert not files.root_key.exists()
    assert files.root_cert.read_bytes() == corp.root_cert.read_bytes()
    root = x509.load_pem_x509_certificate(corp.root_cert.read_bytes())
    x509.load_pem_x509_certificate(files.ca_cert.read_bytes()).verify_directly_issued_by(root)
    assert CertificateAuthority(files.directory).trust_domain == "corp.example"


def test_bring_your_own_root_rejects_a_mismatched_key_or_non_ca(tmp_path: Path) -> None:
    """A root whose key does not match, or that is not a CA, is refused before writing."""
    init_ca(tmp_path / "a")
    init_ca(tmp_path / "b")
    a, b = CaFiles(tmp_path / "a"), CaFiles(tmp_path / "b")
    with pytest.raises(CAError, match="does not belong"):
        init_ca(tmp_path / "x", root_cert=a.root_cert, root_key=b.root_key)
    with pytest.raises(CAError, match="pathlen 0"):
        init_ca(tmp_path / "y", root_cert=a.ca_cert, root_key=a.ca_key)
    key = p256()
    leaf = CertificateAuthority(a.directory).sign_csr(csr_for(key), REVIEWS, 3600)
    (tmp_path / "leaf.pem").write_bytes(leaf.cert_pem)
    (tmp_path / "leaf-key.pem").write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    with pytest.raises(CAError, match="not a CA"):
        init_ca(tmp_path / "z", root_cert=tmp_path / "leaf.pem", root_key=tmp_path / "leaf-key.pem")
    assert not any((tmp_path / d).exists() for d in "xyz")


def test_root_rotation_trusts_old_and_new_then_retires_the_old(ca_dir: Path) -> None:
    """After rotate_root both roots are in the bundle; retire_root drops the old one."""
    old = trusted_roots(CaFiles(ca_dir))[0]
    old_fp = rotate_root(ca_dir)
    assert old_fp == fingerprint(old)
    ca = CertificateAuthority(ca_dir)
    bundle = x509.load_pem_x509_certificates(ca.trust_bundle())
    assert len(bundle) == 2 and bundle[1] == old and bundle[0] != old
    ca.ca_cert.verify_directly_issued_by(bundle[0])
    assert (ca_dir / "trust-bundle.pem").read_bytes() == ca.trust_bundle()
    with pytest.raises(CAError, match="signing root"):
        retire_root(ca_dir, fingerprint(bundle[0]))
    retire_root(ca_dir, old_fp)
    assert x509.load_pem_x509_certificates(ca.trust_bundle()) == [bundle[0]]


def test_staged_root_becomes_the_signing_root(tmp_path: Path) -> None:
    """A root added with add_trusted_root, then rotated to, appears once in the bundle."""
    init_ca(tmp_path / "ca")
    init_ca(tmp_path / "next")
    nxt = CaFiles(tmp_path / "next")
    add_trusted_root(tmp_path / "ca", nxt.root_cert.read_bytes())
    assert len(trusted_roots(CaFiles(tmp_path / "ca"))) == 2
    rotate_root(tmp_path / "ca", root_cert=nxt.root_cert, root_key=nxt.root_key)
    roots = trusted_roots(CaFiles(tmp_path / "ca"))
    assert len(roots) == 2 and roots[0].public_bytes(serialization.Encoding.PEM) == (
        nxt.root_cert.read_bytes()
    )
    assert not (tmp_path / "ca" / "root-key.pem").exists()


def test_renew_intermediate_replaces_it_under_the_same_root(ca_dir: Path) -> None:
    """renew_intermediate issues a new intermediate, still chaining to the same root."""
    before = CertificateAuthority(ca_dir).ca_cert
    renew_intermediate(ca_dir)
    after = CertificateAuthority(ca_dir).ca_cert
    assert after != before
    after.verify_directly_issued_by(trusted_roots(CaFiles(ca_dir))[0])


def test_bootstrap_token_is_bound_to_one_service(ca_dir: Path) -> None:
    """A's token verifies for A only: not for B, not in another namespace, not tampered."""
    tokens = BootstrapTokens.load(ca_dir)
    token = tokens.token_for("default", "reviews")
    assert tokens.verify(token, "default", "reviews")
    assert BootstrapTokens.load(ca_dir).verify(token, "default", "reviews"), "stable across loads"
    assert not tokens.verify(token, "default", "ratings")
    assert not tokens.verify(token, "other", "reviews")
    assert not tokens.verify(token[:-1] + ("A" if token[-1] != "A" else "B"), "default", "reviews")
    assert not tokens.verify(token, "default", "Bad/Name")


def test_gateway_tokens_are_a_kind_of_their_own(ca_dir: Path) -> None:
    """A service's gateway token is not its service token (nor any other service's token of
    either kind); kind() tells them apart and verify() takes the service token only."""
    tokens = BootstrapTokens.load(ca_dir)
    service, gateway = tokens.token_for("edge", "ingress"), tokens.gateway_token_for("edge",
                                                                                       "ingress")
    assert service != gateway and gateway.startswith("ami1.")
    assert tokens.kind(service, "edge", "ingress") == "service"
    assert tokens.kind(gateway, "edge", "ingress") == "gateway"
    assert not tokens.verify(gateway, "edge", "ingress")
    assert tokens.gateway_token_for("edge", "ingress") == gateway, "stable"
    for namespace, name in (("edge", "shop"), ("default", "ingress"), ("edge", "Bad/Name")):
        assert tokens.kind(gateway, namespace, name) is None
        assert tokens.kind(service, namespace, name) is None
    assert tokens.kind(gateway[:-1] + ("A" if gateway[-1] != "A" else "B"), "edge",
                       "ingress") is None
    # domain separation: no service token equals a gateway token, however names are chosen
    assert gateway not in {tokens.token_for("gateway", "edge"),
                           tokens.token_for("edge", "gateway")}


def test_bootstrap_tokens_differ_between_cas(tmp_path: Path) -> None:
    """Each CA has its own secret, so a token from one CA is worthless at another."""
    init_ca(tmp_path / "a")
    init_ca(tmp_path / "b")
    token = BootstrapTokens.load(tmp_path / "a").token_for("default", "reviews")
    assert not BootstrapTokens.load(tmp_path / "b").verify(token, "default", "reviews")
