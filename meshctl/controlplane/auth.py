"""The control plane's write token: created once, kept in ``<state-dir>/token`` (mode 0600).

``meshctl serve`` calls ``ensure_token(state_dir)`` at start; the first start creates the token
with ``secrets.token_urlsafe``, later starts reuse it. Writes to the HTTP API need
``Authorization: Bearer <token>``; reads are open to loopback peers (and to everyone when the
server is started with open reads).

The ``meshctl`` CLI finds the token, first match wins:
  1. ``$AMI_TOKEN``;
  2. ``./.ami/token`` (the state directory of a control plane started in the current directory,
     as ``meshctl demo up`` does);
  3. ``~/.ami/token``.
"""

from __future__ import annotations

import contextlib
import hmac
import ipaddress
import os
import secrets
from collections.abc import Mapping
from pathlib import Path

TOKEN_FILE = "token"


def ensure_token(state_dir: str | Path) -> str:
    """Return the token in ``<state_dir>/token``, creating it (0600, never world-readable)."""
    directory = Path(state_dir)
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / TOKEN_FILE
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        token = path.read_text(encoding="ascii").strip()
        if token:
            return token
        raise ValueError(f"{path} is empty; delete it to have a new token created") from None
    token = secrets.token_urlsafe(32)
    with os.fdopen(fd, "w", encoding="ascii") as f:
        f.write(token + "\n")
        f.flush()
        os.fsync(f.fileno())
    return token


def load_client_token(
    env: Mapping[str, str] | None = None,
    cwd: Path | None = None,
    home: Path | None = None,
) -> str | None:
    """The token meshctl sends: ``$AMI_TOKEN``, else ``./.ami/token``, else ``~/.ami/token``."""
    env = os.environ if env is None else env
    if env.get("AMI_TOKEN"):
        return env["AMI_TOKEN"].strip()
    for base in (cwd or Path.cwd(), home or Path.home()):
        with contextlib.suppress(OSError):
            token = (base / ".ami" / TOKEN_FILE).read_text(encoding="ascii").strip()
            if token:
                return token
    return None


def bearer_matches(header: str | None, token: str) -> bool:
    """Whether an ``Authorization`` header carries ``token`` (constant-time comparison)."""
    if not header or not token:
        return False
    scheme, _, value = header.partition(" ")
    # compare_digest takes str only if ASCII; a header's non-ASCII bytes arrive as surrogates
    given = value.strip().encode("utf-8", "surrogatepass")
    return scheme.lower() == "bearer" and hmac.compare_digest(given, token.encode())


def is_loopback(remote: str | None) -> bool:
    """Whether a peer address is on this machine (127.0.0.0/8, ::1)."""
    if not remote:
        return False
    try:
        return ipaddress.ip_address(remote.split("%")[0]).is_loopback
    except ValueError:
        return False
