"""Proxy status over HTTP: ``GET /api/v1/proxies`` (who runs what) and ``GET /api/v1/sync``.

``/api/v1/sync?storeVersion=N&timeout=S`` returns once every connected proxy has ACKed a
snapshot computed from store revision N or later (200), or after S seconds (504, naming the
proxies that lag). It waits on ACK events, it does not poll.
"""

from __future__ import annotations

import time
from datetime import UTC, datetime
from typing import Any

from aiohttp import web

from meshctl.api.durations import parse_seconds
from meshctl.controlplane.reconcile import PushState, Reconciler
from meshctl.controlplane.registry import ProxyInfo, Registry


def _rfc3339(ts: float | None) -> str | None:
    if ts is None:
        return None
    return datetime.fromtimestamp(ts, UTC).isoformat(timespec="milliseconds").replace(
        "+00:00", "Z")


def proxy_json(info: ProxyInfo, state: PushState | None, connected: bool,
               pending: bool = False) -> dict[str, Any]:
    """One proxy as ``meshctl proxy-status -o json`` prints it; ``pending``: a change is yet
    to be computed into its snapshot, so it is not synced even if it ACKed the last one."""
    state = state or PushState()
    return {
        "name": info.name, "service": info.service, "namespace": info.namespace,
        "version": info.version, "labels": dict(info.labels), "mode": info.mode,
        # a gateway whose x-forwarded-client-cert sidecars keep (it registered with a gateway
        # token); null for a sidecar
        "trustedGateway": info.trusted_gateway if info.mode == "gateway" else None,
        # a gateway whose certificate carries the gateway marker, which sidecars want before
        # they keep its XFCC (false: none yet, or a proxy from before it); null for a sidecar
        "gatewayCertificate": info.gateway_cert if info.mode == "gateway" else None,
        # null, not "", for an address a proxy does not have (a gateway has no inbound)
        "inbound": info.inbound or None, "outbound": info.outbound or None,
        "admin": info.admin or None,
        "configVersion": state.acked_version, "sentVersion": state.sent_version,
        "synced": state.synced and not pending, "nack": state.nack,
        "lastAck": _rfc3339(state.last_ack),
        "connected": connected, "ready": info.ready, "certExpiry": info.cert_expiry or None,
        "certIssued": info.cert_issued or None,
        "app": info.app_health or None,
        "appProtocol": info.app_protocol or None,
        "appPort": info.app_port or None,  # its app's port (portLevelMtls names it)
        "locality": info.locality or None,
        # the Ami version it runs ("unknown": a proxy built before it reported one); not
        # "version", which is the workload's version label
        "proxyVersion": info.ami_version, "proxyBuild": info.build or None,
    }


def proxies_json(registry: Registry, reconciler: Reconciler) -> dict[str, Any]:
    """The body of ``GET /api/v1/proxies``."""
    return {"storeVersion": reconciler.revision, "proxies": [
        proxy_json(info, reconciler.states.get(info.name), registry.connected(info.name),
                   reconciler.pending(info.name))
        for info in registry.proxies()]}


def status_routes(registry: Registry, reconciler: Reconciler) -> list[web.RouteDef]:
    """The routes to mount on the API app (they share its auth: reads open on loopback)."""

    async def proxies(request: web.Request) -> web.Response:
        return web.json_response(proxies_json(registry, reconciler))

    async def sync(request: web.Request) -> web.Response:
        try:
            revision = int(request.query.get("storeVersion", reconciler.revision))
            # nan slips through min/max, inf means nothing, a negative wait is a mistake
            timeout = parse_seconds(request.query.get("timeout", "30"), zero=True)
        except ValueError:
            return web.json_response({"error": "storeVersion must be an integer and timeout "
                                      "a number of seconds (0 or more)",
                                      "reason": "BadRequest"}, status=400)
        start = time.monotonic()
        lagging = await reconciler.wait_synced(revision, min(timeout, 300.0))
        elapsed = round((time.monotonic() - start) * 1000, 1)
        connected = sum(1 for s in reconciler.states.values() if s.sender is not None)
        if lagging:
            return web.json_response({
                "synced": False, "elapsed_ms": elapsed, "reason": "Timeout",
                "error": f"{len(lagging)} proxies have not ACKed store version {revision}",
                "lagging": [proxy_json(info, reconciler.states.get(n), True) for n in lagging
                            if (info := registry.get(n)) is not None]}, status=504)
        body: dict[str, Any] = {"synced": True, "proxies": connected, "elapsed_ms": elapsed}
        converged = reconciler.converged_seconds(revision)
        if converged is not None:  # a write this control plane saw: from it to the last ACK
            body["converged_ms"] = round(converged * 1000, 1)
        phases = reconciler.timeline.phases_ms(revision)
        if phases is not None:  # where that time went (meshctl.controlplane.timeline)
            body["phases_ms"] = phases
        return web.json_response(body)

    return [web.get("/api/v1/proxies", proxies), web.get("/api/v1/sync", sync)]
