"""421 Misdirected Request at the HTTPS gateway for a host its TLS passthrough takes by SNI.

A connection the gateway terminated was opened for another server name. A request on it whose
host a passthrough entry takes belongs to the app holding that name's certificate, which such
a connection never reaches: a browser reusing (coalescing) an HTTP/2 connection whose
certificate also covers `db.example.com` sent that host's requests, cookies included, to
whatever HTTP rule took the name (`hosts: ["*"]`). Answered 421 (RFC 9110 15.5.20, as Envoy
does when SNI and Host disagree), the client retries on a new connection naming the host,
which is passed through. Connections without a server name keep the HTTP rules, as before.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

from proxy.headers import service_from_authority
from proxy.routing import Decision, Router

if TYPE_CHECKING:
    from proxy.exchange import Exchange
    from proxy.sniroutes import SniRoutes

def misdirected(routes: SniRoutes) -> Callable[[Exchange], bool]:
    """Whether a request came on a terminated connection that named a server (its
    ``server_name``, proxy.servingcert), for a host ``routes`` (the passthrough table) takes."""
    def check(ex: Exchange) -> bool:
        if ex.downstream.server_name is None:
            return False
        return routes.lookup(service_from_authority(ex.authority).rstrip(".")) is not None
    return check


class MisdirectingRouter(Router):
    """The HTTPS gateway's router while it has passthrough entries: the check first, then the
    rules (a gateway without entries keeps a plain Router: its requests pay nothing)."""

    __slots__ = ("_misdirected",)

    def __init__(self, *args: object, misdirected: Callable[[Exchange], bool],
                 **kwargs: object) -> None:
        super().__init__(*args, **kwargs)  # type: ignore[arg-type]
        self._misdirected = misdirected

    def route(self, ex: Exchange) -> Decision | str:
        if self._misdirected(ex):
            return "misdirected_request"
        return Router.route(self, ex)
