"""`meshctl serve`: store, HTTP API, gRPC config server, registry and reconcile loop together.

Every task belongs to ``serve()``'s TaskGroup; SIGTERM/SIGINT set a stop event, then the
servers close and the tasks are cancelled in order (gRPC first, so sidecars see the stream end
and keep their last snapshot).
"""

from __future__ import annotations

import asyncio
import logging
import signal
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import grpc
from aiohttp import web

from meshctl.controlplane.auth import ensure_token
from meshctl.controlplane.dirstore import DirStore
from meshctl.controlplane.httpapi import create_api_app
from meshctl.controlplane.proxystatus import status_routes
from meshctl.controlplane.reconcile import Reconciler
from meshctl.controlplane.registry import Registry
from meshctl.controlplane.xds import MeshControlService, start_grpc_server

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
    warmup: float = 6.0  # reconcile: after a restart, let sidecars reconnect before pushing
    open_reads: bool = False
    grpc_credentials: grpc.ServerCredentials | None = field(default=None, compare=False)


def _split(listen: str) -> tuple[str, int]:
    host, _, port = listen.rpartition(":")
    return host.strip("[]") or "0.0.0.0", int(port)


async def serve(options: ServeOptions,
                on_ready: Callable[[int, int], None] | None = None) -> int:
    """Run until SIGTERM/SIGINT; ``on_ready(http_port, grpc_port)`` once both listen."""
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    store = DirStore(options.config_dir, state_dir=options.state_dir)
    await store.start()
    token = ensure_token(options.state_dir)
    registry = Registry(grace=options.grace)
    reconciler = Reconciler(store, registry, warmup=options.warmup)
    app = create_api_app(store, token=token, open_reads=options.open_reads,
                         extra_routes=status_routes(registry, reconciler))
    runner = web.AppRunner(app, handle_signals=False)
    await runner.setup()
    try:
        host, port = _split(options.listen)
        site = web.TCPSite(runner, host, port, reuse_address=True)
        await site.start()
        http_port = runner.addresses[0][1]
        grpc_server, grpc_port = await start_grpc_server(
            MeshControlService(registry, reconciler), options.grpc_listen,
            options.grpc_credentials)
        try:
            async with asyncio.TaskGroup() as tg:
                tasks = [tg.create_task(registry.run(), name="registry"),
                         tg.create_task(reconciler.run(), name="reconcile")]
                log.info("control plane: API on http://%s:%d, config gRPC on %s:%d, "
                         "config dir %s", host, http_port, _split(options.grpc_listen)[0],
                         grpc_port, options.config_dir)
                if on_ready is not None:
                    on_ready(http_port, grpc_port)
                await stop.wait()
                log.info("stopping")
                await grpc_server.stop(grace=1.0)
                for task in tasks:
                    task.cancel()
        finally:
            await grpc_server.stop(grace=None)
    finally:
        await runner.cleanup()
        await store.close()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.remove_signal_handler(sig)
    return 0
