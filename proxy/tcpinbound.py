"""The destination's side of a TCP service: an `ami-tcp` connection on the inbound listener
(mTLS, or plaintext opened by the preamble where the mesh allows plaintext) is authorized
as a connection (and, with a rateLimit, spends a token), then piped to the local app
(proxy.tcprelay). A push whose policies no longer allow it ends it (proxy.revoke).

Only a sidecar whose app is declared `tcp` takes such connections: on any other, `ami-tcp`
would carry bytes past the HTTP app's per-request policies, so it is refused
(`protocol_mismatch`). The connection stays one of the listener's (its limit, its drain).
"""

from __future__ import annotations

import asyncio
import logging
import re
from dataclasses import dataclass
from typing import TYPE_CHECKING

from proxy.tcprelay import AppEnd, MeshEnd, TcpSession
from proxy.tcpwire import OK, PREAMBLE

if TYPE_CHECKING:
    from proxy.config import Address
    from proxy.downstream import DownstreamProtocol
    from proxy.inbound import InboundPolicy

log = logging.getLogger("ami.proxy.tcp")
_VERSION = re.compile(rb"[A-Za-z0-9._-]{1,63}")  # a label value, as the control plane checks


@dataclass(frozen=True, slots=True)
class TcpInbound:
    """What the inbound listener takes TCP connections with, per snapshot (app declared tcp)."""

    app: Address
    policy: InboundPolicy
    service: str
    version: str
    connect_timeout: float = 5.0
    idle_timeout: float = 3600.0  # the service's connectionPool.tcpIdleTimeout; 0: never
    metrics_name: str = ""  # its destination_service label when not `service` (node's)


def take_over(p: DownstreamProtocol, early: bytes = b"") -> None:
    """An `ami-tcp` connection was accepted: it is a TCP session from now on. ``early``: what
    followed a plaintext connection's preamble in its first read."""
    listener, transport = p.listener, p.transport
    assert transport is not None
    p.closed = True  # never parsed as HTTP; the listener's sweep and drain leave it alone
    session = p.tcp_session = TcpSession(listener.stats, False, "inbound", p.loop)
    session.client_address = p.client_ip.decode("latin-1")
    session.log_out = listener.access_log
    session.log_filter = listener.access_filter
    session.mesh = transport
    target: TcpInbound | None = listener.tcp

    def end(_session: TcpSession) -> None:
        p.transport = p.tcp_session = None
        listener.release(p)

    def labels(version: str) -> tuple[str, ...]:
        service = target.service if target is not None else listener.router.source[0]
        label = target.metrics_name or service if target is not None else service
        return ("destination", p.peer_service or "unknown", version, label, service,
                target.version if target is not None else "unknown", p.security)

    def hello(payload: bytes) -> None:
        nonlocal target
        # Judged by the policies in force now: a push since the handshake that refuses this
        # peer found no session to end yet (proxy.revoke skips one without its hello).
        target = listener.tcp
        # and logged as the listener logs now: a push's AUDIT policy may have it written
        # with the access log off (proxy.server.set_access_log)
        session.log_out, session.log_filter = listener.access_log, listener.access_filter
        # the caller's version label, believed over mTLS only (as HTTP's `x-ami-peer`)
        version = (payload.decode("ascii") if p.peer_identity is not None
                   and _VERSION.fullmatch(payload) else "unknown")
        session.opened(labels(version))
        if target is None:
            refuse("protocol_mismatch")
        elif (refusal := target.policy.admit_connection(
                p.peer_identity, p.peer_service, p.peer_namespace, p.client_ip,
                session)) is not None:
            refuse(refusal)  # not_authorized, rate_limited
        else:
            session.upstream = str(target.app)
            # The caller waits for `ok` before sending its app's bytes; what a peer sends
            # sooner is kept for the app (proxy.tcprelay), and no more is read meanwhile.
            session.hold_mesh()
            p.loop.create_task(connect_app(target))

    def refuse(reason: str) -> None:
        """End the connection for ``reason``: answered with it while no answer was sent (the
        caller's sidecar reads it as the answer frame), counted under whatever is known."""
        if not session.labels:
            session.opened(labels("unknown"))
        if not session.answered:
            session.answer(reason.encode())
        session.fail(reason)

    async def connect_app(target: TcpInbound) -> None:
        try:
            await asyncio.wait_for(p.loop.create_connection(
                lambda: AppEnd(session), target.app.host, target.app.port),
                target.connect_timeout)
        except (OSError, TimeoutError) as exc:
            log.debug("TCP app %s: %s", target.app, exc)
            refuse("upstream_connect_failure")
            return
        if session.mesh is None or session.ended:  # the caller went away, or was revoked
            session.close()  # (closes the app's end just made)
            return
        session.answer(OK)
        session.join()
        if target.idle_timeout:
            session.watch_idle(target.idle_timeout)

    def no_hello() -> None:
        if not session.labels and not session.ended:
            refuse("request_timeout")  # a slow or silent caller, as HTTP's slow headers

    session.on_hello = hello
    session.on_refuse = refuse
    session.on_end = end
    transport.set_protocol(MeshEnd(session))
    p.loop.call_later(listener.limits.header_timeout, no_hello)
    if early:
        session.from_mesh(early)


def await_preamble(p: DownstreamProtocol, head: bytes) -> None:
    """A plaintext connection's first read was only the start of the preamble (TCP may split
    it anywhere): the rest is read here, then the connection is `ami-tcp`, or the 400 it
    would have been. One that stalls gets the listener's `408 request_timeout` after
    `--header-timeout`, as a slow HTTP head does."""
    assert p.transport is not None
    p.transport.set_protocol(_Preamble(p, head))


class _Preamble(asyncio.Protocol):
    """Reads the rest of a split preamble for ``p``, which stays the connection's owner."""

    def __init__(self, p: DownstreamProtocol, head: bytes) -> None:
        self.p = p
        self.head = head

    def data_received(self, data: bytes) -> None:
        p, head = self.p, self.head + data
        if p._lingering:  # timed out (408) meanwhile: read and dropped
            return
        self.head = head
        if len(head) < len(PREAMBLE) and PREAMBLE.startswith(head):
            return
        assert p.transport is not None
        p.transport.set_protocol(p)
        if head.startswith(PREAMBLE):
            take_over(p, head[len(PREAMBLE):])
        else:
            p._reject("bad_request")  # no preamble after all: what httptools stopped at

    def eof_received(self) -> bool:
        return False

    def connection_lost(self, exc: Exception | None) -> None:
        self.p.connection_lost(exc)
