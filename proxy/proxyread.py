"""The gateway's PROXY protocol step (`--proxy-protocol`): a connection's header read off its
socket before TLS or HTTP sees a byte.

The header's bytes are peeked at and consumed exactly, so what follows it (a request, a
ClientHello, in the same segment or not) stays in the socket for the protocol taking the
connection over. A connection whose first bytes are no valid header (proxy.proxyprotocol),
or that has not sent a whole one by the header timeout, is closed, as Envoy's
proxy_protocol listener filter does, and counted in `ami_proxy_protocol_refused_total`.
"""

from __future__ import annotations

import asyncio
import logging
import socket
from typing import TYPE_CHECKING

from proxy.hellopeek import readable
from proxy.proxyprotocol import V2_MAX_PAYLOAD, ProxyHeader, ProxyHeaderError, header_end, parse

if TYPE_CHECKING:
    from proxy.listener import Listener

log = logging.getLogger("ami.proxy.connection")
REFUSED = "ami_proxy_protocol_refused"
_PEEK = 16 + V2_MAX_PAYLOAD  # the most a header can be
_warned = False  # the first connection without a header is a warning: no send-proxy?


async def read_header(conn: socket.socket, listener: Listener,
                      deadline: float) -> ProxyHeader | None:
    """The header ``conn`` opens with, consumed; None when refused (counted) or gone.
    ``deadline`` (loop time) bounds the wait, as --header-timeout bounds an HTTP head."""
    buf = b""
    try:
        async with asyncio.timeout_at(deadline):
            while True:
                try:
                    chunk = conn.recv(_PEEK - len(buf), socket.MSG_PEEK)
                except BlockingIOError:
                    chunk = None
                if chunk is not None:
                    if not chunk:
                        if buf:
                            _refuse(listener, conn, "incomplete",
                                    f"closed after {len(buf)} bytes of its header")
                        return None  # (closed before a byte: a balancer's port check)
                    data = buf + chunk
                    end = header_end(data)
                    if end is not None:
                        _consume(conn, end - len(buf))
                        return parse(data[:end])
                    _consume(conn, len(chunk))  # every byte of it is the header's
                    buf = data
                await readable(listener.loop, conn)
    except ProxyHeaderError as exc:
        _refuse(listener, conn, exc.reason, str(exc))
    except TimeoutError:
        if buf:  # (silence from the start is closed as the HTTP listener closes it: uncounted)
            _refuse(listener, conn, "timeout",
                    f"{len(buf)} bytes of a header, no more within --header-timeout")
    except OSError:
        pass  # reset by the client
    return None


def _consume(conn: socket.socket, count: int) -> None:
    """Read ``count`` bytes already peeked at (they are in the socket's buffer)."""
    while count > 0:
        got = len(conn.recv(count))
        if not got:
            raise OSError("closed while its header was read")
        count -= got


def _refuse(listener: Listener, conn: socket.socket, reason: str, detail: str) -> None:
    global _warned
    listener.stats.inc(REFUSED, (("reason", reason),))
    peer = _peer(conn)
    if reason == "not_proxy_protocol" and not _warned:
        _warned = True
        log.warning("%s connection from %s closed: %s (is the load balancer sending the PROXY "
                    "protocol header? further ones are logged at DEBUG)", listener.kind, peer,
                    detail)
    else:
        log.debug("%s connection from %s closed, PROXY protocol %s: %s", listener.kind, peer,
                  reason, detail)


def _peer(conn: socket.socket) -> str:
    try:
        return str(conn.getpeername()[0])
    except OSError:
        return "unknown"


def direct_peer(conn: object) -> str:
    """The address of a request's connection's own peer (the balancer, behind the PROXY
    protocol): what AuthorizationPolicy `ipBlocks` judge, as Envoy's `direct_remote_ip`."""
    session = getattr(conn, "session", conn)  # (an HTTP/2 stream: its connection's)
    transport = getattr(session, "transport", None)
    peer = transport.get_extra_info("peername") if transport is not None else None
    return str(peer[0]) if peer else "unknown"
