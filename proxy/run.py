"""Wires a ProxyServer to its config source (static file or control plane) and runs it."""

from __future__ import annotations

import argparse
import asyncio
import logging

from proxy.admin import start_admin
from proxy.config import Address
from proxy.server import ProxyOptions, ProxyServer

log = logging.getLogger("ami.proxy")


async def run(args: argparse.Namespace, options: ProxyOptions) -> int:
    server = ProxyServer(options)
    server.install_signal_handlers()
    if args.config:
        from proxy.static import load_static

        server.apply(load_static(args.config))
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
