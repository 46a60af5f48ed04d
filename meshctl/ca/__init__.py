"""The mesh CA: root and intermediate, CSR signing, trust bundle, bootstrap tokens."""

from meshctl.ca.authority import MIN_TTL, CertificateAuthority, IssuedCertificate
from meshctl.ca.create import init_ca
from meshctl.ca.errors import CAError, CAExistsError, CANotFoundError, CsrRejected
from meshctl.ca.layout import CaFiles
from meshctl.ca.rotation import (
    add_trusted_root,
    fingerprint,
    renew_intermediate,
    retire_root,
    rotate_root,
    trusted_roots,
)
from meshctl.ca.spiffe import spiffe_id_for
from meshctl.ca.tokens import BootstrapTokens

__all__ = [
    "MIN_TTL",
    "BootstrapTokens",
    "CAError",
    "CAExistsError",
    "CANotFoundError",
    "CaFiles",
    "CertificateAuthority",
    "CsrRejected",
    "IssuedCertificate",
    "add_trusted_root",
    "fingerprint",
    "init_ca",
    "renew_intermediate",
    "retire_root",
    "rotate_root",
    "spiffe_id_for",
    "trusted_roots",
]
