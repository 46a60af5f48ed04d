"""The caller's side of a TCP service: pick an endpoint per connection, open `ami-tcp` to it
(mTLS, or plaintext when the endpoint's pool has no mTLS: the service `DISABLE`, no
certificate), and join it to the app's connection (proxy.tcprelay).

Each connection picks a backend (a subset) by the weights of the service's Route, if it has
one for connections (proxy.routing.RouterBuilder._tcp_decision), then an endpoint of it by the
DestinationPolicy `loadBalancer` (a connection counts as an active request: LEAST_REQUEST is
least-connections), skipping ones outlier detection ejected. A connection that cannot be opened
(refused, `connectTimeout`, TLS failure, or the destination's sidecar answering
`upstream_connect_failure` because its app is down) is retried on another endpoint of the same
backend before any byte of the app is sent, up to 3 endpoints. `connectionPool.maxConnections`
caps this proxy's connections to the service, opening or open, as Envoy's per-cluster breaker:
one over it is closed unanswered, `overflow`.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING

from proxy.keepalive import set_keepalive
from proxy.tcprelay import MeshEnd, TcpSession, answer_word
from proxy.tcpwire import PREAMBLE, first_frame

if TYPE_CHECKING:
    from proxy.destinations import DestinationState
    from proxy.downstream import DownstreamProtocol
    from proxy.pools import EndpointPool
    from proxy.routing import Decision

log = logging.getLogger("ami.proxy.tcp")
MAX_ATTEMPTS = 3
# Answers after which another endpoint may be tried: nothing reached the app.
_RETRIABLE = frozenset({"upstream_connect_failure", "protocol_mismatch"})


@dataclass(frozen=True, slots=True)
class TcpTarget:
    """A TCP service as callers reach it: its backends by weight, and how to choose one."""

    service: str
    decision: Decision  # the Route rule for connections (or the whole service), its weights
    source: tuple[str, str]  # this proxy's (workload, version)
    version: bytes  # the hello: this proxy's version label
    idle_timeout: float = 3600.0  # connectionPool.tcpIdleTimeout; 0: never
    namespace: str = ""  # the service's (`db.ns` names it only when ns is this)


def find_target(targets: Mapping[str, TcpTarget], name: str) -> TcpTarget | None:
    """The TCP service a name means (`db`, `db.ns`, `db.ns.svc.cluster.local`, with a port)."""
    from proxy.headers import service_from_authority
    from proxy.servicenames import lookup_service_name

    def namespace_of(key: str) -> str | None:
        target = targets.get(key)
        return target.namespace if target is not None else None

    host = service_from_authority(name)
    return targets.get(host) or lookup_service_name(targets, host, namespace_of)


# Refusals that are the destination's policy, not its failure, as the HTTP status they stand for
_POLICY_ANSWERS = {"rate_limited": 429, "not_authorized": 403}


def hand_over(p: DownstreamProtocol, session: TcpSession, target: TcpTarget) -> None:
    """The downstream connection of ``p`` becomes ``session``'s app end (paused until an
    endpoint accepted), released from its listener when the session ends; then connect."""
    from proxy.tcprelay import AppEnd

    listener, transport = p.listener, p.transport
    assert transport is not None

    def end(_session: TcpSession) -> None:
        p.transport = None
        listener.release(p)

    session.on_end = end
    app = AppEnd(session)
    transport.set_protocol(app)
    app.connection_made(transport)
    p.loop.create_task(open_session(session, target))


async def open_session(session: TcpSession, target: TcpTarget) -> None:
    """Connect ``session`` (its app end attached, paused) to an endpoint of ``target``; on
    failure the app's connection is closed and the reason recorded."""
    if session.ended:
        return  # the app left before this task ran
    backend = target.decision.pick_backend()
    base = backend.metric_prefix  # ("source", this proxy's workload and version, service...)
    state = backend.state
    if state is not None and state.breaker is not None:
        if state.tcp_connections >= state.breaker.limits.max_connections:
            session.stats.inc("ami_circuit_breaker_overflow",
                              (("destination_service", base[3]),))
            session.opened((*base, "unknown", "unknown"))
            session.fail("overflow")
            return
        state.tcp_connections += 1  # released when the session ends
        session.on_end = _counted(state, session.on_end)
    session.pending_labels = (*base, "unknown", "unknown")
    tried: list[EndpointPool] = []
    reason = "no_healthy_upstream"
    for _ in range(MAX_ATTEMPTS):
        pool = backend.pick_endpoint(None, tried) if tried else backend.pick_endpoint()
        if pool is None or pool in tried:
            break
        tried.append(pool)
        reason = await _connect(session, pool, target.version)
        if backend.outlier is not None:
            # a connection refused by policy (rate limit, authorization) is a healthy
            # endpoint's answer, as an HTTP 429 or 403: no reason to eject it
            backend.outlier.record(pool, 200 if reason == "ok" else _POLICY_ANSWERS.get(reason))
        if session.ended:  # the app left meanwhile (its end hooks ran, the connection was
            session.close()  # counted under pending_labels): close the peer too
            return
        if reason == "ok":
            pool.active_requests += 1  # released when the session ends
            session.on_end = _releasing(pool, session.on_end)
            session.upstream = str(pool.address)
            session.opened((*base, pool.version, _security(pool)))
            if session.app is None:
                session.close()
            else:
                session.join()
                idle = backend.tcp_idle_timeout
                if idle is None:  # (a subset with its own connectionPool has its own)
                    idle = target.idle_timeout
                if idle:
                    session.watch_idle(idle)
            return
        if reason not in _RETRIABLE:
            break
    # no connection made (upstream_connect_failure): its security is unknown, as for HTTP
    session.opened((*base, tried[-1].version if tried else "unknown",
                    _security(tried[-1]) if tried and reason != "upstream_connect_failure"
                    else "unknown"))
    session.fail(reason)


