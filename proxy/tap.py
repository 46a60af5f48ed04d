"""``GET /tap`` on the admin listener: finished requests and TCP connections as server-sent
events, while tapped.

The ``Listener.on_record`` hook (and ``RequestStats.tcp_tap``, for TCP connections as they
end) is installed only while at least one client is tapping, so an untapped proxy pays one
``is None`` check per request or connection.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from proxy.adminhttp import Handler, Request, Response
from proxy.listener import outbound_security

if TYPE_CHECKING:
    from proxy.exchange import Exchange
    from proxy.listener import Listener
    from proxy.server import ProxyServer
    from proxy.tcprelay import TcpSession

QUEUE_SIZE = 1000  # events a slow tap client may lag behind before events are dropped


@dataclass(frozen=True, slots=True)
class TapFilter:
    """Which requests a tap client wants; empty fields match everything."""

    service: str = ""  # matches the destination service or the source workload
    path: str = ""  # path prefix
    method: str = ""

    def matches(self, event: dict[str, Any]) -> bool:
        if self.service and self.service not in (event["destination"], event["source"]):
            return False
        if event["path"] is None:  # a TCP connection: no path or method to match
            return not (self.path or self.method)
        if self.path and not str(event["path"]).startswith(self.path):
            return False
        return not self.method or event["method"] == self.method.upper()


class TapHub:
    """Fans finished requests out to the tap clients of one proxy."""

    def __init__(self, server: ProxyServer) -> None:
        self.server = server
        self.clients: dict[asyncio.Queue[dict[str, Any]], TapFilter] = {}
        self.dropped = 0

    def subscribe(self, tap_filter: TapFilter) -> asyncio.Queue[dict[str, Any]]:
        queue: asyncio.Queue[dict[str, Any]] = asyncio.Queue(QUEUE_SIZE)
        self.clients[queue] = tap_filter
        self._install(self.on_record)
        return queue

    def unsubscribe(self, queue: asyncio.Queue[dict[str, Any]]) -> None:
        self.clients.pop(queue, None)
        if not self.clients:
            self._install(None)

    def _install(self, hook: Any) -> None:
        for listener in self.server.listeners.values():
            listener.on_record = hook
        self.server.stats.tcp_tap = None if hook is None else self.on_tcp

    def on_record(self, listener: Listener, ex: Exchange, duration_ms: float,
                  prefix: tuple[str, ...]) -> None:
        event = {
            "time": time.time(), "listener": listener.kind,
            "reporter": prefix[0], "method": ex.method.decode("latin-1"), "path": ex.path,
            "authority": ex.authority, "status": ex.status, "reason": ex.flags,
            "duration_ms": round(duration_ms, 3), "source": prefix[1],
            "source_version": prefix[2], "destination": prefix[3],
            "destination_workload": prefix[4],
            "destination_version": ex.pool.version if ex.pool is not None else "unknown",
            "tls": ex.downstream.security if listener.kind == "inbound"
            else outbound_security(ex),
            "protocol": ex.protocol,
            "grpc_status": ex.grpc_status if ex.http2 else None,  # type: ignore[attr-defined]
        }
        self._publish(event)

    def on_tcp(self, session: TcpSession) -> None:
        """One TCP connection that ended, in the shape of a request's event (method, path and
        status null) with the bytes each way, as its access-log line."""
        labels = session.labels or ("source" if session.client else "destination",
                                    *("unknown",) * 6)
        self._publish({
            "time": time.time(), "listener": session.listener, "reporter": labels[0],
            "method": None, "path": None, "authority": session.authority, "status": None,
            "reason": session.flags,
            "duration_ms": round((time.monotonic() - session.start) * 1000, 3),
            "source": labels[1], "source_version": labels[2], "destination": labels[3],
            "destination_workload": labels[4], "destination_version": labels[5],
            "tls": labels[6], "protocol": "TCP", "grpc_status": None,
            "bytes_received": session.request_bytes, "bytes_sent": session.response_bytes,
        })

    def _publish(self, event: dict[str, Any]) -> None:
        for queue, tap_filter in self.clients.items():
            if tap_filter.matches(event):
                try:
                    queue.put_nowait(event)
                except asyncio.QueueFull:
                    self.dropped += 1


def tap_handler(hub: TapHub) -> Handler:
    """The admin handler: ``?service=&path=&method=&n=``; SSE ``data:`` lines of JSON."""

    async def tap(request: Request) -> Response:
        q = request.query
        tap_filter = TapFilter(q.get("service", ""), q.get("path", ""), q.get("method", ""))
        limit = int(q["n"]) if q.get("n", "").isdigit() else 0

        async def events() -> AsyncIterator[bytes]:
            queue = hub.subscribe(tap_filter)
            try:
                yield b": tapping\n\n"  # tells the client the hook is installed
                sent = 0
                while not limit or sent < limit:
                    event = await queue.get()
                    yield b"data: " + json.dumps(event).encode() + b"\n\n"
                    sent += 1
            finally:
                hub.unsubscribe(queue)

        return Response(content_type="text/event-stream", stream=events(),
                        headers={"cache-control": "no-cache"})

    return tap
