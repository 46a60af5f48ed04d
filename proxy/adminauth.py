"""Who may call a sidecar's privileged admin routes (`/tap`, `/config_dump`, `/shutdown`, ...).

- Over mTLS (the admin port also speaks TLS once the sidecar has a certificate): the control
  plane's SPIFFE id only, and it must present the admin token too (defence in depth). Any
  other mesh identity is refused, even with the token; so is a loopback caller over TLS.
- In plaintext: a loopback peer (an operator's `curl` on the host), unless the request comes
  from a web page in a browser on the host (a foreign Host, or a cross-site Origin or
  Sec-Fetch-Site: proxy/hostguard.py). From another host, only
  while the sidecar has no certificate, and with the admin token; once it has one, the token
  is refused in plaintext, where anyone on the path could read it and then replay it.
A static-mode proxy has no token: its privileged routes answer loopback only.
"""

from __future__ import annotations

import hmac
import ipaddress
from collections.abc import Callable, Iterable

from proxy.hostguard import BrowserGuard

SPIFFE_SCHEME = "spiffe://"  # as proxy.identity, which loads cryptography: not needed here

# The control plane's identity next to the workloads' (meshctl/controlplane/ca_service.py
# issues it; no sidecar can get it: this namespace is reserved, meshctl/ca/spiffe.py
# reserved_namespace, which the CA service, Register and `meshctl certs token`/`issue` check).
CONTROL_PLANE_NAMESPACE, CONTROL_PLANE_SERVICE = "ami-system", "meshctl"


def control_plane_id(workload_id: str) -> str:
    """The control plane's SPIFFE id in the trust domain of `workload_id`."""
    trust_domain = workload_id.removeprefix(SPIFFE_SCHEME).partition("/")[0]
    return (f"{SPIFFE_SCHEME}{trust_domain}/ns/{CONTROL_PLANE_NAMESPACE}"
            f"/sa/{CONTROL_PLANE_SERVICE}")


class AdminAccess:
    """Decides privileged calls; `own_id()` is this sidecar's SPIFFE id, None without one."""

    def __init__(self, token: str = "", own_id: Callable[[], str | None] = lambda: None,
                 known_hosts: Iterable[str] = ()) -> None:
        self.token = token  # "" = privileged routes are loopback-only
        self.own_id = own_id
        # the admin listen address is passed here; a name-based one is rare (--admin NAME:PORT)
        self.browser = BrowserGuard(known_hosts, option="--admin NAME:PORT")

    def refusal(self, peer: str, authorization: str, peer_id: str | None, *,
                host: str | None = None, origin: str | None = None,
                fetch_site: str | None = None) -> str | None:
        """Why this caller may not use a privileged route, or None if it may. `peer` is its IP
        address, `peer_id` its verified SPIFFE id over mTLS (None in plaintext); `host`,
        `origin` and `fetch_site` its Host, Origin and Sec-Fetch-Site headers (None: absent)."""
        own = self.own_id()
        if peer_id is not None:
            expected = control_plane_id(own or "")
            if peer_id != expected:
                return f"over mTLS only the control plane ({expected}) may call it, not {peer_id}"
            if not self.token:
                return "this proxy has no admin token (static mode): call it from this host"
            if not self._token_matches(authorization):
                return "the control plane's call must carry this sidecar's admin token"
            return None
        if is_loopback(peer):
            return self.browser.refusal(host, origin, fetch_site)
        if own is not None:
            return ("from another host it answers only the control plane over mTLS (the admin "
                    "token is not taken in plaintext); call it from this host (loopback)")
        if not self._token_matches(authorization):
            return "call it from this host (loopback) or with the admin token"
        return None

    def _token_matches(self, authorization: str) -> bool:
        scheme, _, presented = authorization.partition(" ")
        return bool(self.token) and scheme.lower() == "bearer" and hmac.compare_digest(
            presented.strip().encode(), self.token.encode())


def is_loopback(host: str) -> bool:
    """Whether an IP address (text) is loopback, IPv4-mapped IPv6 included."""
    try:
        address = ipaddress.ip_address(host)
    except ValueError:
        return False
    mapped = getattr(address, "ipv4_mapped", None)  # ::ffff:127.0.0.1 on a dual-stack socket
    return address.is_loopback or (mapped is not None and mapped.is_loopback)
