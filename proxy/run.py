"""Wires a ProxyServer to its config source (static file or control plane) and runs it."""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import secrets
from collections.abc import Coroutine
from pathlib import Path
from typing import TYPE_CHECKING, Any

from proxy.admin import start_admin
from proxy.config import Address, ConfigError, Snapshot
from proxy.server import ProxyOptions, ProxyServer

if TYPE_CHECKING:
    from proxy.filewatch import Stamp
    from proxy.static import StaticConfig

log = logging.getLogger("ami.proxy")


def load_identity_dir(directory: Path) -> Any:
    """Static mTLS: a workload identity from files (key.pem, cert.pem, chain.pem, bundle.pem)."""
    from proxy.identity import IdentityError, WorkloadIdentity

    def read(name: str, required: bool = True) -> bytes:
        path = directory / name
        if not path.exists() and not required:
            return b""
        try:
            return path.read_bytes()
        except OSError as exc:
            raise ConfigError(f"--identity-dir {directory}: {name}: {exc.strerror}") from None

    try:
        return WorkloadIdentity.from_pem(read("key.pem"), read("cert.pem"),
                                         read("chain.pem", required=False), read("bundle.pem"))
    except IdentityError as exc:
        raise ConfigError(f"--identity-dir {directory}: {exc}") from None


class _IdentitySink:
    """Installs each certificate in the server and reports its expiry to the control plane.

    The report reads the identity the server now presents (``served_identity``), the one
    /config_dump shows: the identity agent records a certificate as its own only once this
    call returned, so a report reading the agent's would carry the certificate before it."""

    def __init__(self, server: ProxyServer, agent: Any) -> None:
        self.server = server
        self.agent = agent
        self.installed = asyncio.Event()

    def set_identity(self, identity: Any) -> None:
        self.server.set_identity(identity)
        self.installed.set()
        self.agent.certificate_changed()


def served_identity(server: ProxyServer) -> Any:
    """The workload identity the server presents (proxy.identity.WorkloadIdentity), None
    before the first: what Register and Status report to the control plane."""
    return server.tls.identity if server.tls is not None else None


def start_identity_agent(server: ProxyServer, args: argparse.Namespace,
                         agent: Any) -> tuple[asyncio.Task[None], asyncio.Event]:
    """Obtain and renew this sidecar's workload certificate over the control plane's gRPC."""
    from proxy.identity_agent import (
        IdentityAgent,
        IdentityAgentConfig,
        grpc_issuer,
    )

    token = args.token_file.read_text().strip() if args.token_file else ""
    if not token:
        log.error("no --token-file: the control plane will not issue a certificate, so mTLS "
                  "traffic (STRICT) is refused; see `meshctl certs token --service %s`",
                  args.service)
    sink = _IdentitySink(server, agent)
    ident = IdentityAgent(sink, grpc_issuer(args.control_plane, args.ca_file),
                          IdentityAgentConfig(service=args.service, namespace=args.namespace,
                                              token=token, proxy=agent.identity.name),
                          first_after=(lambda: registered(agent)) if args.mode == "gateway"
                          else None)
    server.identity_agent = ident  # its renewal state, for /config_dump's certificate
    report_served_certificate(server, agent)
    return asyncio.create_task(ident.run(), name="identity-agent"), sink.installed


def report_served_certificate(server: ProxyServer, agent: Any) -> None:
    """The agent's Register and Status carry the served certificate's dates and marker."""
    from proxy.identity_agent import rfc3339

    def cert_expiry() -> str:
        served = served_identity(server)
        return rfc3339(served.not_after) if served is not None else ""

    def cert_issued() -> str:
        served = served_identity(server)
        return rfc3339(served.not_before) if served is not None else ""

    def gateway_cert() -> bool:
        served = served_identity(server)
        return served is not None and bool(served.gateway)

    agent.cert_expiry, agent.cert_issued, agent.gateway_cert = (cert_expiry, cert_issued,
                                                                gateway_cert)


async def registered(agent: Any) -> None:
    """A gateway asks for its first certificate once registered (bounded wait): the CA marks
    a gateway's certificate only once the registry holds it; asked before, it is refused and
    asks again, backing off."""
    try:
        await asyncio.wait_for(agent.connected.wait(), agent.first_config_timeout)
    except TimeoutError:
        pass  # ask anyway: refused until registered, retried


def start_app_probe(server: ProxyServer, args: argparse.Namespace,
                    agent: Any) -> asyncio.Task[None] | None:
    """Probe the local app (--app-probe) and report its state with the agent's Status."""
    spec = server.options.app_probe
    if spec is None:
        return None
    from proxy.appprobe import AppProbe

    probe = AppProbe(Address.parse(args.app, "--app"), spec, agent.app_health_changed)
    server.app_probe = probe
    agent.app_health = lambda: probe.state
    return asyncio.create_task(probe.run(), name="app-probe")


async def wait_for_identity(installed: asyncio.Event, timeout: float) -> None:
    """Give the first certificate a bounded wait; listeners bind either way (unready)."""
    try:
        await asyncio.wait_for(installed.wait(), timeout)
    except TimeoutError:
        log.warning("no workload certificate yet: inbound mTLS refused until one arrives")


async def start_waits(agent: Any, installed: asyncio.Event) -> None:
    """The control-plane mode's start-up wait: its first config and its first certificate,
    asked for at once and waited for together, up to ``agent.first_config_timeout`` (10 s)
    in all. The listeners then bind either way, unready until both arrived: a proxy started
    while the control plane is down binds after 10 s, not after a config wait and then a
    certificate wait (20 s). Until it has a certificate its inbound refuses mTLS (STRICT) and
    it is not ready, so it takes no mesh traffic early."""
    await asyncio.gather(agent.start(),
                         wait_for_identity(installed, agent.first_config_timeout))


