"""How the control plane calls one proxy's admin listener: URL, TLS context and headers.

A proxy with a workload certificate (the registry knows its expiry) is called over mTLS as the
control plane, checking it is the service it registered as; its admin token rides along, as
its admin listener wants both for privileged routes. A proxy without one is called in
plaintext, and its token is sent only to an address on this host: across a network anyone on
the path could read it, so its privileged routes are not called there at all.
"""

from __future__ import annotations

import ssl
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from proxy.adminauth import is_loopback

if TYPE_CHECKING:
    from meshctl.controlplane.admintls import AdminTls


@dataclass(frozen=True, slots=True)
class AdminCall:
    """One proxy's admin listener as the control plane reaches it."""

    base: str  # https://host:port (mTLS) or http://host:port
    context: ssl.SSLContext | bool = True  # aiohttp's `ssl=`; plain http ignores it
    headers: Mapping[str, str] = field(default_factory=dict)  # for privileged routes
    # Why privileged routes are not called ("" when they are): no certificate, not this host.
    refusal: str = ""

    def url(self, path: str) -> str:
        return self.base + path


class AdminCaller:
    """Makes the AdminCall for a proxy as listed by ``GET /api/v1/proxies``.

    ``tls`` is None when the control plane has no certificate to present (tests, tools): every
    call is then plaintext. ``token(name)`` is the admin token that proxy registered."""

    def __init__(self, tls: AdminTls | None = None,
                 token: Callable[[str], str] = lambda _name: "") -> None:
        self.tls = tls
        self.token = token

    def call(self, proxy: Mapping[str, Any]) -> AdminCall:
        admin = str(proxy["admin"])
        token = self.token(str(proxy.get("name", "")))
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        if self.tls is not None and proxy.get("certExpiry"):
            try:
                expected = self.tls.spiffe_id(str(proxy.get("namespace") or "default"),
                                              str(proxy.get("service", "")))
            except ValueError as exc:  # not a name a certificate can be issued for
                return AdminCall(f"http://{admin}", refusal=str(exc))
            return AdminCall(f"https://{admin}", self.tls.context(expected), headers)
        if _on_this_host(admin):
            return AdminCall(f"http://{admin}", headers=headers)
        return AdminCall(f"http://{admin}", refusal=(
            "it has no workload certificate, and the control plane calls privileged admin "
            "routes of a proxy on another host over mTLS only (its admin token is never sent "
            "in plaintext across a network)"))


def _on_this_host(admin: str) -> bool:
    host = admin.rpartition(":")[0].strip("[]")
    return host == "localhost" or is_loopback(host)
