"""``meshctl serve``: run the control plane (store, API, config distribution) in the foreground."""

from __future__ import annotations

import argparse
import asyncio
import logging
import re
import sys
from dataclasses import replace
from pathlib import Path
from typing import Any

from proxy.hostguard import host_name, is_address


def add_parser(subparsers: argparse._SubParsersAction[Any]) -> None:
    """Register the ``serve`` command."""
    p = subparsers.add_parser(
        "serve", help="run the control plane",
        description="Run the control plane: the YAML store (--config-dir), the HTTP API, the "
                    "gRPC config server sidecars connect to, and the reconcile loop.")
    p.add_argument("--config-dir", type=Path, default=Path("mesh"),
                   help="directory of resource YAML files (default ./mesh)")
    p.add_argument("--state-dir", type=Path, default=Path(".ami"),
                   help="API token and store state (default ./.ami)")
    p.add_argument("--listen", default="127.0.0.1:15080", help="HTTP API HOST:PORT")
    p.add_argument("--grpc-listen", default="127.0.0.1:15012", help="config gRPC HOST:PORT")
    p.add_argument("--certs-dir", type=Path, default=Path("certs"), help="mesh CA directory")
    p.add_argument("--grace", type=float, default=2.0,
                   help="seconds a disconnected sidecar stays an endpoint (default 2)")
    p.add_argument("--warmup", type=float, default=15.0,
                   help="after a restart, seconds the proxies known before (saved in the "
                        "state dir) stay endpoints while they reconnect (default 15)")
    p.add_argument("--api-tls", action="store_true",
                   help="serve the HTTP API over HTTPS with a certificate from the mesh CA "
                        "(renewed by itself; meshctl verifies it with certs/trust-bundle.pem)")
    p.add_argument("--api-cert", type=Path, default=None, metavar="PEM",
                   help="serve the HTTP API over HTTPS with this certificate chain instead "
                        "(reloaded when the file changes); needs --api-key")
    p.add_argument("--api-key", type=Path, default=None, metavar="PEM",
                   help="the private key of --api-cert")
    p.add_argument("--tls-name", action="append", default=[], metavar="NAME",
                   help="a DNS name or IP clients reach the control plane by, added to its "
                        "certificate (gRPC and --api-tls); repeatable (default: localhost, "
                        "127.0.0.1, the host name and the listen addresses)")
    p.add_argument("--allowed-host", action="append", default=[], metavar="NAME",
                   type=_allowed_host,
                   help="a host name browsers and clients reach the API by without a token "
                        "(token-less reads are answered only for IP addresses, localhost, "
                        "this host's name, the listen address and --tls-name, against DNS "
                        "rebinding); repeatable; '*' allows any name")
    p.add_argument("--open-reads", action="store_true",
                   help="allow reads without a token from other machines")
    p.add_argument("--max-api-connections", type=_at_least_one, default=None, metavar="N",
                   help="HTTP API connections open at once; past it new ones get 503 "
                        "(default 1024)")
    p.add_argument("--jwks-refresh", type=_positive_seconds, default=None, metavar="SECONDS",
                   help="how often each RequestAuthentication jwksUri is fetched again "
                        "(default 1200, as istiod); a failed fetch keeps the last good keys")
    p.add_argument("--scrape-interval", type=_positive_seconds, default=None, metavar="SECONDS",
                   help="how often the sidecars' metrics are scraped for stat, the dashboard "
                        "and canary analysis (default 2)")
    p.add_argument("--log-level", default="INFO")
    p.add_argument("--dry-run", action="store_true",
                   help="check the arguments and the config dir's resources, then exit")
    p.set_defaults(func=run_serve)


def _positive_seconds(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        value = 0.0
    if not 0 < value < float("inf"):
        raise argparse.ArgumentTypeError(f"must be a positive number of seconds, not {text!r}")
    return value


_HOST_NAME = re.compile(r"[a-z0-9_]([a-z0-9_-]*[a-z0-9_])?(\.[a-z0-9_]([a-z0-9_-]*[a-z0-9_])?)*")


def _allowed_host(text: str) -> str:
    """A name as a Host header carries it (an optional port is ignored), an address, or "*":
    anything else (a URL, a path) would be taken and never match."""
    name = host_name(text)
    if name == "*" or _HOST_NAME.fullmatch(name) or is_address(name):
        return text
    raise argparse.ArgumentTypeError(
        f"must be a host name as clients put it in the Host header (api.example.internal, "
        f"an IP address, or '*'), not {text!r}")


def _at_least_one(text: str) -> int:
    value = int(text) if text.strip().isdigit() else 0
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be a whole number of at least 1, not {text!r}")
    return value


def run_serve(args: argparse.Namespace) -> int:
    """Serve until SIGTERM/SIGINT."""
    from meshctl.controlplane.serve import ServeOptions, serve
    from proxy.fdlimit import raise_open_file_limit
    from proxy.servingcert import CertificateError

    logging.basicConfig(level=args.log_level.upper(), stream=sys.stderr,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    options = ServeOptions(config_dir=args.config_dir, state_dir=args.state_dir,
                           listen=args.listen, grpc_listen=args.grpc_listen,
                           certs_dir=args.certs_dir, grace=args.grace, warmup=args.warmup,
                           open_reads=args.open_reads, api_tls=args.api_tls,
                           api_cert=args.api_cert, api_key=args.api_key,
                           tls_names=tuple(args.tls_name),
                           allowed_hosts=tuple(args.allowed_host))
    if (args.api_cert is None) != (args.api_key is None):
        print("error: --api-cert and --api-key go together", file=sys.stderr)
        return 2
    if args.max_api_connections is not None:
        options = replace(options, max_api_connections=args.max_api_connections)
    if args.jwks_refresh is not None:
        options = replace(options, jwks_refresh=args.jwks_refresh)
    if args.scrape_interval is not None:
        options = replace(options, scrape_interval=args.scrape_interval)
    if args.dry_run:
        return _dry_run(args)
    raise_open_file_limit()  # a stream and a scrape connection per sidecar; 1024 is too few
    try:
        return asyncio.run(serve(options))
    except (OSError, CertificateError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1


def _dry_run(args: argparse.Namespace) -> int:
    """Validate listen addresses and, if the config dir exists, every resource in it."""
    from meshctl.api.errors import ValidationError
    from meshctl.api.resources import load_path, validate_set

    for flag, value in (("--listen", args.listen), ("--grpc-listen", args.grpc_listen)):
        _, sep, port = value.rpartition(":")
        if not sep or not port.isdigit() or not 0 <= int(port) <= 65535:
            print(f"error: {flag}: expected HOST:PORT, got {value!r}", file=sys.stderr)
            return 2
    if args.config_dir.exists():
        try:
            issues = validate_set(load_path(args.config_dir))
        except ValidationError as exc:
            print(f"error: {exc}", file=sys.stderr)
            return 1
        if issues:
            print("\n".join(f"error: {i}" for i in issues), file=sys.stderr)
            return 1
    print("ok")
    return 0
