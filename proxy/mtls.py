"""TLS listeners: an accept loop that applies the current mode (mesh inbound, HTTPS gateway).

STRICT hands every connection to TLS (no client certificate, no connection); PERMISSIVE peeks at
the first byte and takes TLS (0x16, a handshake record) or plaintext on the same port; DISABLE
is plaintext. The mode is read per connection, so a push changing it needs no rebind. The
gateway's HTTPS listener is always STRICT, with a server certificate and no client one; the
admin listener is PERMISSIVE once the proxy has an identity (mTLS for the control plane,
plaintext for probes and Prometheus), with protocols of its own. With TLS passthrough entries,
the HTTPS gateway first peeks at the ClientHello (proxy.hellopeek): a connection an entry takes
is handed over in plaintext, to be relayed untouched (proxy.tlspassthrough).
Connections still in their handshake count against the listener's connection limit.
"""

from __future__ import annotations

import asyncio
import logging
import socket
import ssl
from collections.abc import Callable, Sized
from typing import TYPE_CHECKING, Any, Protocol, TypedDict

from proxy.downstream import DownstreamProtocol, TlsDownstreamProtocol

if TYPE_CHECKING:
    from proxy.listener import Limits, Listener
    from proxy.metrics import RequestStats


class ServerTls(Protocol):
    """What the acceptor binds with: a context that picks the current certificate itself."""

    listener: ssl.SSLContext


class Accepting(Protocol):
    """What the acceptor reads of the listener it accepts for (proxy.listener.Listener)."""

    @property
    def kind(self) -> str: ...
    @property
    def loop(self) -> asyncio.AbstractEventLoop: ...
    @property
    def limits(self) -> Limits: ...
    @property
    def stats(self) -> RequestStats: ...
    @property
    def connections(self) -> Sized: ...


log = logging.getLogger("ami.proxy")
_TLS_HANDSHAKE = 0x16


class TlsAcceptor:
    """Accepts on a bound socket and starts each connection as TLS or plaintext.

    `plain`/`secure` make the protocol of a plaintext/TLS connection (`downstream_protocols`
    gives the data plane's)."""

    def __init__(self, listener: Accepting, sock: socket.socket,
                 tls: Callable[[], ServerTls | None], mode: Callable[[], str], *,
                 plain: Callable[[], asyncio.BaseProtocol],
                 secure: Callable[[], asyncio.BaseProtocol],
                 passthrough: Callable[[], Any] | None = None,
                 proxy_protocol: bool = False) -> None:
        self.listener = listener
        self.sock = sock
        self.tls = tls
        self.mode = mode
        self.plain = plain
        self.secure = secure
        # the HTTPS gateway: its TLS passthrough table (proxy.sniroutes.SniRoutes, or None),
        # whose connections are relayed, not terminated
        self.passthrough = passthrough
        # the gateway's --proxy-protocol: each connection opens with a PROXY header, read
        # (proxy.proxyread) before the first byte is peeked at or the handshake starts
        self.proxy_protocol = proxy_protocol
        self.loop = listener.loop
        self._task: asyncio.Task[None] | None = None
        self.sockets = [sock]
        self.starting = 0  # accepted, handshake (or first-byte peek) not finished yet

    def start(self) -> None:
        self._task = self.loop.create_task(self._accept_loop())

    def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
        self.sock.close()

    async def _accept_loop(self) -> None:
        while True:
            try:
                conn, _ = await self.loop.sock_accept(self.sock)
            except asyncio.CancelledError:
                raise
            except OSError as exc:
                log.warning("%s accept failed: %s", self.listener.kind, exc)
                await asyncio.sleep(0.01)  # e.g. EMFILE: back off instead of spinning
                continue
            listener = self.listener
            if len(listener.connections) + self.starting >= listener.limits.max_connections:
                # Handshakes in progress count too, or stalled ones would have no bound.
                listener.stats.inc("ami_connections_refused", (("listener", listener.kind),))
                conn.close()
                continue
            conn.setblocking(False)
            conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            self.starting += 1
            self.loop.create_task(self._start_counted(conn))

    async def _start_counted(self, conn: socket.socket) -> None:
        pending = _Starting(self)
        try:
            await self._start(conn, pending)
        finally:
            pending.done()

    async def _start(self, conn: socket.socket, pending: _Starting) -> None:
        # One deadline from the accept for what is read before the handshake (a PROXY
        # header, PERMISSIVE's first byte, a passthrough gateway's ClientHello) and the
        # handshake itself: a slow client must not get --header-timeout for each (twice the
        # time to hold a slot).
        deadline: float | None = None
        plain, secure = self.plain, self.secure
        client: str | None = None  # the PROXY header's, when it names one
        if self.proxy_protocol:
            from proxy.proxyread import read_header

            deadline = self.loop.time() + self.listener.limits.header_timeout
            header = await read_header(conn, self.listener, deadline)  # type: ignore[arg-type]
            if header is None:
                conn.close()
                return
            if header.source is not None:
                client = header.source
                plain = _proxied(plain, (client, header.source_port))
                secure = _proxied(secure, (client, header.source_port))
        mode = self.mode()
        use_tls = mode == "STRICT"
        if mode == "PERMISSIVE" and self.tls() is None:
            mode = "DISABLE"  # nothing to offer TLS with yet; plaintext is allowed in PERMISSIVE
        handshake_timeout = self.listener.limits.header_timeout
        if mode == "PERMISSIVE":
            if deadline is None:
                deadline = self.loop.time() + handshake_timeout
            first_is_tls = await self._first_byte_is_tls(conn)
            if first_is_tls is None:
                conn.close()
                return
            use_tls = first_is_tls
        elif mode == "DISABLE":
            use_tls = False
        contexts = self.tls()
        if use_tls and contexts is None:
            # No workload certificate yet: refuse rather than fall back to plaintext.
            self.listener.stats.inc("ami_tls_handshake_failures",
                                    (("listener", self.listener.kind),))
            conn.close()
            return
        if use_tls and self.passthrough is not None:
            routes = self.passthrough()
            if routes is not None:
                from proxy.hellopeek import CLOSED, RELAY, peek_hello

                if deadline is None:
                    deadline = self.loop.time() + handshake_timeout
                verdict, named = await peek_hello(
                    conn, routes, self.listener, deadline, client)  # type: ignore[arg-type]
                if verdict == CLOSED:
                    conn.close()
                    return
                # relayed: in plaintext, the ClientHello still unread (proxy.tlspassthrough)
                use_tls = verdict != RELAY
                if use_tls:
                    secure = _hello_named(secure, named)
        if use_tls and deadline is not None:
            handshake_timeout = deadline - self.loop.time()
        try:
            if use_tls and handshake_timeout <= 0:
                raise TimeoutError("no time left for the handshake after the bytes read before it")
            # Plaintext: the listener counts the connection from connection_made on (its
            # admit() is the hard limit). TLS: the protocol is made before the handshake, so
            # the connection stays counted here until the handshake ended.
            await self.loop.connect_accepted_socket(
                secure if use_tls else pending.made(plain), conn,
                ssl=contexts.listener if use_tls and contexts else None,
                ssl_handshake_timeout=handshake_timeout if use_tls else None,
            )
        except (TimeoutError, OSError, ssl.SSLError) as exc:
            # A failed handshake (no cert, another CA, expired, plaintext in STRICT) ends here.
            self.listener.stats.inc("ami_tls_handshake_failures",
                                    (("listener", self.listener.kind),))
            log.debug("%s TLS handshake failed: %s", self.listener.kind, exc)
            conn.close()

    async def _first_byte_is_tls(self, conn: socket.socket) -> bool | None:
        """Whether the client's first byte starts a TLS handshake; None if it closed or sent
        nothing within the header timeout."""
        try:
            # Usually the first bytes came with the connection: no reader, future or timer.
            return _is_tls(conn.recv(1, socket.MSG_PEEK))
        except BlockingIOError:
            pass
        except OSError:
            return None
        try:
            return await asyncio.wait_for(self._wait_first_byte(conn),
                                          self.listener.limits.header_timeout)
        except (TimeoutError, OSError):
            return None

    async def _wait_first_byte(self, conn: socket.socket) -> bool:
        ready: asyncio.Future[None] = self.loop.create_future()
        fd = conn.fileno()
        def on_readable() -> None:
            if not ready.done():
                ready.set_result(None)

        self.loop.add_reader(fd, on_readable)
        try:
            await ready
        finally:
            self.loop.remove_reader(fd)
        return _is_tls(conn.recv(1, socket.MSG_PEEK))


