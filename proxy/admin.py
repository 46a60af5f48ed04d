"""The admin listener (aiohttp, loopback by default): metrics, health, readiness, config dump."""

from __future__ import annotations

import asyncio
import dataclasses
import json
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from proxy.metrics import IdentityCollector, build_registry
from proxy.tap import TapHub, tap_handler

if TYPE_CHECKING:
    from proxy.server import ProxyServer

SERVER_KEY: web.AppKey[ProxyServer] = web.AppKey("server")


def create_admin_app(server: ProxyServer) -> web.Application:
    app = web.Application()
    app[SERVER_KEY] = server
    registry = build_registry(server.stats, [IdentityCollector(server),
                                             *server.extra_collectors])

    async def metrics(_: web.Request) -> web.Response:
        body = generate_latest(registry)
        return web.Response(body=body, headers={"Content-Type": CONTENT_TYPE_LATEST})

    async def healthz(_: web.Request) -> web.Response:
        return web.json_response({"status": "alive"})

    async def ready(_: web.Request) -> web.Response:
        checks = {
            "listeners_bound": server.listeners_bound,
            "config_applied": server.config_applied.is_set(),
            "certificate_loaded": server.identity_ready,
            "draining": server.draining,
        }
        return web.json_response(checks, status=200 if server.ready else 503)

    async def config_dump(_: web.Request) -> web.Response:
        snap = server.snapshot
        body = {"version": snap.version if snap else None,
                "snapshot": _jsonable(dataclasses.asdict(snap)) if snap else None,
                "listeners": {k: str(server.bound_address(k)) for k in server.listeners}}
        return web.json_response(body, dumps=lambda o: json.dumps(o, indent=2, default=str))

    async def stats(_: web.Request) -> web.Response:
        body: dict[str, Any] = dict(server.stats.totals())
        body["upstream_pools"] = [
            {"address": str(p.address), "version": p.version, "connections": p.connections,
             "idle": len(p.idle), "active_requests": p.active_requests}
            for p in server.pools
        ]
        body["config_version"] = server.snapshot.version if server.snapshot else None
        body["access_log"] = server.access_log_enabled
        return web.json_response(body)

    async def shutdown(_: web.Request) -> web.Response:
        asyncio.get_running_loop().create_task(server.shutdown())
        return web.json_response({"status": "draining"}, status=202)

    async def access_log(request: web.Request) -> web.Response:
        value = request.query.get("enabled", "")
        if value not in ("true", "false"):
            return web.json_response({"error": "use ?enabled=true or ?enabled=false"}, status=400)
        server.set_access_log(value == "true")
        return web.json_response({"access_log": server.access_log_enabled})

    app.router.add_get("/metrics", metrics)
    app.router.add_get("/healthz", healthz)
    app.router.add_get("/ready", ready)
    app.router.add_get("/config_dump", config_dump)
    app.router.add_get("/stats", stats)
    app.router.add_post("/shutdown", shutdown)
    app.router.add_post("/logging/access", access_log)
    app.router.add_get("/tap", tap_handler(TapHub(server)))
    return app


def _jsonable(value: Any) -> Any:
    if isinstance(value, Mapping):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_jsonable(v) for v in value]
    if hasattr(value, "pattern"):
        return value.pattern
    return value


async def start_admin(server: ProxyServer, host: str, port: int) -> web.AppRunner:
    runner = web.AppRunner(create_admin_app(server), access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, host, port, reuse_address=True)
    await site.start()
    return runner
