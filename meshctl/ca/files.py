"""File helpers for the CA directory: atomic private writes and PEM loading."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa

from meshctl.ca.errors import CAError, CANotFoundError

# The key types the CA signs with (SHA-256 in both cases); a brought-in root may be RSA.
SigningKey = ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey

PRIVATE = 0o600
PUBLIC = 0o644


def write_atomic(path: Path, data: bytes, mode: int) -> None:
    """Write `data` to `path` so readers see the old file or the new one, never half of one.

    The temp file is created with `mode` from the start (never world-readable, even briefly).
    """
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        os.fchmod(fd, mode)
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        raise


def read(path: Path) -> bytes:
    """Read a CA file, mapping a missing file to CANotFoundError."""
    try:
        return path.read_bytes()
    except FileNotFoundError:
        raise CANotFoundError(f"{path}: missing (run `meshctl certs init`?)") from None


def load_cert(path: Path) -> x509.Certificate:
    """Load one PEM certificate."""
    try:
        return x509.load_pem_x509_certificate(read(path))
    except ValueError as e:
        raise CAError(f"{path}: not a PEM certificate: {e}") from None


def load_certs(data: bytes, source: str) -> list[x509.Certificate]:
    """Load every certificate of a PEM bundle."""
    try:
        return x509.load_pem_x509_certificates(data)
    except ValueError as e:
        raise CAError(f"{source}: not a PEM certificate bundle: {e}") from None


def load_signing_key(path: Path) -> SigningKey:
    """Load an unencrypted PEM ECDSA or RSA private key."""
    try:
        key = serialization.load_pem_private_key(read(path), password=None)
    except (ValueError, TypeError) as e:
        raise CAError(f"{path}: not an unencrypted PEM private key: {e}") from None
    if not isinstance(key, ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey):
        raise CAError(f"{path}: {type(key).__name__} keys are not supported (use ECDSA or RSA)")
    return key


def cert_pem(cert: x509.Certificate) -> bytes:
    """PEM encoding of a certificate."""
    return cert.public_bytes(serialization.Encoding.PEM)


def key_pem(key: SigningKey) -> bytes:
    """Unencrypted PKCS#8 PEM of a private key (protected by file mode 0600)."""
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
