"""Wires a ProxyServer to its config source (static file or control plane) and runs it."""

from __future__ import annotations

import argparse
import asyncio
import logging
from pathlib import Path
from typing import Any

from proxy.admin import start_admin
from proxy.config import Address
from proxy.server import ProxyOptions, ProxyServer

log = logging.getLogger("ami.proxy")


def load_identity_dir(directory: Path) -> Any:
    """Static mTLS: a workload identity from files (key.pem, cert.pem, chain.pem, bundle.pem)."""
    from proxy.identity import WorkloadIdentity

    def read(name: str, required: bool = True) -> bytes:
        path = directory / name
        if not path.exists() and not required:
            return b""
        return path.read_bytes()

    return WorkloadIdentity.from_pem(read("key.pem"), read("cert.pem"),
                                     read("chain.pem", required=False), read("bundle.pem"))


async def run(args: argparse.Namespace, options: ProxyOptions) -> int:
    server = ProxyServer(options)
    server.install_signal_handlers()
    from proxy.tracing import install_tracing

    install_tracing(server, getattr(args, "otlp_endpoint", None))
    if args.config:
        from proxy.static import load_static

        server.apply(load_static(args.config))
        if args.identity_dir:
            server.set_identity(load_identity_dir(args.identity_dir))
        admin = options.listeners.get("admin") or (server.snapshot.listeners.get("admin")
                                                   if server.snapshot else None)
    else:
        from proxy.agent import ControlPlaneAgent

        agent = ControlPlaneAgent(server, args)
        await agent.start()
        admin = options.listeners.get("admin")
    admin = admin or Address("127.0.0.1", 15000)
    await server.start_listeners()
    runner = await start_admin(server, admin.host, admin.port)
    log.info("admin on %s; ready=%s", admin, server.ready)
    sweeper = asyncio.create_task(server.run_sweeper())
    await server.stopped.wait()
    sweeper.cancel()
    await runner.cleanup()
    return 0
