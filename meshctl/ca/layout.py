"""Names of the files in a CA directory (one place, so init, load and rotation agree)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True, slots=True)
class CaFiles:
    """The paths of one CA directory."""

    directory: Path

    @property
    def root_cert(self) -> Path:
        """The signing root (self-signed), PEM."""
        return self.directory / "root-cert.pem"

    @property
    def root_key(self) -> Path:
        """The root's key; absent when the root was brought in (the key stays with its owner)."""
        return self.directory / "root-key.pem"

    @property
    def ca_cert(self) -> Path:
        """The intermediate CA that signs workload certificates."""
        return self.directory / "ca-cert.pem"

    @property
    def ca_key(self) -> Path:
        """The intermediate's key."""
        return self.directory / "ca-key.pem"

    @property
    def cert_chain(self) -> Path:
        """Intermediate then root: the path from a workload certificate up to its root."""
        return self.directory / "cert-chain.pem"

    @property
    def trust_bundle(self) -> Path:
        """Every root currently trusted (signing root first, then extra roots)."""
        return self.directory / "trust-bundle.pem"

    @property
    def extra_roots(self) -> Path:
        """Roots trusted but not signing: staged next roots and retired previous ones."""
        return self.directory / "extra-roots"

    @property
    def bootstrap_secret(self) -> Path:
        """HMAC secret of the bootstrap tokens (`.key` so certs/ git-ignores it)."""
        return self.directory / "bootstrap-secret.key"

    def managed(self) -> tuple[Path, ...]:
        """Every file init_ca writes (the ones `force` is needed to overwrite)."""
        return (
            self.root_cert,
            self.root_key,
            self.ca_cert,
            self.ca_key,
            self.cert_chain,
            self.trust_bundle,
            self.bootstrap_secret,
        )