def _counted(state: DestinationState, then: Callable[[TcpSession], None] | None,
             ) -> Callable[[TcpSession], None]:
    """An end hook: the service's connection count (maxConnections) goes down, then ``then``."""
    def end(session: TcpSession) -> None:
        state.tcp_connections -= 1
        if then is not None:
            then(session)

    return end


def _security(pool: EndpointPool) -> str:
    """The connection_security_policy label of a connection to ``pool``'s endpoint."""
    return "mutual_tls" if pool.tls is not None else "none"


def _releasing(pool: EndpointPool, then: Callable[[TcpSession], None] | None,
               ) -> Callable[[TcpSession], None]:
    """An end hook: the endpoint's connection count goes down, then ``then`` runs."""
    def end(session: TcpSession) -> None:
        pool.active_requests -= 1
        if then is not None:
            then(session)

    return end


async def _connect(session: TcpSession, pool: EndpointPool, version: bytes) -> str:
    """Open `ami-tcp` to ``pool``'s endpoint and read its answer: `ok` or a reason word."""
    tls = pool.tls
    loop = asyncio.get_running_loop()
    answered: asyncio.Future[bytes] = loop.create_future()

    def on_answer(payload: bytes) -> None:
        if not answered.done():
            answered.set_result(payload)

    session.on_answer = on_answer
    session.new_attempt()
    end = MeshEnd(session)
    transport = None
    try:
        async with asyncio.timeout(pool.connect_timeout):
            transport, _ = await loop.create_connection(
                lambda: end, pool.address.host, pool.address.port,
                ssl=tls.client_tcp if tls is not None else None,
                server_hostname="mesh" if tls is not None else None)
            if pool.keepalive is not None:
                set_keepalive(transport, pool.keepalive)
            problem = _check_peer(transport, pool) if tls is not None else None
            if problem is not None:
                log.warning("TCP service endpoint %s: %s", pool.address, problem)
                word = "protocol_mismatch" if "ALPN" in problem else "upstream_connect_failure"
            else:
                # in plaintext, the preamble tells the inbound listener what follows
                transport.write((PREAMBLE if tls is None else b"") + first_frame(version))
                word = answer_word(await answered)
    except (OSError, TimeoutError) as exc:
        log.debug("TCP service endpoint %s: %s", pool.address, exc)
        word = "upstream_connect_failure"
    finally:
        session.on_answer = None
    if word != "ok":
        end.session = None  # its close is no longer the session's
        session.mesh = None
        if transport is not None:
            transport.abort()
    return word


def _check_peer(transport: asyncio.BaseTransport, pool: EndpointPool) -> str | None:
    """Why the endpoint is not the sidecar expected, speaking `ami-tcp`; None when it is."""
    from proxy.identity import IdentityError
    from proxy.tcpwire import ALPN_TCP
    from proxy.tls import verify_peer

    ssl_object = transport.get_extra_info("ssl_object")
    if ssl_object is None:
        return "no TLS"
    try:
        verify_peer(ssl_object, {pool.identity} if pool.identity else None)
    except IdentityError as exc:
        return str(exc)
    if ssl_object.selected_alpn_protocol() != ALPN_TCP:
        return "its sidecar does not speak ami-tcp (ALPN): not declared --app-protocol tcp?"
    return None