async def unless_stopped(server: ProxyServer, waits: Coroutine[Any, Any, None]) -> None:
    """Run ``waits`` unless the server stops first (SIGTERM, SIGINT, /shutdown during them):
    the signal handler only starts the drain, and a stopping proxy must not sit out ~10 s of
    waits, then bind its listeners only to close them."""
    waiting = asyncio.ensure_future(waits)
    stopped = asyncio.ensure_future(server.stopped.wait())
    await asyncio.wait((waiting, stopped), return_when=asyncio.FIRST_COMPLETED)
    ended = waiting.done()
    for task in (waiting, stopped):
        task.cancel()
    await asyncio.gather(waiting, stopped, return_exceptions=True)
    if ended:
        waiting.result()  # an error of the waits propagates as before


def enable_tracing(server: ProxyServer, flag_endpoint: str | None) -> None:
    """Load OpenTelemetry only once an OTLP endpoint is known (flag, env, or MeshConfig)."""
    installed = False

    def maybe_install(snapshot: Any) -> None:
        nonlocal installed
        endpoint = (flag_endpoint or os.environ.get("OTEL_EXPORTER_OTLP_ENDPOINT")
                    or snapshot.mesh.tracing_endpoint)
        if endpoint and not installed:
            from proxy.tracing import install_tracing

            installed = True
            install_tracing(server, endpoint)

    server.on_snapshot.append(maybe_install)
    if server.snapshot is not None:
        maybe_install(server.snapshot)


def apply_static(server: ProxyServer, path: Path, snapshot: Snapshot) -> None:
    """Apply the file's snapshot at start; one the proxy refuses is a ConfigError worded as a
    reload's refusal of it (proxy.staticreload), so the start ends with one line, not a
    traceback."""
    from proxy.static import refusal

    try:
        server.apply(snapshot)
    except Exception as exc:  # whatever a reload (or a NACK) refuses, the start refuses
        raise ConfigError(refusal(path, exc)) from None


async def check_static(options: ProxyOptions, path: Path) -> None:
    """--dry-run: build the file as the start would (nothing bound), so a snapshot the proxy
    refuses fails the check too, not only the start."""
    from proxy.static import read_static

    apply_static(ProxyServer(options), path, read_static(path).snapshot)


def start_static_reload(server: ProxyServer, args: argparse.Namespace, static: StaticConfig,
                        admin: Address, stamp: Stamp | None) -> asyncio.Task[None] | None:
    """Static mode: SIGHUP reloads the file; with --watch-config, so does a change to it
    (proxy.staticreload). The watch task, if any."""
    import signal

    from proxy.staticreload import StaticReloader

    watch = bool(getattr(args, "watch_config", False))
    reloader = StaticReloader(server, args.config, static, admin=admin, watch=watch)
    server.loop.add_signal_handler(signal.SIGHUP, reloader.request, "SIGHUP")
    if not watch:
        return None
    from proxy.filewatch import watch_file

    return asyncio.create_task(watch_file(args.config, lambda: reloader.reload("watch"), stamp),
                               name="config-watch")


async def run(args: argparse.Namespace, options: ProxyOptions) -> int:
    server = ProxyServer(options)
    server.install_signal_handlers()
    enable_tracing(server, getattr(args, "otlp_endpoint", None))
    reload_task: asyncio.Task[None] | None = None
    if args.config:
        from proxy.filewatch import file_stamp
        from proxy.static import read_static

        stamp = file_stamp(args.config)  # before the read: a change in between is seen
        static = read_static(args.config)
        apply_static(server, args.config, static.snapshot)
        if args.identity_dir:
            server.set_identity(load_identity_dir(args.identity_dir))
        admin = options.listeners.get("admin") or (server.snapshot.listeners.get("admin")
                                                   if server.snapshot else None)
        admin = admin or Address("127.0.0.1", 15000)
        await server.start_listeners()
        runner = await start_admin(server, admin.host, admin.port, mtls=server.tls is not None)
        reload_task = start_static_reload(server, args, static, admin, stamp)
    else:
        from proxy.agent import ControlPlaneAgent

        agent = ControlPlaneAgent(server, args)
        # The control plane calls privileged admin routes (tap) with this token; it learns it
        # over the authenticated config stream.
        agent.admin_token = secrets.token_urlsafe(24)
        admin = options.listeners.get("admin") or Address("127.0.0.1", 15000)
        # Admin first: /healthz answers and /ready says what is missing while the control plane
        # is slow or down, instead of the port being closed for the two waits below.
        runner = await start_admin(server, admin.host, admin.port, token=agent.admin_token)
        identity_task, installed = start_identity_agent(server, args, agent)
        probe_task = start_app_probe(server, args, agent)
        await unless_stopped(server, start_waits(agent, installed))
        if not server.draining:  # a stop during the waits: nothing to bind, only to end
            await server.start_listeners()
    log.info("admin on %s; ready=%s", admin, server.ready)
    background = [asyncio.create_task(server.run_sweeper())]
    if reload_task is not None:
        background.append(reload_task)
    if options.gateway_tls is not None:
        background.append(asyncio.create_task(options.gateway_tls.watch()))
    await server.stopped.wait()
    for task in background:
        task.cancel()
    if not args.config:
        identity_task.cancel()
        if probe_task is not None:
            probe_task.cancel()
        await agent.finish()
    await runner.cleanup()
    await server.access_log.aclose()  # the last lines; a stuck reader delays the exit 2 s at most
    if server.tracing_provider is not None:
        from proxy.tracing import close_tracing

        await close_tracing(server)  # the last spans; a collector down delays it 2 s at most
    return 0
