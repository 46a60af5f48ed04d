"""Poll every registered proxy's admin ``/metrics`` on an interval into a ``ScrapeWindow``.

Why scraping: the admin endpoint already exists on every sidecar (Prometheus scrapes the same
one), so the config stream stays config-only and the control plane needs no new protocol.
A sidecar with a certificate is scraped over mTLS (admincall.py): the numbers come from it.
"""

from __future__ import annotations

import asyncio
import inspect
import logging
import time
from collections.abc import Callable
from typing import Any

import aiohttp

from meshctl.observe.admincall import AdminCaller
from meshctl.observe.samples import parse_scrape
from meshctl.observe.window import ScrapeWindow

log = logging.getLogger("ami.observe")
# Returns the body of GET /api/v1/proxies ({"proxies": [...]}); sync or async.
ProxySource = Callable[[], Any]


async def list_proxies(source: ProxySource) -> list[dict[str, Any]]:
    """The proxies the source knows, whether it is a plain or an async callable."""
    body = source()
    if inspect.isawaitable(body):
        body = await body
    return list(body.get("proxies", []))


MAX_EXPOSITION = 8 << 20  # bytes read from one /metrics answer


class Scraper:
    """Scrapes each proxy with an ``admin`` address every ``interval`` seconds."""

    def __init__(self, source: ProxySource, *, interval: float = 2.0, keep: float = 600.0,
                 clock: Callable[[], float] = time.time, timeout: float = 1.5,
                 admin: AdminCaller | None = None) -> None:
        self.source = source
        self.admin = admin or AdminCaller()
        self.interval = interval
        self.clock = clock
        self.timeout = timeout
        self.window = ScrapeWindow(keep)
        self.proxies: list[dict[str, Any]] = []
        self.errors: dict[str, str] = {}  # proxy name -> last scrape error
        self.scrapes = 0

    async def scrape_once(self, session: aiohttp.ClientSession) -> None:
        self.proxies = await list_proxies(self.source)
        targets = [p for p in self.proxies if p.get("admin")]
        await asyncio.gather(*(self._scrape(session, p) for p in targets))
        self.window.forget({str(p["name"]) for p in self.proxies})
        self.scrapes += 1

    async def _scrape(self, session: aiohttp.ClientSession, proxy: dict[str, Any]) -> None:
        name = str(proxy["name"])
        try:
            call = self.admin.call(proxy)
            async with session.get(call.url("/metrics"), ssl=call.context) as resp:
                # A sidecar's exposition is tens of KB; a peer sending more is not one.
                body = bytearray()
                async for chunk in resp.content.iter_chunked(1 << 16):
                    body += chunk
                    if len(body) > MAX_EXPOSITION:
                        raise ValueError(f"/metrics larger than {MAX_EXPOSITION} bytes")
                text = body.decode("utf-8", "replace")
            self.window.add(name, parse_scrape(text, self.clock()))
            self.errors.pop(name, None)
        except (aiohttp.ClientError, TimeoutError, ValueError) as exc:
            self.errors[name] = str(exc) or type(exc).__name__

    async def run(self) -> None:
        """Scrape forever (cancel to stop)."""
        timeout = aiohttp.ClientTimeout(total=self.timeout)
        async with aiohttp.ClientSession(timeout=timeout) as session:
            while True:
                started = time.monotonic()
                try:
                    await self.scrape_once(session)
                except Exception:  # a failing source must not end the loop
                    log.exception("scrape pass failed")
                await asyncio.sleep(max(0.0, self.interval - (time.monotonic() - started)))
