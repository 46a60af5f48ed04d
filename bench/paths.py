"""The bench paths, as data: each builds its config files and the processes to start.

Adding a path is one builder function plus one `PathDef` in `PATHS` (see `ami-2hop-mtls`).
The HTTP/2 paths (`h2=True`) are loaded with h2load and end at the backend's h2c listener.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from bench import amiconf
from bench.certs import CertPaths
from bench.haproxyconf import haproxy_argv, haproxy_conf
from bench.nginxconf import NginxTLS, grpc_proxy_conf, nginx_argv, proxy_conf
from bench.procs import ServerSpec
from bench.tools import missing_tools


@dataclass(frozen=True, slots=True)
class BuildContext:
    """What a path builder gets: where to write files, the backend, ports and certs on demand."""

    run_dir: Path
    backend_port: int
    port: Callable[[], int]
    certs: Callable[[], CertPaths]
    h2_backend_port: int | None = None  # the backend's h2c listener (the HTTP/2 paths' end)

    def h2_backend(self) -> int:
        """The h2c backend port; the HTTP/2 paths cannot run without one."""
        if self.h2_backend_port is None:
            raise RuntimeError("no h2c backend in this run")
        return self.h2_backend_port


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
    h2: bool = False  # HTTP/2 (h2c) from the load generator: h2load instead of wrk
    optional: bool = False  # run only when named in --paths (not in the default list or a group)


def h2load_available() -> str | None:
    """None when h2load is installed, else the reason the HTTP/2 paths are skipped."""
    if missing_tools(("h2load",)):
        return "h2load not installed (apt-get install nghttp2-client)"
    return None


def _ami_h2_available() -> str | None:
    return h2load_available() or amiconf.proxy_available()


def _nginx(
    ctx: BuildContext, name: str, conf_text: str, ready_port: int | None, *, h2: bool = False
) -> ServerSpec:
    conf = ctx.run_dir / f"{name}.conf"
    conf.write_text(conf_text)
    return ServerSpec(name, nginx_argv(ctx.run_dir, conf), ready_port=ready_port, ready_h2=h2)


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
    return _one_hop(ctx, "ami-1hop", "ami-outbound", access_log=False)


def build_ami_1hop_logged(ctx: BuildContext) -> Topology:
    """`ami-1hop` with the access log on: a JSON line per request to the process's log file."""
    # (its own process name: the log file it writes is RUN_DIR/NAME.log)
    return _one_hop(ctx, "ami-1hop-logged", "ami-outbound-logged", access_log=True)


def _one_hop(ctx: BuildContext, config: str, process: str, *, access_log: bool) -> Topology:
    port, admin = ctx.port(), ctx.port()
    snapshot = amiconf.one_hop_snapshot(port, admin, ctx.backend_port, access_log=access_log)
    conf = amiconf.write_snapshot(ctx.run_dir / f"{config}.yaml", snapshot)
    spec = ServerSpec(process, amiconf.proxy_argv(conf), ready_port=admin, ready_path="/ready")
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


def build_nginx_h2c(ctx: BuildContext) -> Topology:
    """client -(h2c)-> backend's h2c listener: nginx answering HTTP/2 itself."""
    return Topology((), ctx.h2_backend())


def build_nginx_h2_proxy(ctx: BuildContext) -> Topology:
    """client -(h2c)-> nginx (grpc_pass, upstream keep-alive) -(h2c)-> backend."""
    port = ctx.port()
    conf = grpc_proxy_conf(ctx.run_dir, "px-h2", port, ctx.h2_backend())
    return Topology((_nginx(ctx, "nginx-h2-proxy", conf, port, h2=True),), port)


