"""The client's address as the gateway trusts it (`--trusted-proxies N`, Istio's
`gatewayTopology.numTrustedProxies`, Envoy's `xff_num_trusted_hops`).

Behind N load balancers that each append the address they were called from to
`x-forwarded-for`, the client is the Nth address from the right of the header the request
arrived with: the one the outermost trusted balancer saw. Anything left of it was written by
the client and is not believed. With fewer entries than that, or one that is no IP address,
the client is the connection's peer, as without the option. Used where the gateway keys or
judges by client: a Route rule's per-source rate limit, CONSISTENT_HASH by `sourceIp`, and
AuthorizationPolicy `remoteIpBlocks`.
"""

from __future__ import annotations

import ipaddress
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from proxy.exchange import Exchange

_XFF = b"x-forwarded-for: "


def trusted_client(ex: Exchange, hops: int) -> bytes:
    """The client's address for ``ex`` with ``hops`` trusted proxies in front (0: the peer)."""
    peer: bytes = ex.downstream.client_ip
    if hops <= 0 or not ex.head_tail:
        return peer
    # The request head's first added line is the x-forwarded-for sent on: what arrived, then
    # this connection's peer (proxy.requesthead, proxy.h2requesthead).
    line = ex.head_tail[0]
    if not line.startswith(_XFF):
        return peer
    entries = line[len(_XFF):].rstrip(b"\r\n").split(b",")
    if len(entries) <= hops:  # the peer is the last entry; fewer arrived than trusted hops
        return peer
    candidate = entries[-1 - hops].strip()
    try:
        address = ipaddress.ip_address(candidate.decode("ascii"))
    except (UnicodeDecodeError, ValueError):
        return peer
    return str(address).encode()
