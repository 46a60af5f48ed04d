"""productpage's login session: the user name in an HMAC-signed cookie."""

from __future__ import annotations

import base64
import hashlib
import hmac

COOKIE_NAME = "session"


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).decode("ascii").rstrip("=")


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


class SessionSigner:
    """Signs and checks `<user>.<mac>` cookie values so a client cannot forge another user."""

    def __init__(self, secret: bytes) -> None:
        self._secret = secret

    def _mac(self, payload: str) -> str:
        return _b64(hmac.new(self._secret, payload.encode("ascii"), hashlib.sha256).digest())

    def dump(self, user: str) -> str:
        payload = _b64(user.encode("utf-8"))
        return f"{payload}.{self._mac(payload)}"

    def load(self, value: str | None) -> str | None:
        """The signed-in user, or None for a missing, malformed or tampered cookie."""
        if not value or "." not in value:
            return None
        payload, mac = value.rsplit(".", 1)
        try:
            if not hmac.compare_digest(mac, self._mac(payload)):
                return None
            return _unb64(payload).decode("utf-8") or None
        except (ValueError, UnicodeError):
            return None
