"""Web pages may not use 'this request comes from this machine' (the sidecar admin, the API).

A request admitted without a token only because of where it comes from (a loopback peer; the
control plane's --open-reads) may have been sent by a browser on this machine, for a page of
any site:
- DNS rebinding: the page's own name (attacker.example) re-resolves to 127.0.0.1, so its
  same-origin requests reach the loopback listener and it reads the answers. The browser still
  sends `Host: attacker.example:PORT`, so the Host must be a name this server is known by:
  an IP address (no DNS lookup, nothing to rebind), `localhost`, this machine's host name, the
  listen address, and names the operator adds (as the Kubernetes API server, Jupyter and Docker
  check it).
- Cross-site requests: a page's `fetch(url, {method: 'POST', mode: 'no-cors'})` is sent
  (unread) to any address, with `Origin` and `Sec-Fetch-Site` saying where it comes from. Such
  a request must be same-origin (Origin naming the Host it was sent to; Sec-Fetch-Site none or
  same-origin). Clients that are not browsers (curl, meshctl, Prometheus) send neither header.
Requests carrying a valid token are not checked: a page cannot add one.
"""

from __future__ import annotations

import ipaddress
import socket
from collections.abc import Iterable
from urllib.parse import urlsplit

LOOPBACK_NAMES = frozenset({"localhost", "localhost.localdomain", "ip6-localhost",
                            "ip6-loopback"})
_SAME_SITE = frozenset({"same-origin", "none"})  # Sec-Fetch-Site: the page's own, or typed in


def host_name(host: str) -> str:
    """The name of a Host header value (`name`, `name:port`, `[v6]:port`): lower case, no
    port, no brackets, no trailing dot."""
    host = host.strip().lower()
    if host.startswith("["):
        return host[1:].partition("]")[0]
    name, colon, port = host.rpartition(":")
    if colon and port.isdigit() and ":" not in name:
        host = name
    return host.rstrip(".")


def is_address(name: str) -> bool:
    try:
        ipaddress.ip_address(name.partition("%")[0])
    except ValueError:
        return False
    return True


class BrowserGuard:
    """Decides whether a request admitted for where it comes from may be answered.

    `names`: more names the server is known by ("*" turns the Host check off); `option`: how
    the operator adds one, for the refusal's text."""

    def __init__(self, names: Iterable[str] = (), *, option: str) -> None:
        extra = {host_name(n) for n in names if n.strip()}
        self.any_host = "*" in extra
        self.names = frozenset(LOOPBACK_NAMES | _own_names() | (extra - {"*"}))
        self.option = option

    def known(self, host: str) -> bool:
        name = host_name(host)
        return self.any_host or is_address(name) or name in self.names

    def refusal(self, host: str | None, origin: str | None, fetch_site: str | None
                ) -> str | None:
        """Why this request may not be answered, or None. The arguments are the request's
        Host, Origin and Sec-Fetch-Site headers (None when absent)."""
        if host is not None and not self.known(host):
            return (f"the Host header names {host_name(host)!r}, not a name this server is "
                    "known by (a web page whose name re-resolves to this machine?): call it "
                    "by IP address or localhost, send the token, or allow the name with "
                    f"{self.option}")
        if origin is not None and (host is None or urlsplit(origin.strip()).netloc.lower()
                                   != host.strip().lower()):
            return (f"cross-origin request from a web page (Origin {origin}): refused without "
                    "the token")
        if fetch_site is not None and fetch_site.strip().lower() not in _SAME_SITE:
            return (f"request from another site's web page (Sec-Fetch-Site {fetch_site}): "
                    "refused without the token")
        return None


def _own_names() -> set[str]:
    """This machine's host name (in compose, a container's: its service name). Not its FQDN:
    socket.getfqdn() asks DNS, which may take seconds."""
    name = socket.gethostname()
    return {host_name(name)} if name else set()
