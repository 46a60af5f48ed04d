"""Hosts outside the mesh, with MeshConfig `outboundTrafficPolicy: {mode: ALLOW_ANY}`, and the
hosts of a wildcard ExternalService (`*.example.com`, labelled with the pattern instead).

Like Istio's PassthroughCluster: on the outbound listener, a host that is no mesh service is
reached directly (its name resolved when connecting), with no route policy, and labelled
`destination_service="passthrough"` so dashboards show how much traffic leaves the mesh. HTTPS
arrives as `CONNECT host:port`, the way clients use an `HTTP_PROXY`, and becomes a byte tunnel.
With `REGISTRY_ONLY` (the default) such requests get 404 `no_route`, and CONNECT 405.
"""

from __future__ import annotations

import random
from collections import OrderedDict
from collections.abc import Callable
from typing import TYPE_CHECKING

from proxy.config import Address

if TYPE_CHECKING:
    from meshctl.api.policy import TrafficPolicy
    from proxy.exchange import Exchange
    from proxy.pools import PoolRegistry
    from proxy.routing import Decision

PASSTHROUGH = "passthrough"
MAX_DESTINATIONS = 256  # remembered outside hosts; the least recently used is forgotten
_LOCAL_HOSTS = ("localhost", "127.0.0.1", "::1", "0.0.0.0", "::")


class Passthrough:
    """Decisions for outside hosts, made on first use and kept for the snapshot's life."""

    def __init__(self, pools: PoolRegistry, rng: random.Random,
                 metric_prefix: tuple[str, ...], own_ports: Callable[[], set[int]],
                 policy: TrafficPolicy | None = None,
                 http2_ports: frozenset[int] = frozenset()) -> None:
        self.pools = pools
        self.rng = rng
        self.metric_prefix = metric_prefix
        self.own_ports = own_ports
        self.policy = policy  # a wildcard ExternalService's DestinationPolicy (timeouts)
        self.http2_ports = http2_ports  # a wildcard's HTTP2/GRPC ports: HTTP/2 upstream
        self._decisions: OrderedDict[tuple[str, bool], Decision] = OrderedDict()

    def route(self, ex: Exchange) -> Decision | str:
        tunnel = ex.method == b"CONNECT"
        key = (ex.authority.lower(), tunnel)
        decision = self._decisions.get(key)
        if decision is not None:
            self._decisions.move_to_end(key)
            return decision
        address = authority_address(key[0], 443 if tunnel else 80)
        if address is None:
            return "bad_request"
        if address.port in self.own_ports() and (
                address.host in _LOCAL_HOSTS or address.host.startswith("127.")):
            return "no_route"  # this proxy itself: a request loop, not a destination
        from proxy.routing import Backend, Decision, refuse_http1

        # Tunnels get their own pool: a connection that carried HTTP is no tunnel's to take.
        # The check above catches the obvious spellings early; the pool checks where each
        # connection really arrived (another name or spelling of this host: a hostname,
        # `[::ffff:127.0.0.1]`, `2130706433`, the host's own address).
        http2 = not tunnel and address.port in self.http2_ports
        pool = self.pools.external(address, tunnel, self.own_ports, self.policy, http2,
                                   self.metric_prefix[3])
        decision = Decision((Backend(self.metric_prefix[3], None, (pool,), None,
                                     self.metric_prefix),),
                            (100,), self.rng)
        if http2:
            decision.admit = refuse_http1
        self._decisions[key] = decision
        if len(self._decisions) > MAX_DESTINATIONS:
            _, old = self._decisions.popitem(last=False)
            self.pools.forget(old.backends[0].pools[0])
        return decision


def authority_address(authority: str, default_port: int) -> Address | None:
    """host[:port] of an authority (IPv6 in brackets); None when it is not one."""
    host, port = authority, default_port
    if authority.startswith("["):
        end = authority.find("]")
        if end < 0:
            return None
        host, rest = authority[1:end], authority[end + 1:]
        if rest:
            if not rest.startswith(":") or not rest[1:].isdigit():
                return None
            port = int(rest[1:])
    elif ":" in authority:
        host, _, text = authority.rpartition(":")
        if not text.isdigit():
            return None
        port = int(text)
    if not host or not 0 < port < 65536:
        return None
    return Address(host, port)
