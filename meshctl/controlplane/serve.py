"""`meshctl serve`: store, HTTP API, gRPC config server, registry and reconcile loop together.

Every task belongs to ``serve()``'s TaskGroup; SIGTERM/SIGINT set a stop event, then the
servers close and the tasks are cancelled in order (gRPC first, so sidecars see the stream end
and keep their last snapshot).
"""

from __future__ import annotations

import asyncio
import logging
import signal
import socket
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import grpc
from aiohttp import web

from meshctl.ca import BootstrapTokens
from meshctl.canary.controller import CanaryController
from meshctl.canary.statefile import FILE_NAME as CANARY_FILE
from meshctl.canary.statefile import CanaryStateFile
from meshctl.controlplane.admintls import AdminTls
from meshctl.controlplane.apilisten import MAX_CONNECTIONS as MAX_API_CONNECTIONS
from meshctl.controlplane.apilisten import listen_api
from meshctl.controlplane.auth import ensure_token
from meshctl.controlplane.ca_service import CertificateService, load_or_init_ca
from meshctl.controlplane.dirstore import DirStore
from meshctl.controlplane.httpapi import APPLY_LOCK, KNOWN_SERVICES, check_set, create_api_app
from meshctl.controlplane.jwks import DEFAULT_REFRESH, JwksCache
from meshctl.controlplane.proxystatus import status_routes
from meshctl.controlplane.reconcile import Reconciler
from meshctl.controlplane.registry import Registry
from meshctl.controlplane.registrystate import FILE_NAME, RegistryStateFile
from meshctl.controlplane.servercert import RenewingServerCertificate
from meshctl.controlplane.servicedescribe import describe_routes
from meshctl.controlplane.slowclients import SlowClientReaper
from meshctl.controlplane.versionapi import version_routes
from meshctl.controlplane.xds import MeshControlService, start_grpc_server
from meshctl.observe.mount import observability
from proxy.servingcert import ServingCertificate

log = logging.getLogger("ami.controlplane")


@dataclass(frozen=True, slots=True)
class ServeOptions:
    """What ``meshctl serve`` was asked to do."""

    config_dir: Path = Path("mesh")
    state_dir: Path = Path(".ami")
    listen: str = "127.0.0.1:15080"
    grpc_listen: str = "127.0.0.1:15012"
    certs_dir: Path = Path("certs")
    grace: float = 2.0  # registry: keep a disconnected proxy's endpoint this long
    warmup: float = 15.0  # after a restart, how long proxies known before wait to reconnect
    open_reads: bool = False
    max_api_connections: int = MAX_API_CONNECTIONS
    jwks_refresh: float = DEFAULT_REFRESH  # seconds between refetches of each jwksUri
    scrape_interval: float = 2.0  # seconds between scrapes of the sidecars' /metrics
    api_tls: bool = False  # serve the HTTP API over HTTPS with a certificate from the mesh CA
    api_cert: Path | None = None  # ... or with this certificate chain and key (PEM)
    api_key: Path | None = None
    tls_names: tuple[str, ...] = ()  # more names for the control plane's own certificate
    allowed_hosts: tuple[str, ...] = ()  # more Host names token-less reads may use ("*": any)
    grpc_credentials: grpc.ServerCredentials | None = field(default=None, compare=False)


def _split(listen: str) -> tuple[str, int]:
    host, _, port = listen.rpartition(":")
    return host.strip("[]") or "0.0.0.0", int(port)


def _tls_names(listen: str) -> list[str]:
    """Names a control-plane TLS certificate must carry for clients to verify it."""
    host = _split(listen)[0]
    names = {"localhost", "127.0.0.1", socket.gethostname()}
    if host not in ("0.0.0.0", "::"):
        names.add(host)
    return sorted(names)


async def serve(options: ServeOptions,
                on_ready: Callable[[int, int], None] | None = None) -> int:
    """Run until SIGTERM/SIGINT; ``on_ready(http_port, grpc_port)`` once both listen."""
    ca = load_or_init_ca(options.certs_dir)
    ca_service = CertificateService(ca, BootstrapTokens.load(options.certs_dir),
                                    lambda: reconciler.mesh,
                                    lambda *proxy: registry.trusted_gateway(*proxy))
    # Signed by the CA as it is on disk now (ca_service reloads it after `meshctl certs
    # rotate`), so a rotation reaches the control plane's own certificate too.
    own_cert = RenewingServerCertificate(
        ca_service.current_ca, sorted({*_tls_names(options.grpc_listen),
                                       *_tls_names(options.listen), *options.tls_names}))
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    store = DirStore(options.config_dir, state_dir=options.state_dir)
    await store.start()
    token = ensure_token(options.state_dir)
    registry = Registry(grace=options.grace)
    registry_file = RegistryStateFile(options.state_dir / FILE_NAME, registry)
    registry_file.restore(hold=options.warmup)
    reconciler = Reconciler(store, registry)
    jwks = JwksCache(refresh=options.jwks_refresh, on_change=reconciler.mark_all,
                     counters=reconciler.counters)
    reconciler.jwks = jwks
    # Sidecars' admin listeners are called over mTLS with the control plane's certificate.
    observer, observe_extra = observability(
        registry, reconciler, token=token, interval=options.scrape_interval,
        admin_tls=AdminTls(own_cert, ca),
        api=(options.listen, options.api_tls or options.api_cert is not None))
    app = create_api_app(store, token=token, open_reads=options.open_reads,
                         known_hosts=[*_tls_names(options.listen), *options.tls_names,
                                      *options.allowed_hosts],
                         extra_routes=[*status_routes(registry, reconciler),
                                       *describe_routes(registry, reconciler),
                                       *version_routes(registry), *observe_extra])
    app[KNOWN_SERVICES] = lambda: {(p.service, p.namespace) for p in registry.proxies()
                                   if p.mode == "sidecar"}
    # Canaries are judged on the rows /api/v1/stat serves, and write as the API does
    canaries = CanaryController(
        store, lambda window: [r.as_json() for r in observer.scraper.window.stat(
            observer.clock(), window)],
        scrape_interval=options.scrape_interval, lock=app[APPLY_LOCK],
        check=lambda changes: check_set(store, changes),
        state=CanaryStateFile(options.state_dir / CANARY_FILE), lagging=reconciler.lagging)
    runner = web.AppRunner(app, handle_signals=False)
    await runner.setup()
    assert runner.server is not None  # set by setup()
    api_server: asyncio.Server | None = None
    try:
        api_cert = (ServingCertificate(options.api_cert, options.api_key, alpn=("http/1.1",),
                                       name="API certificate")
                    if options.api_cert is not None and options.api_key is not None else None)
        api_tls = (api_cert.listener if api_cert is not None
                   else own_cert.api_context() if options.api_tls else None)
        host, port = _split(options.listen)
        api_server = await listen_api(runner.server, host, port, options.max_api_connections,
                                      ssl=api_tls)
        http_port = api_server.sockets[0].getsockname()[1]
        reconciler.certificates = ca_service  # for ami_controlplane_certificates_* metrics
        credentials = options.grpc_credentials or own_cert.grpc_credentials()
        grpc_server, grpc_port = await start_grpc_server(
            MeshControlService(registry, reconciler, ca_service,
                               token_kind=ca_service.tokens.kind), options.grpc_listen,
            credentials)
        try:
            async with asyncio.TaskGroup() as tg:
                tasks = [tg.create_task(registry.run(), name="registry"),
                         tg.create_task(registry_file.run(), name="registry-state"),
                         tg.create_task(reconciler.run(), name="reconcile"),
                         tg.create_task(observer.run(), name="observe"),
                         tg.create_task(jwks.run(), name="jwks")]
                tasks.append(tg.create_task(SlowClientReaper(runner.server).run(),
                                            name="slow-clients"))
                tasks.append(tg.create_task(
                    canaries.run(tick=min(1.0, options.scrape_interval)), name="canaries"))
                if api_cert is not None:
                    tasks.append(tg.create_task(api_cert.watch(), name="api-certificate"))
                log.info("control plane: API on %s://%s:%d, config gRPC on %s:%d, "
                         "config dir %s", "https" if api_tls else "http", host, http_port,
                         _split(options.grpc_listen)[0], grpc_port, options.config_dir)
                if on_ready is not None:
                    on_ready(http_port, grpc_port)
                await stop.wait()
                log.info("stopping")
                registry.close()  # the streams this ends keep their proxies (state file)
                await grpc_server.stop(grace=1.0)
                for task in tasks:
                    task.cancel()
        finally:
            await grpc_server.stop(grace=None)
    finally:
        if api_server is not None:
            api_server.close()  # stop accepting; runner.cleanup() closes the connections
        await runner.cleanup()
        await store.close()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.remove_signal_handler(sig)
    return 0
