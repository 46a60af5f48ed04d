"""`meshctl demo up|status|down`: run the Bookinfo mesh as local processes."""

from __future__ import annotations

import argparse
import asyncio
import sys
from pathlib import Path
from typing import Any

from meshctl.demo import control, setup
from meshctl.demo.runner import DemoOptions, up
from meshctl.demo.supervisor import Timing
from meshctl.demo.topology import (
    DEFAULT_API_PORT,
    DEFAULT_BASE_PORT,
    DEFAULT_GATEWAY_PORT,
    DEFAULT_GRPC_PORT,
    Ports,
)


def add_parser(subparsers: argparse._SubParsersAction[Any]) -> None:
    """Register `demo up`, `demo status` and `demo down`."""
    demo = subparsers.add_parser(
        "demo", help="run the Bookinfo demo mesh locally",
        description="Run Bookinfo in the mesh as local processes: control plane, gateway, six "
                    "app instances each behind its sidecar, and a little traffic. Files go to "
                    "./.ami/demo/ (one <process>.log each, state.json).")
    sub = demo.add_subparsers(dest="demo_command", required=True, metavar="COMMAND")
    start = sub.add_parser("up", help="start the demo (foreground; Ctrl-C stops it)")
    start.add_argument("--detach", action="store_true",
                       help="run in the background; return once every proxy is ready and synced")
    start.add_argument("--gateway-port", type=int, default=DEFAULT_GATEWAY_PORT,
                       help=f"gateway port on 127.0.0.1 ({DEFAULT_GATEWAY_PORT})")
    start.add_argument("--base-port", type=int, default=DEFAULT_BASE_PORT,
                       help=f"first port of the block apps and sidecars use ({DEFAULT_BASE_PORT}"
                            f"-{DEFAULT_BASE_PORT + 61})")
    start.add_argument("--api-port", type=int, default=DEFAULT_API_PORT,
                       help=f"control plane HTTP API and dashboard ({DEFAULT_API_PORT})")
    start.add_argument("--grpc-port", type=int, default=DEFAULT_GRPC_PORT,
                       help=f"control plane config stream ({DEFAULT_GRPC_PORT})")
    start.add_argument("--certs-dir", type=Path, default=Path("certs"),
                       help="mesh CA directory, created if missing (certs)")
    start_set = start.add_mutually_exclusive_group()
    start_set.add_argument("--routes", type=Path, default=setup.DEFAULT_ROUTES,
                           help="directory of resources the control plane starts with "
                                "(sample_apps/bookinfo/routes/default)")
    start_set.add_argument("--istio", dest="routes", action="store_const",
                           const=setup.ISTIO_ROUTES,
                           help="start from Istio's YAML instead (sample_apps/bookinfo/istio/"
                                "default: DestinationRules, VirtualServices), to follow Istio's "
                                "Bookinfo tasks with Istio's files")
    start.add_argument("--no-traffic", action="store_true", help="do not generate traffic")
    start.add_argument("--timeout", type=float, default=30.0,
                       help="seconds each process (and the sync) may take to be ready (30)")
    start.set_defaults(func=run_up)
    sub.add_parser("status", help="show each demo process: pid, alive, ports, log") \
        .set_defaults(func=run_status)
    sub.add_parser("down", help="stop the demo and check nothing is left") \
        .set_defaults(func=run_down)


def options(args: argparse.Namespace) -> DemoOptions:
    ports = Ports(base=args.base_port, gateway=args.gateway_port, api=args.api_port,
                  grpc=args.grpc_port)
    return DemoOptions(workdir=Path.cwd(), certs=args.certs_dir.resolve(), ports=ports,
                       traffic=not args.no_traffic, timing=Timing(ready_timeout=args.timeout),
                       routes=args.routes.resolve())


def run_up(args: argparse.Namespace) -> int:
    """Foreground: run until Ctrl-C. `--detach`: start in the background and wait for ready."""
    opts = options(args)
    if args.detach:
        forwarded = ["--gateway-port", str(args.gateway_port), "--base-port", str(args.base_port),
                     "--api-port", str(args.api_port), "--grpc-port", str(args.grpc_port),
                     "--certs-dir", str(opts.certs), "--timeout", str(args.timeout),
                     "--routes", str(opts.routes)]
        if args.no_traffic:
            forwarded.append("--no-traffic")
        return control.up_detached(opts, forwarded, sys.stdout, timeout=2 * args.timeout + 10)
    return asyncio.run(up(opts, sys.stdout))


def run_status(_args: argparse.Namespace) -> int:
    return control.status(DemoOptions(Path.cwd(), Path("certs")).run_dir, sys.stdout)


def run_down(_args: argparse.Namespace) -> int:
    return control.down(DemoOptions(Path.cwd(), Path("certs")).run_dir, sys.stdout)
