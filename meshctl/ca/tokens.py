"""Bootstrap tokens: per-service HMAC credentials a sidecar presents to get its first cert."""

from __future__ import annotations

import base64
import hashlib
import hmac
from pathlib import Path

from meshctl.ca import files
from meshctl.ca.layout import CaFiles
from meshctl.ca.spiffe import check_name

_PREFIX = "ami1."  # versioned so the format can change without confusing old tokens


class BootstrapTokens:
    """Tokens = HMAC-SHA256(secret, "namespace/service"); one service's token fits no other."""

    def __init__(self, secret: bytes) -> None:
        """Use `secret` (at least 16 bytes) as the HMAC key."""
        if len(secret) < 16:
            raise ValueError("bootstrap secret must be at least 16 bytes")
        self._secret = secret

    @classmethod
    def load(cls, directory: Path) -> BootstrapTokens:
        """Read the secret init_ca wrote to the CA directory (mode 0600)."""
        return cls(files.read(CaFiles(directory).bootstrap_secret))

    def token_for(self, namespace: str, service: str) -> str:
        """The token of one service (names are DNS labels, so "a/b" cannot be ambiguous)."""
        check_name("namespace", namespace)
        check_name("service", service)
        mac = hmac.new(self._secret, f"{namespace}/{service}".encode(), hashlib.sha256).digest()
        return _PREFIX + base64.urlsafe_b64encode(mac).rstrip(b"=").decode()

    def verify(self, token: str, namespace: str, service: str) -> bool:
        """True if `token` is the token of namespace/service (constant-time comparison)."""
        try:
            expected = self.token_for(namespace, service)
        except ValueError:
            return False
        return hmac.compare_digest(token.encode(), expected.encode())
