"""`init_ca`: create a CA directory (new root, or a brought-in one) and its intermediate."""

from __future__ import annotations

import secrets
import shutil
import time
from pathlib import Path

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.types import CertificatePublicKeyTypes

from meshctl.ca import files
from meshctl.ca.builders import Clock, make_intermediate, make_root
from meshctl.ca.errors import CAError, CAExistsError
from meshctl.ca.layout import CaFiles
from meshctl.ca.spiffe import check_trust_domain


def init_ca(
    directory: Path,
    trust_domain: str = "cluster.local",
    *,
    root_cert: Path | None = None,
    root_key: Path | None = None,
    force: bool = False,
    name_constraints: bool = True,
    clock: Clock = time.time,
) -> CaFiles:
    """Create the CA files under `directory` and return their paths.

    Without `root_cert`/`root_key` a new root is generated and its key kept as root-key.pem.
    With them, the root is copied as root-cert.pem but its key is NOT copied (it only signs the
    intermediate here, then stays with its owner); renewing the intermediate then needs it again.
    Refuses to overwrite an existing CA unless `force`; `force` starts a fresh CA (extra roots and
    the bootstrap secret are replaced too, so old tokens stop working).
    """
    check_trust_domain(trust_domain)
    ca = CaFiles(directory)
    existing = [p.name for p in ca.managed() if p.exists()]
    if existing and not force:
        raise CAExistsError(f"{directory} already holds a CA ({', '.join(existing)})")
    now = clock()
    if (root_cert is None) != (root_key is None):
        raise CAError("bring both the root certificate and its key, or neither")
    if root_cert is not None and root_key is not None:
        root = files.load_cert(root_cert)
        signing_key = files.load_signing_key(root_key)
        check_root(root, signing_key, now, source=str(root_cert))
        kept_key: files.SigningKey | None = None
    else:
        root, generated = make_root(trust_domain, now)
        signing_key = kept_key = generated
    inter, inter_key = make_intermediate(
        root, signing_key, trust_domain, now, name_constraints=name_constraints
    )

    directory.mkdir(parents=True, exist_ok=True, mode=0o700)
    if force:
        shutil.rmtree(ca.extra_roots, ignore_errors=True)
        ca.root_key.unlink(missing_ok=True)
    if kept_key is not None:
        files.write_atomic(ca.root_key, files.key_pem(kept_key), files.PRIVATE)
    files.write_atomic(ca.root_cert, files.cert_pem(root), files.PUBLIC)
    write_intermediate(ca, inter, inter_key, root)
    files.write_atomic(ca.trust_bundle, files.cert_pem(root), files.PUBLIC)
    files.write_atomic(ca.bootstrap_secret, secrets.token_bytes(32), files.PRIVATE)
    return ca


def write_intermediate(
    ca: CaFiles, cert: x509.Certificate, key: files.SigningKey, root: x509.Certificate
) -> None:
    """Write the intermediate, its key and cert-chain.pem (key first: no cert without its key)."""
    files.write_atomic(ca.ca_key, files.key_pem(key), files.PRIVATE)
    files.write_atomic(ca.ca_cert, files.cert_pem(cert), files.PUBLIC)
    files.write_atomic(ca.cert_chain, files.cert_pem(cert) + files.cert_pem(root), files.PUBLIC)


def check_root(cert: x509.Certificate, key: files.SigningKey, now: float, *, source: str) -> None:
    """Refuse a brought-in root that is not a valid self-signed CA matching its key."""
    try:
        bc = cert.extensions.get_extension_for_class(x509.BasicConstraints).value
    except x509.ExtensionNotFound:
        bc = None
    if bc is None or not bc.ca:
        raise CAError(f"{source}: not a CA certificate (basicConstraints CA:TRUE missing)")
    if bc.path_length == 0:
        raise CAError(f"{source}: pathlen 0 forbids the intermediate Ami needs under it")
    try:
        cert.verify_directly_issued_by(cert)
    except (ValueError, TypeError, InvalidSignature):
        raise CAError(f"{source}: not a self-signed root") from None
    if _spki(cert.public_key()) != _spki(key.public_key()):
        raise CAError(f"{source}: the key does not belong to this certificate")
    if not cert.not_valid_before_utc.timestamp() <= now < cert.not_valid_after_utc.timestamp():
        raise CAError(f"{source}: not valid now (expired or not yet valid)")


def _spki(public_key: CertificatePublicKeyTypes) -> bytes:
    return public_key.public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )
