"""The admin listener (loopback by default): metrics, health, readiness, config dump, tap.

Everything is readable from anywhere the listener is reachable except PRIVILEGED, which answers
a loopback peer and the control plane (over mTLS once the sidecar has a certificate, with the
admin token it registered): proxy/adminauth.py.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from proxy.adminhttp import AdminServer, Handler, Request, Response, json_response
from proxy.config import ListenError
from proxy.healthview import health_view
from proxy.listenerview import listener_view
from proxy.localityview import locality_view
from proxy.loglevels import LEVELS, LevelError, LogLevels
from proxy.metrics import IdentityCollector, build_registry
from proxy.panicview import panic_view
from proxy.tap import TapHub, tap_handler

if TYPE_CHECKING:
    from proxy.server import ProxyServer

log = logging.getLogger("ami.proxy.admin")


def admin_routes(server: ProxyServer) -> dict[tuple[str, str], Handler]:
    registry = build_registry(server.stats, [IdentityCollector(server),
                                             *server.extra_collectors])

    async def metrics(_: Request) -> Response:
        return Response(body=generate_latest(registry), content_type=CONTENT_TYPE_LATEST)

    async def healthz(_: Request) -> Response:
        return json_response({"status": "alive"})

    async def ready(_: Request) -> Response:
        checks: dict[str, Any] = {
            "listeners_bound": server.listeners_bound,
            "config_applied": server.config_applied.is_set(),
            "certificate_loaded": server.identity_ready,
            "draining": server.draining,
        }
        if server.app_probe is not None:
            # Informational: the proxy's readiness is its own; the control plane publishes the
            # endpoint only while the app serves too.
            checks["app"] = server.app_probe.state
            checks["app_error"] = server.app_probe.last_error or None
        return json_response(checks, 200 if server.ready else 503)

    async def config_dump(_: Request) -> Response:
        snap = server.snapshot
        body: dict[str, Any] = {
            "version": snap.version if snap else None,
            "snapshot": _jsonable(dataclasses.asdict(snap)) if snap else None,
            "listeners": {k: str(server.bound_address(k)) for k in server.listeners}}
        if server.config_source is not None:  # static mode: the file and its last reload
            body["config_source"] = server.config_source.dump()
        balanced = locality_view(server.backends)
        if balanced:  # live state, not config: only for destinations balanced by locality
            body["locality"] = balanced
        panicking = panic_view(server.backends)
        if panicking:  # likewise, only for destinations with a minHealthPercent
            body["outlier"] = panicking
        # live state read here only (proxy-config endpoints, listeners, secret)
        body["endpointHealth"] = health_view(server.backends)
        body["boundListeners"] = listener_view(server)
        body["certificate"] = None
        if server.tls is not None:
            # imported here: a plaintext static proxy never loads cryptography (footprint)
            from proxy.certview import certificate_view

            body["certificate"] = certificate_view(server.tls.identity, server.identity_agent)
        return json_response(body, indent=2)

    async def stats(_: Request) -> Response:
        body: dict[str, Any] = dict(server.stats.totals())
        body["upstream_pools"] = [
            {"address": str(p.address), "service": p.service, "version": p.version,
             "connections": p.connections, "idle": len(p.idle),
             "active_requests": p.active_requests,
             **({"subset": p.subset} if p.subset is not None else {})}
            for p in server.pools
        ]
        body["config_version"] = server.snapshot.version if server.snapshot else None
        body["access_log"] = server.access_log_enabled
        return json_response(body)

    async def shutdown(_: Request) -> Response:
        asyncio.get_running_loop().create_task(server.shutdown())
        return json_response({"status": "draining"}, 202)

    async def access_log(request: Request) -> Response:
        value = request.query.get("enabled", "")
        if value not in ("true", "false"):
            return json_response({"error": "use ?enabled=true or ?enabled=false"}, 400)
        server.set_access_log(value == "true")
        return json_response({"access_log": server.access_log_enabled})

    levels = LogLevels(server.log_levels_changed)

    async def get_log_levels(_: Request) -> Response:
        return json_response({"loggers": levels.levels()})

    async def set_log_levels(request: Request) -> Response:
        query = dict(request.query)
        reset = query.pop("reset", None)
        if reset not in (None, "true"):
            return json_response({"error": "use reset=true"}, 400)
        if reset is None and not query:
            return json_response({"error": "say what to change: level=LEVEL (all of Ami's "
                                           "loggers), LOGGER=LEVEL, or reset=true",
                                  "loggers": list(levels.names()), "levels": list(LEVELS)},
                                 400)
        try:
            changes = levels.parse(query)  # all checked before anything changes
        except LevelError as exc:
            return json_response({"error": str(exc), "loggers": list(levels.names()),
                                  "levels": list(LEVELS)}, 400)
        if reset is not None:
            levels.reset()
        levels.apply(changes)
        # said at WARNING so that it shows at any level but error: who turned DEBUG on, when
        log.warning("log levels changed from the admin listener: %s",
                    ", ".join([*(["reset"] if reset else []),
                               *(f"{n}={v}" for n, v in query.items())]))
        return json_response({"loggers": levels.levels()})

    return {
        ("GET", "/metrics"): metrics,
        ("GET", "/healthz"): healthz,
        ("GET", "/ready"): ready,
        ("GET", "/config_dump"): config_dump,
        ("GET", "/stats"): stats,
        ("POST", "/shutdown"): shutdown,
        ("POST", "/logging/access"): access_log,
        ("GET", "/logging"): get_log_levels,
        ("POST", "/logging"): set_log_levels,
        ("GET", "/tap"): tap_handler(TapHub(server)),
    }


def _jsonable(value: Any) -> Any:
    if isinstance(value, Mapping):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_jsonable(v) for v in value]
    if isinstance(value, frozenset | set):  # (extAuthz header names)
        return sorted(_jsonable(v) for v in value)
    if hasattr(value, "pattern"):
        return value.pattern
    if isinstance(value, bytes):  # a directResponse's body
        return value.decode("utf-8", "backslashreplace")
    if callable(value):  # a compiled filter (telemetry.access_filter): its text is beside it
        return None
    return value


# Routes that act on the proxy or show its traffic and config: loopback or the control plane.
PRIVILEGED = frozenset({("POST", "/shutdown"), ("POST", "/logging/access"), ("GET", "/tap"),
                        ("GET", "/config_dump"), ("POST", "/logging")})


async def start_admin(server: ProxyServer, host: str, port: int, *,
                      token: str = "", mtls: bool = True) -> AdminServer:
    """Bind the admin listener; with `mtls` it takes mTLS too once the proxy has an identity
    (a static proxy without one passes False: it never gets one, plaintext stays as cheap)."""
    admin = AdminServer(admin_routes(server), privileged=PRIVILEGED, token=token,
                        tls=(lambda: server.tls) if mtls else None, stats=server.stats,
                        limits=server.options.limits, known_hosts=(host,))
    try:
        await admin.start(host, port)
    except OSError as exc:
        raise ListenError("admin listener", f"{host}:{port}", exc) from None
    server.admin = admin  # its address and connections, for /config_dump
    return admin
