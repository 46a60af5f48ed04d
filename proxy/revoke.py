"""Policies changed: the open connections they no longer allow end (revoking access holds).

An inbound `ami-tcp` connection was authorized as a connection, and a tunnel (a WebSocket, any
101 upgrade) by the request that opened it; both then carry bytes no policy sees. When a push
brings new authorization policies (or RequestAuthentication), each is judged again as it was
admitted, the rate limit aside, and the ones now refused are closed and counted as denials;
a TCP connection an AUDIT policy the push brought matches is marked and counted as at its
admission, its access log line written when it ends.
An upgrade still awaiting its 101 is judged with them; a TCP connection without its hello yet
is judged at the hello, by the policies then in force (proxy.tcpinbound).
Istio gets there by draining every connection of a changed listener after its drain period;
here only the connections the change is about end, at once.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

from proxy.authzstats import audited

if TYPE_CHECKING:
    from proxy.downstream import DownstreamProtocol
    from proxy.inbound import InboundPolicy
    from proxy.listener import Listener

log = logging.getLogger("ami.proxy.inbound")


def recheck(listener: Listener, policy: InboundPolicy) -> None:
    """End the connections of ``listener`` that ``policy`` (just installed) refuses."""
    if not policy.needed:
        return  # no policy: everything the listener took is allowed
    tcp = listener.tcp
    for p in list(listener.connections):
        try:
            _judge(p, policy, tcp is not None)
        except Exception:
            # The push is half applied by now (the routers are swapped) and the connections
            # after this one are still to be judged: a bug here costs this connection only,
            # closed unjudged rather than left open past a revocation.
            log.exception("judging a connection again failed: closing it")
            if p.transport is not None:
                p.transport.abort()


def _judge(p: DownstreamProtocol, policy: InboundPolicy, takes_tcp: bool) -> None:
    session = p.tcp_session
    if session is not None:
        refused = None
        if takes_tcp and session.upstream is not None and not session.ended:
            refused = policy.connection_decision(p.peer_identity, p.peer_service,
                                                 p.peer_namespace, p.client_ip.decode("latin-1"))
        if refused is not None:
            log.info("TCP connection from %s ended: no longer authorized", _peer(p))
            policy.revoked(refused, session)
            assert session.on_refuse is not None
            session.on_refuse("not_authorized")
        elif (takes_tcp and session.upstream is not None and not session.ended
              and not audited(session) and policy.audit_open_connection(
                  p.peer_identity, p.peer_service, p.peer_namespace,
                  p.client_ip.decode("latin-1"), session)):
            # an AUDIT policy the push brought marks it: its line is written when it ends,
            # as the listener now logs (with the access log off too)
            session.log_out = p.listener.access_log
            session.log_filter = p.listener.access_filter
        return
    ex = p.tunnel_request
    if ex is not None and (refusal := policy.admit(ex, spend=False)):
        log.info("%s tunnel from %s ended: %s", ex.path, _peer(p), refusal[0])
        p.end_tunnel(refusal[0])  # (recorded with it when it closes)


def _peer(p: DownstreamProtocol) -> str:
    return p.peer_identity or p.client_ip.decode("ascii", "replace")
