"""The bench paths, as data: each builds its config files and the processes to start.

Adding a path is one builder function plus one `PathDef` in `PATHS` (see `ami-2hop-mtls`).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from bench import amiconf
from bench.certs import CertPaths
from bench.haproxyconf import haproxy_argv, haproxy_conf
from bench.nginxconf import NginxTLS, nginx_argv, proxy_conf
from bench.procs import ServerSpec


@dataclass(frozen=True, slots=True)
class BuildContext:
    """What a path builder gets: where to write files, the backend, ports and certs on demand."""

    run_dir: Path
    backend_port: int
    port: Callable[[], int]
    certs: Callable[[], CertPaths]


@dataclass(frozen=True, slots=True)
class Topology:
    """Processes to start (upstream first) and the port the load generator targets."""

    servers: tuple[ServerSpec, ...]
    entry_port: int


@dataclass(frozen=True, slots=True)
class PathDef:
    """One bench path; `unavailable()` returns a skip reason or None."""

    name: str
    description: str
    build: Callable[[BuildContext], Topology]
    unavailable: Callable[[], str | None] = lambda: None


def _nginx(ctx: BuildContext, name: str, conf_text: str, ready_port: int | None) -> ServerSpec:
    conf = ctx.run_dir / f"{name}.conf"
    conf.write_text(conf_text)
    return ServerSpec(name, nginx_argv(ctx.run_dir, conf), ready_port=ready_port)


def build_direct(ctx: BuildContext) -> Topology:
    """client -> backend."""
    return Topology((), ctx.backend_port)


def build_nginx(ctx: BuildContext) -> Topology:
    """client -> nginx (upstream keep-alive) -> backend."""
    port = ctx.port()
    spec = _nginx(ctx, "nginx-proxy", proxy_conf(ctx.run_dir, "px", port, ctx.backend_port), port)
    return Topology((spec,), port)


def build_haproxy(ctx: BuildContext) -> Topology:
    """client -> haproxy -> backend."""
    port = ctx.port()
    conf = ctx.run_dir / "haproxy.cfg"
    conf.write_text(haproxy_conf(port, ctx.backend_port))
    return Topology((ServerSpec("haproxy", haproxy_argv(conf), ready_port=port),), port)


def build_nginx_pair_mtls(ctx: BuildContext) -> Topology:
    """client -> nginx -> (mTLS, keep-alive) -> nginx -> backend."""
    tls = NginxTLS(ctx.certs())
    inbound_port, outbound_port = ctx.port(), ctx.port()
    inbound_conf = proxy_conf(ctx.run_dir, "in", inbound_port, ctx.backend_port, listen_tls=tls)
    outbound_conf = proxy_conf(ctx.run_dir, "out", outbound_port, inbound_port, upstream_tls=tls)
    # The TLS-only inbound is probed end to end through the outbound, which starts second.
    inbound = _nginx(ctx, "nginx-inbound", inbound_conf, None)
    outbound = _nginx(ctx, "nginx-outbound", outbound_conf, outbound_port)
    return Topology((inbound, outbound), outbound_port)


def build_ami_1hop(ctx: BuildContext) -> Topology:
    """client -> python -m proxy (outbound listener, metrics on) -> backend."""
    port, admin = ctx.port(), ctx.port()
    conf = amiconf.write_snapshot(
        ctx.run_dir / "ami-1hop.yaml", amiconf.one_hop_snapshot(port, admin, ctx.backend_port)
    )
    spec = ServerSpec(
        "ami-outbound", amiconf.proxy_argv(conf), ready_port=admin, ready_path="/ready"
    )
    return Topology((spec,), port)


def build_ami_2hop_mtls(ctx: BuildContext) -> Topology:
    """client -> outbound sidecar (route, retries, timeout) -> mTLS -> inbound -> backend."""
    ids = amiconf.mesh_identities(ctx.run_dir)
    out_port, out_admin, in_port, in_admin = (ctx.port() for _ in range(4))
    out_snap, in_snap = amiconf.two_hop_snapshots(out_port, out_admin, in_port, in_admin,
                                                  ctx.backend_port)
    inbound = amiconf.write_snapshot(ctx.run_dir / "ami-in.yaml", in_snap)
    outbound = amiconf.write_snapshot(ctx.run_dir / "ami-out.yaml", out_snap)
    return Topology(
        (
            ServerSpec("ami-inbound",
                       amiconf.proxy_argv_identity(inbound, ids[amiconf.BENCH_SERVICE]),
                       ready_port=in_admin, ready_path="/ready"),
            ServerSpec("ami-outbound", amiconf.proxy_argv_identity(outbound, ids["bench-client"]),
                       ready_port=out_admin, ready_path="/ready"),
        ),
        out_port,
    )


PATHS: dict[str, PathDef] = {
    p.name: p
    for p in (
        PathDef("direct", "client -> backend", build_direct),
        PathDef("nginx", "client -> nginx -> backend", build_nginx),
        PathDef("haproxy", "client -> haproxy -> backend", build_haproxy),
        PathDef(
            "nginx-pair-mtls", "client -> nginx -> mTLS -> nginx -> backend", build_nginx_pair_mtls
        ),
        PathDef(
            "ami-1hop",
            "client -> ami outbound -> backend",
            build_ami_1hop,
            amiconf.proxy_available,
        ),
        PathDef(
            "ami-2hop-mtls",
            "client -> ami outbound -> mTLS -> ami inbound -> backend",
            build_ami_2hop_mtls,
            amiconf.proxy_available,
        ),
    )
}
