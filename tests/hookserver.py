"""A webhook receiver for Canary tests: a real aiohttp server on loopback that records each
call's JSON body and answers as told (a status, or "hang": never answers)."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from aiohttp import web

from tests.ports import free_port

HANG = "hang"


class HookServer:
    """``answers[name]``: how POST /<name> answers (200 when unset); ``calls``: (name, body)
    in arrival order; ``in_flight``: calls being answered now (a hanging one stays)."""

    def __init__(self) -> None:
        self.port = free_port()
        self.answers: dict[str, int | str] = {}
        self.calls: list[tuple[str, dict[str, Any]]] = []
        self.in_flight = 0
        self._runner: web.AppRunner | None = None

    def url(self, name: str) -> str:
        return f"http://127.0.0.1:{self.port}/{name}"

    def bodies(self, name: str) -> list[dict[str, Any]]:
        return [body for n, body in list(self.calls) if n == name]

    async def _handle(self, request: web.Request) -> web.Response:
        name = request.match_info["name"]
        self.calls.append((name, await request.json()))
        answer = self.answers.get(name, 200)
        self.in_flight += 1
        try:
            if answer == HANG:
                await asyncio.Event().wait()  # never set: the caller's timeout ends it
            return web.Response(status=int(answer), text="ok\n")
        finally:
            self.in_flight -= 1

    async def start(self) -> HookServer:
        app = web.Application()
        app.router.add_post("/{name}", self._handle)
        self._runner = web.AppRunner(app, handle_signals=False, shutdown_timeout=0.1)
        await self._runner.setup()
        await web.TCPSite(self._runner, "127.0.0.1", self.port).start()
        return self

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()


@contextmanager
def hook_server_thread() -> Iterator[HookServer]:
    """A HookServer on its own event loop in a thread (for tests driving child processes)."""
    loop = asyncio.new_event_loop()
    server = HookServer()
    ready = threading.Event()

    def serve() -> None:
        asyncio.set_event_loop(loop)
        loop.run_until_complete(server.start())
        ready.set()
        loop.run_forever()
        loop.run_until_complete(server.stop())
        loop.close()

    thread = threading.Thread(target=serve, name="hook-server", daemon=True)
    thread.start()
    assert ready.wait(10), "the hook server did not start"
    try:
        yield server
    finally:
        loop.call_soon_threadsafe(loop.stop)
        thread.join(10)