def build_nginx_pair_h2_mtls(ctx: BuildContext) -> Topology:
    """client -(h2c)-> nginx -(mTLS, ALPN h2, grpc_pass)-> nginx -(h2c)-> backend."""
    tls = NginxTLS(ctx.certs())
    inbound_port, outbound_port = ctx.port(), ctx.port()
    inbound_conf = grpc_proxy_conf(
        ctx.run_dir, "in-h2", inbound_port, ctx.h2_backend(), listen_tls=tls
    )
    outbound_conf = grpc_proxy_conf(
        ctx.run_dir, "out-h2", outbound_port, inbound_port, upstream_tls=tls
    )
    inbound = _nginx(ctx, "nginx-inbound-h2", inbound_conf, None)
    outbound = _nginx(ctx, "nginx-outbound-h2", outbound_conf, outbound_port, h2=True)
    return Topology((inbound, outbound), outbound_port)


def build_ami_1hop_h2(ctx: BuildContext) -> Topology:
    """client -(h2c)-> ami outbound -(h2c, the client's protocol kept)-> backend."""
    port, admin = ctx.port(), ctx.port()
    conf = amiconf.write_snapshot(
        ctx.run_dir / "ami-1hop-h2.yaml", amiconf.one_hop_snapshot(port, admin, ctx.h2_backend())
    )
    spec = ServerSpec(
        "ami-outbound-h2", amiconf.proxy_argv(conf), ready_port=admin, ready_path="/ready"
    )
    return Topology((spec,), port)


def build_ami_2hop_h2_mtls(ctx: BuildContext) -> Topology:
    """client -(h2c)-> ami outbound -(mTLS, ALPN h2)-> ami inbound -(h2c)-> backend."""
    ids = amiconf.mesh_identities(ctx.run_dir)
    out_port, out_admin, in_port, in_admin = (ctx.port() for _ in range(4))
    out_snap, in_snap = amiconf.two_hop_snapshots(out_port, out_admin, in_port, in_admin,
                                                  ctx.h2_backend())
    inbound = amiconf.write_snapshot(ctx.run_dir / "ami-in-h2.yaml", in_snap)
    outbound = amiconf.write_snapshot(ctx.run_dir / "ami-out-h2.yaml", out_snap)
    return Topology(
        (
            ServerSpec("ami-inbound-h2",
                       amiconf.proxy_argv_identity(inbound, ids[amiconf.BENCH_SERVICE]),
                       ready_port=in_admin, ready_path="/ready"),
            ServerSpec("ami-outbound-h2",
                       amiconf.proxy_argv_identity(outbound, ids["bench-client"]),
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
            "ami-1hop-logged",
            "client -> ami outbound (access log on) -> backend",
            build_ami_1hop_logged,
            amiconf.proxy_available,
            optional=True,
        ),
        PathDef(
            "ami-2hop-mtls",
            "client -> ami outbound -> mTLS -> ami inbound -> backend",
            build_ami_2hop_mtls,
            amiconf.proxy_available,
        ),
        PathDef(
            "nginx-h2c",
            "client -(h2c)-> backend (nginx http2 listener)",
            build_nginx_h2c,
            h2load_available,
            h2=True,
        ),
        PathDef(
            "nginx-h2-proxy",
            "client -(h2c)-> nginx grpc_pass -(h2c)-> backend",
            build_nginx_h2_proxy,
            h2load_available,
            h2=True,
        ),
        PathDef(
            "nginx-pair-h2-mtls",
            "client -(h2c)-> nginx -(mTLS, h2)-> nginx -(h2c)-> backend",
            build_nginx_pair_h2_mtls,
            h2load_available,
            h2=True,
        ),
        PathDef(
            "ami-1hop-h2",
            "client -(h2c)-> ami outbound -(h2c)-> backend",
            build_ami_1hop_h2,
            _ami_h2_available,
            h2=True,
        ),
        PathDef(
            "ami-2hop-h2-mtls",
            "client -(h2c)-> ami outbound -(mTLS, h2)-> ami inbound -(h2c)-> backend",
            build_ami_2hop_h2_mtls,
            _ami_h2_available,
            h2=True,
        ),
    )
}
# What `--paths` runs when not given, in this order.
DEFAULT_PATHS = [name for name, p in PATHS.items() if not p.optional]
