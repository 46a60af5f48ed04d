"""Trust bundle and rotation: extra trusted roots, root rotation, intermediate renewal.

Root rotation without an outage, in three steps (docs/security.md):
  1. `add_trusted_root(dir, new_root_pem)`: new root trusted, old one still signs; wait until
     every sidecar has fetched the new bundle (one renewal cycle).
  2. `rotate_root(dir, root_cert=new, root_key=new_key)`: new root signs; the old root moves to
     extra-roots/ and stays trusted while certificates it signed are still alive.
  3. `retire_root(dir, old_fingerprint)` once those have expired (one max TTL later).
"""

from __future__ import annotations

import hashlib
import time
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import serialization

from meshctl.ca import files
from meshctl.ca.builders import Clock, make_intermediate, make_root
from meshctl.ca.create import check_root, write_intermediate
from meshctl.ca.errors import CAError
from meshctl.ca.layout import CaFiles
from meshctl.ca.spiffe import trust_domain_of_ca


def fingerprint(cert: x509.Certificate) -> str:
    """SHA-256 of the DER certificate, lowercase hex: how extra roots are named and retired."""
    return hashlib.sha256(cert.public_bytes(serialization.Encoding.DER)).hexdigest()


def trusted_roots(ca: CaFiles) -> list[x509.Certificate]:
    """The signing root, then each extra-roots/*.pem (sorted by name), without duplicates."""
    roots = [files.load_cert(ca.root_cert)]
    if ca.extra_roots.is_dir():
        for path in sorted(ca.extra_roots.glob("*.pem")):
            roots.extend(files.load_certs(path.read_bytes(), str(path)))
    seen: set[str] = set()
    unique = []
    for cert in roots:
        if (fp := fingerprint(cert)) not in seen:
            seen.add(fp)
            unique.append(cert)
    return unique


def write_bundle(ca: CaFiles) -> bytes:
    """Rewrite trust-bundle.pem from the trusted roots and return its content."""
    bundle = b"".join(files.cert_pem(c) for c in trusted_roots(ca))
    files.write_atomic(ca.trust_bundle, bundle, files.PUBLIC)
    return bundle


def add_trusted_root(directory: Path, root_pem: bytes) -> str:
    """Trust another root (not signing with it); returns its fingerprint."""
    ca = CaFiles(directory)
    certs = files.load_certs(root_pem, "root")
    if len(certs) != 1 or certs[0].issuer != certs[0].subject:
        raise CAError("an extra trusted root must be one self-signed certificate")
    cert = certs[0]
    fp = fingerprint(cert)
    ca.extra_roots.mkdir(mode=0o755, exist_ok=True)
    files.write_atomic(ca.extra_roots / f"{fp}.pem", files.cert_pem(cert), files.PUBLIC)
    write_bundle(ca)
    return fp


def retire_root(directory: Path, fp: str) -> None:
    """Stop trusting an extra root; the signing root cannot be retired this way."""
    ca = CaFiles(directory)
    if fingerprint(files.load_cert(ca.root_cert)) == fp:
        raise CAError("that is the signing root: rotate_root to a new one first")
    path = ca.extra_roots / f"{fp}.pem"
    if not path.exists():
        raise CAError(f"no extra root with fingerprint {fp}")
    path.unlink()
    write_bundle(ca)


def rotate_root(
    directory: Path,
    *,
    root_cert: Path | None = None,
    root_key: Path | None = None,
    name_constraints: bool = True,
    clock: Clock = time.time,
) -> str:
    """Make a new root (generated, or brought in) the signing root; returns the old fingerprint.

    The old root stays trusted in extra-roots/ until `retire_root`. A new intermediate is issued.
    """
    ca = CaFiles(directory)
    old_root = files.load_cert(ca.root_cert)
    trust_domain = trust_domain_of_ca(files.load_cert(ca.ca_cert), str(ca.ca_cert))
    now = clock()
    if (root_cert is None) != (root_key is None):
        raise CAError("bring both the root certificate and its key, or neither")
    kept_key: files.SigningKey | None
    if root_cert is not None and root_key is not None:
        new_root, signing_key = files.load_cert(root_cert), files.load_signing_key(root_key)
        check_root(new_root, signing_key, now, source=str(root_cert))
        kept_key = None
    else:
        new_root, generated = make_root(trust_domain, now)
        signing_key = kept_key = generated
    inter, inter_key = make_intermediate(
        new_root, signing_key, trust_domain, now, name_constraints=name_constraints
    )
    old_fp = add_trusted_root(directory, files.cert_pem(old_root))
    if kept_key is None:
        ca.root_key.unlink(missing_ok=True)
    else:
        files.write_atomic(ca.root_key, files.key_pem(kept_key), files.PRIVATE)
    files.write_atomic(ca.root_cert, files.cert_pem(new_root), files.PUBLIC)
    (ca.extra_roots / f"{fingerprint(new_root)}.pem").unlink(missing_ok=True)  # staged copy
    write_intermediate(ca, inter, inter_key, new_root)
    write_bundle(ca)
    return old_fp


def renew_intermediate(
    directory: Path,
    *,
    root_key: Path | None = None,
    name_constraints: bool = True,
    clock: Clock = time.time,
) -> None:
    """Issue a new intermediate under the current root (root key from the dir, or `root_key`)."""
    ca = CaFiles(directory)
    root = files.load_cert(ca.root_cert)
    key = files.load_signing_key(root_key or ca.root_key)
    now = clock()
    check_root(root, key, now, source=str(root_key or ca.root_key))
    trust_domain = trust_domain_of_ca(files.load_cert(ca.ca_cert), str(ca.ca_cert))
    inter, inter_key = make_intermediate(
        root, key, trust_domain, now, name_constraints=name_constraints
    )
    write_intermediate(ca, inter, inter_key, root)
