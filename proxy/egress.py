"""Hosts outside the mesh on the outbound listener: ExternalService declarations and ALLOW_ANY.

Built once per snapshot (`RouterBuilder.outbound`); the router asks it only about requests no
mesh route took, so mesh traffic never pays for it:

- `CONNECT host:port` opens a tunnel when an ExternalService declares the host with that port
  as HTTPS, TLS or TCP (exact names first, then `*.suffix` wildcards), else passes through
  under ALLOW_ANY, else is refused (405 `method_not_allowed`, as without ExternalServices).
  To a port declared for HTTP it is read as HTTP instead (`Router.tunnels_into_mesh`).
- A plain-HTTP request for a host no route knows goes to a wildcard ExternalService declaring
  its port as HTTP (or HTTP2, GRPC), else passes through under ALLOW_ANY, else gets 404 `no_route`.
- A mesh name never passes through (Kubernetes DNS would not resolve it outside the cluster):
  a bare name that several other namespaces' services have, none this proxy's, or a
  `name.ns.svc...` no service has, gets 404 `no_route` under ALLOW_ANY (a request and a
  CONNECT alike).

Exact ExternalService hosts with HTTP ports are not here: they sit in the router's host table
(`routing.ExternalHostRoute`), where Routes and DestinationPolicies apply to them.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from meshctl.api.external import TUNNEL_PROTOCOLS, is_mesh_name
from proxy.passthrough import Passthrough, authority_address

if TYPE_CHECKING:
    from proxy.config import ExternalHost
    from proxy.exchange import Exchange
    from proxy.routing import Decision


@dataclass(frozen=True, slots=True)
class Wildcard:
    """A `*.suffix` ExternalService: any name ending in `.suffix`, resolved when connecting,
    labelled with the pattern (so the metric series stay few)."""

    host: ExternalHost
    reach: Passthrough  # decisions per requested name, made on first use

    def takes(self, name: str, port: int, tunnel: bool) -> bool:
        return name.endswith(self.host.host[1:]) and any(
            number == port and (protocol in TUNNEL_PROTOCOLS) == tunnel
            for number, protocol in self.host.ports)


class Egress:
    """Where requests for hosts outside the mesh go (see the module docstring)."""

    __slots__ = ("mesh_names", "passthrough", "tunnels", "wildcards")

    def __init__(self, tunnels: dict[tuple[str, int], Decision], wildcards: tuple[Wildcard, ...],
                 passthrough: Passthrough | None,
                 mesh_names: frozenset[str] = frozenset()) -> None:
        self.tunnels = tunnels  # (exact host, port) -> the tunnel's decision
        self.wildcards = wildcards
        self.passthrough = passthrough  # ALLOW_ANY
        # Bare names of mesh services that mean none from here (several other namespaces
        # have one): as in Kubernetes, whose DNS fails for them, they never go out.
        self.mesh_names = mesh_names

    def _pass(self, ex: Exchange, name: str) -> Decision | str | None:
        """ALLOW_ANY's passthrough, unless ``name`` is a mesh name (`name.ns.svc...`, or a
        bare name of ``mesh_names``): 404 `no_route`. None: no passthrough."""
        if self.passthrough is None:
            return None
        if name in self.mesh_names or is_mesh_name(name):
            return "no_route"
        return self.passthrough.route(ex)

    def connect(self, ex: Exchange) -> Decision | str:
        """A `CONNECT host:port` request."""
        address = authority_address(ex.authority.lower(), 443)
        if address is None:
            return "bad_request"
        name = address.host.rstrip(".")
        decision = self.tunnels.get((name, address.port))
        if decision is not None:
            return decision
        for wildcard in self.wildcards:
            if wildcard.takes(name, address.port, True):
                return wildcard.reach.route(ex)
        passed = self._pass(ex, name)
        return "method_not_allowed" if passed is None else passed

    def declares_tunnel(self, authority: str) -> bool:
        """Whether an ExternalService declares `CONNECT authority` (TLS or TCP port)."""
        address = authority_address(authority.lower(), 443)
        if address is None:
            return False
        name = address.host.rstrip(".")
        return (name, address.port) in self.tunnels or any(
            w.takes(name, address.port, True) for w in self.wildcards)

    def declares_http(self, authority: str) -> bool:
        """Whether a wildcard ExternalService declares `authority`'s port as an HTTP one (and
        no exact host keeps it as a tunnel): `CONNECT authority` is then read as HTTP."""
        address = authority_address(authority.lower(), 443)
        if address is None:
            return False
        name = address.host.rstrip(".")
        return (name, address.port) not in self.tunnels and any(
            w.takes(name, address.port, False) for w in self.wildcards)

    def allows_tunnel(self, authority: str) -> bool:
        """Whether `CONNECT authority` would still open a tunnel (declared, or ALLOW_ANY)."""
        return self.passthrough is not None or self.declares_tunnel(authority)

    def other(self, ex: Exchange) -> Decision | str:
        """A plain-HTTP request for a host that no mesh route or exact ExternalService takes."""
        if not self.wildcards and self.passthrough is None:
            return "no_route"
        address = authority_address(ex.authority.lower(), 80)
        name = address.host.rstrip(".") if address is not None else ""
        if address is not None:
            for wildcard in self.wildcards:
                if wildcard.takes(name, address.port, False):
                    return wildcard.reach.route(ex)
        passed = self._pass(ex, name)
        return "no_route" if passed is None else passed
