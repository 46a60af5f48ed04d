"""`CertificateAuthority`: signs workload CSRs with exactly one SPIFFE URI SAN."""

from __future__ import annotations

import math
import time
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ec

from meshctl.ca import files
from meshctl.ca.builders import CLOCK_SKEW, Clock, make_workload_cert
from meshctl.ca.errors import CAError, CsrRejected
from meshctl.ca.layout import CaFiles
from meshctl.ca.rotation import trusted_roots
from meshctl.ca.spiffe import trust_domain_of, trust_domain_of_ca

MIN_TTL = 60.0


@dataclass(frozen=True, slots=True)
class IssuedCertificate:
    """A signed workload certificate.

    `chain_pem` holds the intermediate(s) a peer needs between the leaf and a trusted root:
    not the leaf (that is `cert_pem`), not the root (peers get that from the trust bundle).
    """

    cert_pem: bytes
    chain_pem: bytes
    not_after: float  # POSIX seconds


class CertificateAuthority:
    """The intermediate CA of one directory, signing CSRs for workloads of its trust domain."""

    def __init__(self, directory: Path, *, clock: Clock = time.time) -> None:
        """Load the intermediate, its key and trust domain from a directory made by init_ca.

        The intermediate is read once: after rotate_root/renew_intermediate build a new instance
        (an old one keeps signing with the old intermediate, which stays trusted meanwhile).
        """
        self.files = CaFiles(directory)
        self._clock = clock
        self.ca_cert = files.load_cert(self.files.ca_cert)
        self._ca_key = files.load_signing_key(self.files.ca_key)
        self.trust_domain = trust_domain_of_ca(self.ca_cert, str(self.files.ca_cert))
        self._chain_pem = files.cert_pem(self.ca_cert)

    def trust_bundle(self) -> bytes:
        """Every root trusted now, PEM concatenated (read from disk: rotation needs no restart)."""
        return b"".join(files.cert_pem(c) for c in trusted_roots(self.files))

    def sign_csr(self, csr_pem: bytes, spiffe_id: str, ttl_seconds: float, *,
                 gateway: bool = False) -> IssuedCertificate:
        """Sign `csr_pem` for `spiffe_id`; the CSR's own SANs, subject and extensions are ignored.

        The CA decides identity: the caller (the CA service) has already authenticated the
        workload and passes the id it is entitled to, and whether it is a trusted gateway
        (`gateway`: the certificate carries the gateway marker). TTL is clamped to [60 s, the
        intermediate's remaining life].
        """
        if trust_domain_of(spiffe_id) != self.trust_domain:
            raise CsrRejected(f"{spiffe_id!r} is outside trust domain {self.trust_domain!r}")
        public_key = _checked_public_key(csr_pem)
        if math.isnan(ttl_seconds):
            raise CsrRejected("ttl_seconds is NaN")
        now = self._clock()
        ca_start = self.ca_cert.not_valid_before_utc.timestamp()
        ca_end = self.ca_cert.not_valid_after_utc.timestamp()
        if not ca_start <= now or ca_end - now < MIN_TTL:
            raise CAError(
                "the intermediate CA is not valid now or expires within a minute; renew it"
            )
        not_after = now + min(max(ttl_seconds, MIN_TTL), ca_end - now)
        not_before = max(now - CLOCK_SKEW, ca_start)
        cert = make_workload_cert(
            public_key, spiffe_id, self.ca_cert, self._ca_key, not_before, not_after,
            gateway=gateway,
        )
        return IssuedCertificate(files.cert_pem(cert), self._chain_pem, not_after)


def _checked_public_key(csr_pem: bytes) -> ec.EllipticCurvePublicKey:
    """The CSR's public key, once its signature (proof of key possession) and type check out."""
    try:
        csr = x509.load_pem_x509_csr(csr_pem)
    except ValueError as e:
        raise CsrRejected(f"not a PEM CSR: {e}") from None
    try:
        valid = csr.is_signature_valid
        key = csr.public_key()
    except (ValueError, TypeError) as e:  # unsupported algorithm or malformed key
        raise CsrRejected(f"CSR key or signature unusable: {e}") from None
    if not valid:
        raise CsrRejected("CSR signature is invalid (the requester does not hold the key)")
    if not isinstance(key, ec.EllipticCurvePublicKey) or not isinstance(key.curve, ec.SECP256R1):
        raise CsrRejected("CSR key must be ECDSA P-256")
    return key
