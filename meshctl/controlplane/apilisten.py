"""The HTTP API's listening socket, with the connection cap aiohttp lacks.

aiohttp accepts every connection it is offered; a client opening thousands (or a crowd of
dashboards holding SSE streams) would take the descriptors the sidecars' gRPC streams and the
metrics scraper need. Past ``max_connections`` a new connection gets a JSON 503 and is closed,
the way a sidecar listener answers `too_many_connections`; meshctl and Prometheus retry.
"""

from __future__ import annotations

import asyncio
import json
import ssl as ssl_module

from aiohttp import web

MAX_CONNECTIONS = 1024
LINGER = 2.0  # seconds to read and drop a refused client's request before closing


class _Refusal(asyncio.Protocol):
    """Answers 503 at once, then reads until the client closes or LINGER passes (no RST)."""

    def __init__(self, limit: int) -> None:
        body = json.dumps({"error": f"the control plane has {limit} API connections open; "
                                    "retry shortly", "reason": "too_many_connections"}).encode()
        self.response = (b"HTTP/1.1 503 Service Unavailable\r\nContent-Type: application/json"
                         b"\r\nConnection: close\r\nRetry-After: 1\r\nContent-Length: "
                         + str(len(body)).encode() + b"\r\n\r\n" + body)

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        transport.write(self.response)
        if transport.can_write_eof():
            transport.write_eof()
        asyncio.get_running_loop().call_later(LINGER, transport.close)

    def data_received(self, data: bytes) -> None:
        pass  # the request is not read: the answer is the same for all

    def eof_received(self) -> bool:
        return False  # the client is done: close now


async def listen_api(server: web.Server, host: str, port: int,
                     max_connections: int = MAX_CONNECTIONS, *,
                     ssl: ssl_module.SSLContext | None = None) -> asyncio.Server:
    """Serve ``server`` (an AppRunner's) on host:port, refusing connections past the cap;
    over TLS with ``ssl``."""

    def protocol() -> asyncio.BaseProtocol:
        if len(server.connections) >= max_connections:
            return _Refusal(max_connections)
        return server()

    return await asyncio.get_running_loop().create_server(protocol, host, port,
                                                          reuse_address=True, ssl=ssl)
