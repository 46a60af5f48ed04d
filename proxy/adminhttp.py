"""A small HTTP/1.1 server for the admin listener: a route table of plain async handlers.

The sidecar already parses HTTP with httptools, so the admin endpoints reuse it rather than load
a web framework into every sidecar (aiohttp alone is ~14 MB of RSS). One request per connection
(`connection: close`): the admin listener serves probes, scrapes and an occasional tap stream.
Privileged routes (those that act or reveal traffic) answer only the callers `AdminAccess`
allows (proxy/adminauth.py), as Istio's agent keeps /quitquitquit to localhost: the listener
may be bound to a container network so the control plane can scrape it. Given the proxy's TLS
contexts, the port takes mTLS too (the first byte decides, as PERMISSIVE inbound does).
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from http import HTTPStatus
from typing import TYPE_CHECKING, Any
from urllib.parse import parse_qsl, urlsplit

import httptools

from proxy.adminauth import AdminAccess
from proxy.listener import Limits
from proxy.metrics import RequestStats
from proxy.mtls import TlsAcceptor, bind_socket

if TYPE_CHECKING:
    from proxy.tls import TlsContexts

log = logging.getLogger("ami.proxy.admin")
_MAX_BODY = 1 << 20
# Admin connections open at once: probes, a scrape, a few taps. Past it a new one gets 503,
# so a client opening thousands cannot take the descriptors the data path needs.
MAX_ADMIN_CONNECTIONS = 256
_LINGER = 2.0  # seconds a refused client has to close after its answer
_BROWSER_HEADERS = frozenset({b"host", b"origin", b"sec-fetch-site"})


@dataclass(frozen=True, slots=True)
class Request:
    method: str
    path: str
    query: dict[str, str]
    body: bytes
    peer: str = ""  # the client's IP address
    authorization: str = ""  # the Authorization header, if any
    peer_id: str | None = None  # the client's SPIFFE id over mTLS; None in plaintext
    # Host, Origin and Sec-Fetch-Site (None: absent): a browser's page may not use loopback
    host: str | None = None
    origin: str | None = None
    fetch_site: str | None = None


@dataclass(slots=True)
class Response:
    status: int = 200
    body: bytes = b""
    content_type: str = "application/json"
    # A streaming response (server-sent events): chunks are written as they come.
    stream: AsyncIterator[bytes] | None = None
    headers: dict[str, str] = field(default_factory=dict)


def json_response(value: Any, status: int = 200, *, indent: int | None = None) -> Response:
    return Response(status, json.dumps(value, indent=indent, default=str).encode())


Handler = Callable[[Request], Awaitable[Response]]


class AdminServer:
    """Routes `(METHOD, path)` to handlers; `start()` binds, `cleanup()` stops.

    `tls()` gives the proxy's current TLS contexts (None until it has an identity): with it the
    port also takes mTLS, presenting the workload certificate and requiring a mesh one."""

    kind = "admin"  # for the acceptor's metrics (listener="admin")

    def __init__(self, routes: dict[tuple[str, str], Handler], *,
                 privileged: frozenset[tuple[str, str]] = frozenset(),
                 token: str = "", tls: Callable[[], TlsContexts | None] | None = None,
                 stats: RequestStats | None = None, limits: Limits | None = None,
                 known_hosts: tuple[str, ...] = ()) -> None:
        self.routes = routes
        self.privileged = privileged
        self.tls = tls
        self.access = AdminAccess(token, self._own_id, known_hosts)
        self.stats = stats or RequestStats()
        self.limits = limits or Limits()
        self.connections: set[_AdminProtocol] = set()
        self.server: asyncio.base_events.Server | TlsAcceptor | None = None
        self.tasks: set[asyncio.Task[None]] = set()

    @property
    def loop(self) -> asyncio.AbstractEventLoop:
        return asyncio.get_running_loop()

    def _own_id(self) -> str | None:
        contexts = self.tls() if self.tls is not None else None
        return contexts.identity.spiffe_id if contexts is not None else None

    async def start(self, host: str, port: int) -> None:
        if self.tls is None:
            self.server = await self.loop.create_server(lambda: _AdminProtocol(self), host,
                                                        port, reuse_address=True)
            return
        # TLS (0x16 first) or plaintext on one port; plaintext only while tls() is None.
        acceptor = TlsAcceptor(self, bind_socket(host, port), self.tls, lambda: "PERMISSIVE",
                               plain=lambda: _AdminProtocol(self),
                               secure=lambda: _AdminProtocol(self))
        acceptor.start()
        self.server = acceptor

    async def cleanup(self) -> None:
        if self.server is not None:
            self.server.close()
        for task in list(self.tasks):
            task.cancel()
        if self.tasks:
            await asyncio.gather(*self.tasks, return_exceptions=True)

    async def handle(self, request: Request) -> Response:
        if (request.method, request.path) in self.privileged:
            refusal = self.access.refusal(request.peer, request.authorization, request.peer_id,
                                          host=request.host, origin=request.origin,
                                          fetch_site=request.fetch_site)
            if refusal is not None:
                return json_response(
                    {"error": f"{request.method} {request.path} is privileged: {refusal}",
                     "reason": "not_authorized"}, 403)
        handler = self.routes.get((request.method, request.path))
        if handler is None:
            allowed = [m for (m, p) in self.routes if p == request.path]
            if allowed:
                return json_response({"error": f"use {' or '.join(allowed)}"}, 405)
            return json_response({"error": f"no admin endpoint {request.path}",
                                  "endpoints": sorted({p for _, p in self.routes})}, 404)
        try:
            return await handler(request)
        except Exception:
            log.exception("admin handler %s %s failed", request.method, request.path)
            return json_response({"error": "internal error (see the proxy log)"}, 500)


class _Refused:
    """Stands in for the response task of a refused connection: nothing more is served."""

    @staticmethod
    def cancel() -> None:
        pass


_REFUSED: Any = _Refused()


class _AdminProtocol(asyncio.Protocol):
    """One request per connection, under the listener's limits: its head within
    `header_timeout` (else 408) and `max_header_bytes` (else 431), its target within
    `max_request_line` (else 414), its body within 1 MiB, as the data listeners do."""

    def __init__(self, server: AdminServer) -> None:
        self.server = server
        self.parser = httptools.HttpRequestParser(self)
        self.transport: asyncio.Transport | None = None
        self.peer = ""
        self.peer_id: str | None = None
        self.url = b""
        self.authorization = b""
        self.browser: dict[bytes, str] = {}  # host, origin, sec-fetch-site
        self.head_bytes = 0
        self.body = bytearray()
        self.task: asyncio.Task[None] | None = None
        self.timer: asyncio.TimerHandle | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        if len(self.server.connections) >= MAX_ADMIN_CONNECTIONS:
            self._refuse(json_response({"error": f"{MAX_ADMIN_CONNECTIONS} admin connections "
                                                 "are open; retry shortly",
                                        "reason": "too_many_connections"}, 503))
            return
        self.timer = asyncio.get_running_loop().call_later(
            self.server.limits.header_timeout, self._too_slow)
        peername = transport.get_extra_info("peername")
        self.peer = str(peername[0]) if peername else ""
        ssl_object = transport.get_extra_info("ssl_object")
        if ssl_object is not None:
            from proxy.identity import IdentityError  # loads cryptography: only with mTLS
            from proxy.tls import verify_peer

            try:
                self.peer_id = verify_peer(ssl_object, None)
            except IdentityError as exc:
                # Chain-valid but not a workload identity: refused as the inbound does.
                log.debug("admin mTLS peer refused: %s", exc)
                self.server.stats.inc("ami_tls_handshake_failures", (("listener", "admin"),))
                transport.close()
                return
        self.server.connections.add(self)

    def data_received(self, data: bytes) -> None:
        if self.task is not None or self.transport is None or self.transport.is_closing():
            return  # one request per connection; anything after it is ignored
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserError:
            self._refuse(json_response({"error": "malformed request"}, 400))

    def eof_received(self) -> bool | None:
        return False  # the client is done sending: close (after any answer being written)

    def _refuse(self, response: Response) -> None:
        """Answer an unwanted request, then stop reading it: half-close and let the client
        close (bounded), so the unread rest of its request does not turn the close into a
        reset that would lose the answer."""
        transport = self.transport
        if transport is None or transport.is_closing() or self.task is not None:
            return
        self.task = _REFUSED  # nothing more is parsed or answered
        self._write_head(response)
        transport.write(response.body)
        if not transport.can_write_eof():
            transport.close()
            return
        transport.write_eof()
        asyncio.get_running_loop().call_later(_LINGER, transport.close)

    def connection_lost(self, exc: Exception | None) -> None:
        self.server.connections.discard(self)
        if self.timer is not None:
            self.timer.cancel()
        if self.task is not None:
            self.task.cancel()  # ends a streaming response whose client went away

    def _too_slow(self) -> None:
        self.timer = None
        self._refuse(json_response({"error": "request head not received in time",
                                    "reason": "request_timeout"}, 408))

    def on_url(self, url: bytes) -> None:
        self.url += url
        if len(self.url) > self.server.limits.max_request_line:
            self._refuse(json_response({"error": "request target too long"}, 414))
            raise httptools.HttpParserCallbackError("request target too long")

    def on_header(self, name: bytes, value: bytes) -> None:
        self.head_bytes += len(name) + len(value)
        if self.head_bytes > self.server.limits.max_header_bytes:
            self._refuse(json_response({"error": "request header section too large"}, 431))
            raise httptools.HttpParserCallbackError("header section too large")
        lower = name.lower()
        if lower == b"authorization":
            self.authorization = value
        elif lower in _BROWSER_HEADERS:
            self.browser[lower] = value.decode("latin-1")

    def on_body(self, body: bytes) -> None:
        self.body += body
        if len(self.body) > _MAX_BODY:
            self._refuse(json_response({"error": "request body over 1 MiB"}, 413))
            raise httptools.HttpParserCallbackError("request body too large")

    def on_message_complete(self) -> None:
        if self.timer is not None:
            self.timer.cancel()
            self.timer = None
        target = urlsplit(self.url.decode("latin-1"))
        request = Request(self.parser.get_method().decode("latin-1"), target.path,
                          dict(parse_qsl(target.query)), bytes(self.body), self.peer,
                          self.authorization.decode("latin-1"), self.peer_id,
                          self.browser.get(b"host"), self.browser.get(b"origin"),
                          self.browser.get(b"sec-fetch-site"))
        self.task = asyncio.get_running_loop().create_task(self._respond(request))
        self.server.tasks.add(self.task)
        self.task.add_done_callback(self.server.tasks.discard)

    async def _respond(self, request: Request) -> None:
        response = await self.server.handle(request)
        if response.stream is None:
            self._write(response)
            return
        self._write_head(response, streaming=True)
        try:
            async for chunk in response.stream:
                if self.transport is None or self.transport.is_closing():
                    break
                self.transport.write(chunk)
        finally:
            if self.transport is not None:
                self.transport.close()

    def _write_head(self, response: Response, *, streaming: bool = False) -> None:
        assert self.transport is not None
        phrase = HTTPStatus(response.status).phrase
        lines = [f"HTTP/1.1 {response.status} {phrase}", f"content-type: {response.content_type}",
                 "connection: close"]
        if not streaming:
            lines.append(f"content-length: {len(response.body)}")
        lines += [f"{k}: {v}" for k, v in response.headers.items()]
        self.transport.write(("\r\n".join(lines) + "\r\n\r\n").encode("latin-1"))

    def _write(self, response: Response) -> None:
        if self.transport is None or self.transport.is_closing():
            return
        self._write_head(response)
        self.transport.write(response.body)
        self.transport.close()
