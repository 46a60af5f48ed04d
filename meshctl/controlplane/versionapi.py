"""``GET /api/v1/version``: the control plane's version, and how many proxies run each version.

The body (``meshctl version`` prints it)::

    {"version": "0.1.0", "build": "cpython 3.11.7",
     "dataPlane": [{"version": "0.1.0", "proxies": 6}, {"version": "unknown", "proxies": 1}]}

``dataPlane`` counts connected proxies only: one listed as disconnected (its grace, or the
``--warmup`` after a restart, where its entry may come from an older control plane's state
file) says nothing about what runs now. Most proxies first, then by version.
"""

from __future__ import annotations

from collections import Counter
from typing import Any

from aiohttp import web

from meshctl.api.build import BUILD, VERSION
from meshctl.controlplane.registry import Registry


def data_plane_versions(registry: Registry) -> dict[str, int]:
    """Connected proxies per Ami version ("unknown" for those that did not say)."""
    counts = Counter(p.ami_version for p in registry.proxies() if registry.connected(p.name))
    return dict(sorted(counts.items(), key=lambda item: (-item[1], item[0])))


def version_json(registry: Registry) -> dict[str, Any]:
    return {"version": VERSION, "build": BUILD, "dataPlane": [
        {"version": version, "proxies": count}
        for version, count in data_plane_versions(registry).items()]}


def version_routes(registry: Registry) -> list[web.RouteDef]:
    """The route to mount on the API app (it shares its auth: reads open on loopback)."""

    async def version(_: web.Request) -> web.Response:
        return web.json_response(version_json(registry))

    return [web.get("/api/v1/version", version)]
