"""Closes API connections that never deliver a request head (aiohttp has no header timeout).

aiohttp holds a connection that sends nothing, or half a request head, for as long as the
client likes, so a few hundred such sockets (slowloris) would pin the control plane's file
descriptors. Once a second this closes every connection that has not completed a request head
within ``timeout`` seconds of being first seen; the sidecar's own listeners do the same with
their header timeout. Connections that finished a head (including long SSE streams) are left
alone: aiohttp's keep-alive timeout covers them between requests.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable

from aiohttp import web

log = logging.getLogger(__name__)
HEADER_TIMEOUT = 10.0


class SlowClientReaper:
    """Sweeps ``server``'s connections; ``run()`` until cancelled."""

    def __init__(self, server: web.Server, timeout: float = HEADER_TIMEOUT,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.server = server
        self.timeout = timeout
        self.clock = clock
        self.closed = 0
        self._first_seen: dict[int, float] = {}  # id(handler) -> when it was first swept

    def sweep(self) -> None:
        now = self.clock()
        seen: dict[int, float] = {}
        for handler in self.server.connections:
            # _request_count counts request heads parsed on this connection (aiohttp 3.9+).
            if getattr(handler, "_request_count", 1):
                continue
            first = seen[id(handler)] = self._first_seen.get(id(handler), now)
            if now - first >= self.timeout:
                handler.force_close()
                self.closed += 1
                del seen[id(handler)]
        self._first_seen = seen  # forget connections that went away or sent a head

    async def run(self, interval: float = 1.0) -> None:
        while True:
            await asyncio.sleep(interval)
            try:
                self.sweep()
            except Exception:  # a sweep must never end the control plane
                log.exception("slow-client sweep failed")
