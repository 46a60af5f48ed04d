"""Bootstrap tokens: per-service HMAC credentials a proxy presents to get its first cert."""

from __future__ import annotations

import base64
import hashlib
import hmac
from pathlib import Path
from typing import Literal

from meshctl.ca import files
from meshctl.ca.layout import CaFiles
from meshctl.ca.spiffe import check_name, check_workload_namespace

_PREFIX = "ami1."  # versioned so the format can change without confusing old tokens
# A gateway token's message: a namespace is a DNS label (no ':'), so no service token's
# "namespace/service" can equal a gateway token's (domain separation).
_GATEWAY = "gateway:"
TokenKind = Literal["service", "gateway"]


class BootstrapTokens:
    """Tokens = HMAC-SHA256(secret, "namespace/service"); one service's token fits no other.

    A gateway token of the same service is HMAC-SHA256(secret, "gateway:namespace/service"):
    it proves that service's identity too, and in addition that the proxy is a gateway the
    operator trusts to forward x-forwarded-client-cert (docs/security.md)."""

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
        return self._mac("", namespace, service)

    def gateway_token_for(self, namespace: str, service: str) -> str:
        """The gateway token of one service (`meshctl certs token --gateway`)."""
        return self._mac(_GATEWAY, namespace, service)

    def verify(self, token: str, namespace: str, service: str) -> bool:
        """True if `token` is the (service) token of namespace/service (constant time)."""
        return self.kind(token, namespace, service) == "service"

    def kind(self, token: str, namespace: str, service: str) -> TokenKind | None:
        """Which token of namespace/service `token` is, None if neither (malformed names
        too); both comparisons always run, in constant time."""
        try:
            service_token = self.token_for(namespace, service)
            gateway_token = self.gateway_token_for(namespace, service)
        except ValueError:
            return None
        given = token.encode()
        is_service = hmac.compare_digest(given, service_token.encode())
        is_gateway = hmac.compare_digest(given, gateway_token.encode())
        return "service" if is_service else "gateway" if is_gateway else None

    def _mac(self, domain: str, namespace: str, service: str) -> str:
        check_name("namespace", namespace)
        check_name("service", service)
        check_workload_namespace(namespace)  # none minted, none verified: kind() says None
        message = f"{domain}{namespace}/{service}".encode()
        mac = hmac.new(self._secret, message, hashlib.sha256).digest()
        return _PREFIX + base64.urlsafe_b64encode(mac).rstrip(b"=").decode()
