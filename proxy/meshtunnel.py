"""`CONNECT` to a mesh service on the outbound listener: the tunnel is read as a new client.

gRPC clients honouring `grpc_proxy`/`http_proxy` (and `curl -p`) open `CONNECT reviews:9080`
and speak inside it. After `200 Connection Established` the same connection is parsed afresh,
HTTP/1.1 or HTTP/2 prior knowledge, by the listener's own protocols: every request in the
tunnel is routed by its own authority and goes through every check a direct request does
(the CONNECT's authority only stands in for a missing HTTP/1.1 `Host`; HTTP/2 requests always
carry `:authority`). It stays one connection of the listener for limits, timeouts and drain.
TLS inside is refused: the mesh does the TLS. To a TCP service (`protocol: tcp`) the tunnel
is a byte stream to the service instead (proxy.tcpclient), as a `--tcp-upstream` port's,
answered `200` only once an endpoint accepted it. `CONNECT` to a declared HTTP port of an
ExternalService host is read as HTTP too, so that its Route (timeouts, retries, faults)
applies inside the tunnel.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

import httptools

from proxy.exchange import _CONNECT_ESTABLISHED, Exchange
from proxy.headers import service_from_authority
from proxy.passthrough import authority_address
from proxy.requesthead import Reject
from proxy.tcpclient import find_target, hand_over

if TYPE_CHECKING:
    from proxy.downstream import DownstreamProtocol
    from proxy.tcpclient import TcpTarget

log = logging.getLogger("ami.proxy")
TLS_RECORD = b"\x16\x03"  # a TLS handshake record (ClientHello), any TLS version


class MeshConnect(Exchange):
    """The CONNECT request: answered when its turn comes (after any request pipelined before
    it), never routed or recorded itself; the requests in its tunnel are. To a TCP service the
    answer waits for an endpoint to accept (`503` and the reason word when none does), as
    Envoy's CONNECT termination: the tunnel's TCP session records it."""

    __slots__ = ()

    def start(self) -> None:
        p = self.downstream
        if p.tcp_connect is None:
            p.write(_CONNECT_ESTABLISHED)
        p.current = None
        p.idle_since = p.loop.time()
        p.mesh_connect = self.authority.encode("latin-1")
        if p._tunnel_preamble is not None:  # the parser stopped at this CONNECT long ago
            p.loop.call_soon(enter, p)
        # else: answered from inside the CONNECT head's own parse; DownstreamProtocol calls
        # enter once the parser has stopped there (HttpParserUpgrade)


def connect_exchange(p: DownstreamProtocol, authority: str) -> MeshConnect | None:
    """A MeshConnect when `CONNECT authority` tunnels into the mesh, else None (egress's)."""
    if p.listener.kind != "outbound":
        return None
    router = p.listener.router
    tcp = find_target(router.tcp, authority) if router.tcp else None
    if tcp is None and not router.tunnels_into_mesh(authority):
        return None
    if authority_address(authority, 0) is None:
        raise Reject("bad_request")  # no port (RFC 9110 9.3.6: CONNECT names host:port)
    p.tcp_connect = tcp
    return MeshConnect(p, b"CONNECT", p._url, "", "", authority, p._headers, [], False, False,
                       p.parser.get_http_version() == "1.0", False, False, p.head_started)


def enter(p: DownstreamProtocol) -> None:
    """Read the connection afresh, from the bytes that followed the CONNECT head (held, with
    reading paused, until now). Run from the loop, not from inside the parser's handling of
    the CONNECT: an error in these bytes is theirs, not chained to the CONNECT's upgrade."""
    if p.closed or p.transport is None:
        return
    if p.tcp_connect is not None:
        enter_tcp(p, p.tcp_connect)
        return
    p.tunnel_host, p.mesh_connect = p.mesh_connect, None
    p.parser = httptools.HttpRequestParser(p)
    preamble, p._tunnel_preamble = p._tunnel_preamble or [], None
    p._paused = 0
    p.transport.resume_reading()
    if preamble:
        p.data_received(b"".join(preamble))


def enter_tcp(p: DownstreamProtocol, target: TcpTarget) -> None:
    """The tunnel to a TCP service: the connection is a TCP session from now on, sent to an
    endpoint of the service as a `--tcp-upstream` connection is; it stays one connection of
    the listener (its limit, its drain) until it ends."""
    from proxy.tcprelay import TcpSession

    listener = p.listener
    session = TcpSession(listener.stats, True, "outbound", p.loop)
    session.client_address = p.client_ip.decode("latin-1")
    session.authority = (p.mesh_connect or b"").decode("latin-1")
    session.log_out = listener.access_log
    session.log_filter = listener.access_filter
    session.early = b"".join(p._tunnel_preamble or ())  # sent on once the service answered
    session.connect_answer = _CONNECT_ESTABLISHED
    p._tunnel_preamble, p.mesh_connect, p.closed = None, None, True
    hand_over(p, session, target)


def refuse_tls(p: DownstreamProtocol) -> None:
    """The app began TLS inside the tunnel: closed, never passed on (mTLS is the mesh's; the
    app must speak plaintext to its sidecar). Logged, and counted as `tls_in_tunnel`."""
    host = (p.tunnel_host or b"").decode("latin-1")
    if p.listener.router.is_mesh_host(host):
        log.warning("%s began TLS inside a CONNECT tunnel to mesh service %s: closed (the "
                    "mesh does the TLS; the app must speak plain http/h2c to its sidecar)",
                    p.client_ip.decode(), host)
    else:
        log.warning("%s began TLS inside a CONNECT tunnel to %s, an HTTP port of an "
                    "ExternalService: closed (the sidecar reads it as HTTP; declare the port "
                    "TLS for the app's own TLS, or let the sidecar open it: DestinationPolicy "
                    "tls)", p.client_ip.decode(), host)
    p.listener.record_rejection(p, "tls_in_tunnel", service_from_authority(host))
    p._close()
