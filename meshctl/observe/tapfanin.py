"""Merge the ``/tap`` streams of many sidecars into one stream (for ``meshctl tap`` and top)."""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import AsyncIterator
from typing import Any
from urllib.parse import urlencode

import aiohttp

from meshctl.observe.admincall import AdminCall, AdminCaller
from meshctl.observe.golden import SOURCE_ONLY_FLAGS, is_success

TAP_SETUP_TIMEOUT = 5.0  # seconds to wait for every sidecar to start tapping


async def _follow(session: aiohttp.ClientSession, proxy: dict[str, Any], admin: AdminCall,
                  query: str, out: asyncio.Queue[dict[str, Any]],
                  connected: asyncio.Queue[str]) -> None:
    # /tap is privileged on a sidecar's admin listener: mTLS as the control plane with the
    # token it registered, or loopback (admincall.py).
    try:
        if admin.refusal:
            raise ValueError(admin.refusal)
        async with session.get(admin.url(f"/tap?{query}"), headers=admin.headers,
                               ssl=admin.context) as resp:
            if resp.status != 200:
                raise aiohttp.ClientResponseError(resp.request_info, (), status=resp.status)
            await connected.put(str(proxy["name"]))
            async for line in resp.content:
                if line.startswith(b"data: "):
                    event = json.loads(line[6:])
                    event["proxy"] = proxy["name"]
                    await out.put(event)
    except (aiohttp.ClientError, TimeoutError, ValueError):
        await connected.put("")  # count it as settled so callers do not wait for it


@contextlib.asynccontextmanager
async def tap_many(proxies: list[dict[str, Any]], *, service: str = "", path: str = "",
                   method: str = "", admin: AdminCaller | None = None,
                   ) -> AsyncIterator[asyncio.Queue[dict[str, Any]]]:
    """Tap every proxy with an admin address; yields a queue of events once all are tapping.

    ``admin`` says how to reach each (default: plaintext, no token: proxies on this host)."""
    admin = admin or AdminCaller()
    query = urlencode({k: v for k, v in (("service", service), ("path", path),
                                         ("method", method)) if v})
    out: asyncio.Queue[dict[str, Any]] = asyncio.Queue(10_000)
    connected: asyncio.Queue[str] = asyncio.Queue()
    targets = [p for p in proxies if p.get("admin")]
    timeout = aiohttp.ClientTimeout(total=None, sock_connect=2.0)
    async with aiohttp.ClientSession(timeout=timeout) as session:
        tasks = [asyncio.create_task(_follow(session, p, admin.call(p), query, out, connected))
                 for p in targets]
        try:
            # Every proxy has its hook installed (or failed) before we yield - but a sidecar
            # that accepts and never answers (hung, stopped) must not take the others down:
            # past the deadline, go on with those tapping (a late one still joins).
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(TAP_SETUP_TIMEOUT):
                    for _ in targets:
                        await connected.get()
            yield out
        finally:
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)


def once_each(events: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Each request once: a request between two sidecars is tapped twice, by the caller's
    outbound (``reporter`` source) and the callee's inbound (destination). As for ``stat``,
    the inbound events of a destination (service and version) win, plus the caller's replies
    that never reached it (``SOURCE_ONLY_FLAGS``); callees without a tapped sidecar keep the
    caller's events."""
    inbound = {(e["destination"], e.get("destination_version")) for e in events
               if e.get("reporter") == "destination"}
    return [e for e in events
            if (e.get("reporter") == "destination")
            == ((e["destination"], e.get("destination_version")) in inbound)
            or (e.get("reporter") == "source" and e.get("reason") in SOURCE_ONLY_FLAGS)]


def top_rows(events: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Busiest (method, path) first: count, successes, best/worst/mean latency; each request
    counted once (see ``once_each``). TCP connections, which have no path, are left out."""
    groups: dict[tuple[str, str, str], list[dict[str, Any]]] = {}
    for e in once_each([e for e in events if e.get("protocol") != "TCP"]):
        groups.setdefault((e["destination"], e["method"], e["path"]), []).append(e)
    rows: list[dict[str, Any]] = []
    for (dest, method, path), items in groups.items():
        latencies = [float(e["duration_ms"]) for e in items]
        ok = sum(1 for e in items
                 if is_success(str(e["status"]), e.get("grpc_status") or ""))
        rows.append({"destination": dest, "method": method, "path": path,
                     "count": len(items), "successRate": ok / len(items),
                     "best": min(latencies), "worst": max(latencies),
                     "mean": sum(latencies) / len(latencies)})
    rows.sort(key=lambda r: (-r["count"], r["path"]))
    return rows
