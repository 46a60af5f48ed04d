"""The HTTPS gateway's look at a ClientHello before terminating it: read without consuming it
(MSG_PEEK), so that a connection no passthrough entry takes is terminated by OpenSSL as if
nothing had been read, and one that an entry takes is handed over in plaintext to be relayed
(proxy.tlspassthrough).

Peeked bytes keep the socket readable, so waiting for more cannot use readability alone (that
would spin): SO_RCVLOWAT makes the kernel report the socket readable only once the bytes the
reader needs next are all there (or the client closed), so a ClientHello sent a byte at a time
costs a wake-up per record, not per byte. The look and a handshake after it share one
deadline, --header-timeout from the accept (the acceptor gives the handshake what is left), and
the ClientHello is bounded by proxy.clienthello's size limit.
"""

from __future__ import annotations

import asyncio
import select
import socket
from typing import TYPE_CHECKING

from proxy.clienthello import RECORD_HANDSHAKE, HelloError, HelloReader
from proxy.tlspassthrough import refused

if TYPE_CHECKING:
    from proxy.listener import Listener
    from proxy.sniroutes import SniRoutes

TERMINATE, RELAY, CLOSED = "terminate", "relay", "closed"


async def peek_hello(conn: socket.socket, routes: SniRoutes, listener: Listener,
                     deadline: float, client: str | None = None) -> tuple[str, str | None]:
    """TERMINATE (no entry takes it, or it is no TLS: the handshake decides), RELAY (an
    entry with a TCP service takes it), or CLOSED (refused and counted, or gone); no
    complete ClientHello by ``deadline`` (loop time) is CLOSED, `request_timeout`. With it,
    the server name the ClientHello asked for (None: none, or no hello read). ``client``:
    the client's address when it is not the peer's (a PROXY protocol header's)."""
    loop = listener.loop
    start = loop.time()
    client = client or _peer(conn)
    reader = HelloReader()
    seen = 0
    sni: str | None = None
    try:
        async with asyncio.timeout_at(deadline):
            while True:
                try:
                    data = conn.recv(reader.needed, socket.MSG_PEEK)
                except BlockingIOError:
                    data = None
                if data is not None:
                    if not data:
                        return CLOSED, None  # the client closed before its first byte
                    if len(data) == seen:
                        # Woken with nothing new: below the low mark the kernel says
                        # readable when the client closed (its bytes stay peekable), or,
                        # rarely, under memory pressure.
                        if _peer_closed(conn):
                            raise HelloError("closed before its ClientHello ended")
                    elif not seen and data[0] != RECORD_HANDSHAKE:
                        return TERMINATE, None
                    else:
                        hello = reader.feed(memoryview(data)[seen:])
                        seen = len(data)
                        if hello is not None:
                            sni = hello.server_name
                            break
                conn.setsockopt(socket.SOL_SOCKET, socket.SO_RCVLOWAT, reader.needed)
                await readable(loop, conn)
    except HelloError as exc:
        refused(listener, "bad_client_hello", None, "unknown", start, seen, str(exc), client)
        return CLOSED, None
    except TimeoutError:
        refused(listener, "request_timeout", None, "unknown", start, seen,
                "no complete ClientHello within --header-timeout", client)
        return CLOSED, None
    except OSError:
        return CLOSED, None  # reset by the client
    finally:
        try:
            conn.setsockopt(socket.SOL_SOCKET, socket.SO_RCVLOWAT, 1)
        except OSError:
            pass
    route = routes.lookup(sni)
    if route is None:
        return TERMINATE, sni
    if route.target is None:
        refused(listener, route.refusal, sni, route.destination, start, seen,
                f"{route.destination} takes no passthrough", client)
        return CLOSED, None
    return RELAY, sni


async def readable(loop: asyncio.AbstractEventLoop, conn: socket.socket) -> None:
    """Wait until ``conn`` (a socket no transport owns yet) has bytes to read, or an end."""
    ready: asyncio.Future[None] = loop.create_future()

    def on_readable() -> None:
        if not ready.done():
            ready.set_result(None)

    fd = conn.fileno()
    loop.add_reader(fd, on_readable)
    try:
        await ready
    finally:
        loop.remove_reader(fd)


def _peer_closed(conn: socket.socket) -> bool:
    """Whether the client shut down its side (or the connection failed), without reading."""
    poller = select.poll()
    poller.register(conn, select.POLLRDHUP | select.POLLHUP | select.POLLERR)
    return bool(poller.poll(0))


def _peer(conn: socket.socket) -> str:
    try:
        return str(conn.getpeername()[0])
    except OSError:
        return "unknown"
