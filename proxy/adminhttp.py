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


@dataclass(frozen=True, slots=True)
class Request:
    method: str
    path: str
    query: dict[str, str]
    body: bytes
    peer: str = ""  # the client's IP address
    authorization: str = ""  # the Authorization header, if any
    peer_id: str | None = None  # the client's SPIFFE id over mTLS; None in plaintext


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
                 stats: RequestStats | None = None, limits: Limits | None = None) -> None:
        self.routes = routes
        self.privileged = privileged
        self.tls = tls
        self.access = AdminAccess(token, self._own_id)
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
            refusal = self.access.refusal(request.peer, request.authorization, request.peer_id)
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


class _AdminProtocol(asyncio.Protocol):
    def __init__(self, server: AdminServer) -> None:
        self.server = server
        self.parser = httptools.HttpRequestParser(self)
        self.transport: asyncio.Transport | None = None
        self.peer = ""
        self.peer_id: str | None = None
        self.url = b""
        self.authorization = b""
        self.body = bytearray()
        self.task: asyncio.Task[None] | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
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
        if self.task is not None:
            return  # one request per connection; anything after it is ignored
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserError:
            self._write(json_response({"error": "malformed request"}, 400))

    def connection_lost(self, exc: Exception | None) -> None:
        self.server.connections.discard(self)
        if self.task is not None:
            self.task.cancel()  # ends a streaming response whose client went away

    def on_url(self, url: bytes) -> None:
        self.url += url

    def on_header(self, name: bytes, value: bytes) -> None:
        if name.lower() == b"authorization":
            self.authorization = value

    def on_body(self, body: bytes) -> None:
        self.body += body
        if len(self.body) > _MAX_BODY and self.transport is not None:
            self.transport.close()

    def on_message_complete(self) -> None:
        target = urlsplit(self.url.decode("latin-1"))
        request = Request(self.parser.get_method().decode("latin-1"), target.path,
                          dict(parse_qsl(target.query)), bytes(self.body), self.peer,
                          self.authorization.decode("latin-1"), self.peer_id)
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