class _Starting:
    """One connection counted in its acceptor's `starting` until its plaintext protocol is
    made: from then on the listener counts it (connection_made), which may happen before the
    accepting task resumes. Counted in both meanwhile, a burst of plaintext connections was
    refused below --max-connections."""

    __slots__ = ("acceptor",)

    def __init__(self, acceptor: TlsAcceptor) -> None:
        self.acceptor: TlsAcceptor | None = acceptor

    def made(self, factory: Callable[[], asyncio.BaseProtocol]
             ) -> Callable[[], asyncio.BaseProtocol]:
        def make() -> asyncio.BaseProtocol:
            self.done()
            return factory()
        return make

    def done(self) -> None:
        if self.acceptor is not None:
            self.acceptor.starting -= 1
            self.acceptor = None


def _is_tls(first: bytes) -> bool:
    if not first:
        raise OSError("closed before the first byte")
    return first[0] == _TLS_HANDSHAKE


def _hello_named(make: Callable[[], asyncio.BaseProtocol], name: str | None
                 ) -> Callable[[], asyncio.BaseProtocol]:
    """``make``, its protocol told the server name the ClientHello read before the handshake
    asked for (proxy.misdirected): the SNI callback's name is, on a resumed TLS 1.2 session,
    the first handshake's (OpenSSL's SSL_get_servername), not this one's."""
    def made() -> asyncio.BaseProtocol:
        p = make()
        p.server_name, p.hello_read = name, True  # type: ignore[attr-defined]
        return p
    return made


def _proxied(make: Callable[[], asyncio.BaseProtocol], peer: tuple[str, int]
             ) -> Callable[[], asyncio.BaseProtocol]:
    """``make``, its protocol told the client's address from the PROXY header, which it
    takes for its peer's (DownstreamProtocol.proxied)."""
    def made() -> asyncio.BaseProtocol:
        p = make()
        p.proxied = peer  # type: ignore[attr-defined]
        return p
    return made


class Protocols(TypedDict):
    """`plain` and `secure` of an acceptor."""

    plain: Callable[[], asyncio.BaseProtocol]
    secure: Callable[[], asyncio.BaseProtocol]


def downstream_protocols(listener: Listener) -> Protocols:
    """`plain` and `secure` for a data-plane listener's acceptor."""
    return {"plain": lambda: DownstreamProtocol(listener),
            "secure": lambda: TlsDownstreamProtocol(listener)}


def bind_socket(host: str, port: int) -> socket.socket:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((host, port))
    sock.listen(1024)
    sock.setblocking(False)
    return sock
