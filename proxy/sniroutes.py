"""The gateway's TLS passthrough table: server names (SNI) to TCP services, built per snapshot.

The most specific pattern wins, as Envoy's filter chain `server_names` (which Istio's
PASSTHROUGH servers become): for `a.db.example.com`, the exact name, then `*.db.example.com`,
then `*.example.com`, `*.com`, then `*`. A pattern is in one entry only (the Gateway parser
refuses a repeat), so the answer never depends on order. A lookup is a few dict lookups, one
per label of the name, once per connection.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from proxy.tcpclient import TcpTarget

log = logging.getLogger("ami.proxy")


@dataclass(frozen=True, slots=True)
class SniRoute:
    """Where connections for one entry's names go: ``target``, or nowhere for ``refusal``."""

    destination: str
    target: TcpTarget | None
    refusal: str = ""  # protocol_mismatch (an HTTP service) or no_route (no such service)


class SniRoutes:
    """Exact names, `*.suffix` patterns (keyed by the suffix) and `*`."""

    __slots__ = ("_any", "_exact", "_suffixes")

    def __init__(self, exact: dict[str, SniRoute], suffixes: dict[str, SniRoute],
                 any_name: SniRoute | None) -> None:
        self._exact = exact
        self._suffixes = suffixes
        self._any = any_name

    def lookup(self, name: str | None) -> SniRoute | None:
        """The route of a server name (lower-case, no final dot); None for no name or none
        that any pattern takes."""
        if name is None:
            return None
        found = self._exact.get(name)
        if found is not None:
            return found
        if self._suffixes:
            rest = name
            while (dot := rest.find(".")) >= 0:
                rest = rest[dot + 1:]
                found = self._suffixes.get(rest)
                if found is not None:
                    return found
        return self._any


def build(entries: tuple[Any, ...], targets: Mapping[str, TcpTarget],
          services: Mapping[str, Any]) -> SniRoutes | None:
    """The table of a snapshot's `gateway.passthrough` entries (meshctl.api.kinds
    .GatewayPassthrough); None without entries, so that connections pay nothing then.
    ``targets``: the snapshot's TCP services; ``services``: all its services."""
    if not entries:
        return None
    from proxy.servicenames import lookup_service_name
    from proxy.tcpclient import find_target

    def namespace_of(key: str) -> str | None:
        service = services.get(key)
        return getattr(service, "namespace", None) if service is not None else None

    exact: dict[str, SniRoute] = {}
    suffixes: dict[str, SniRoute] = {}
    any_name = None
    for entry in entries:
        target = find_target(targets, entry.destination)
        refusal = ""
        if target is None:
            http = (services.get(entry.destination)
                    or lookup_service_name(services, entry.destination, namespace_of))
            refusal = "protocol_mismatch" if http is not None else "no_route"
            log.warning("gateway passthrough to %s (%s): %s, its connections are closed",
                        entry.destination, ", ".join(entry.sni_hosts),
                        "an HTTP service, not a TCP one (its sidecars must run with "
                        "--app-protocol tcp)" if http is not None else "no such service")
        route = SniRoute(entry.destination, target, refusal)
        for host in entry.sni_hosts:
            if host == "*":
                any_name = route
            elif host.startswith("*."):
                suffixes[host[2:]] = route
            else:
                exact[host] = route
    return SniRoutes(exact, suffixes, any_name)
