"""`python -m proxy`: run the sidecar or the gateway (static config or control-plane mode)."""

from __future__ import annotations

import argparse
import asyncio
import logging
import sys
from dataclasses import replace
from pathlib import Path
from typing import Any

from meshctl.api.locality import Locality
from proxy.appprobe import ProbeSpec
from proxy.config import APP_PROTOCOLS, Address, ConfigError
from proxy.listener import Limits
from proxy.server import ProxyOptions

_DEFAULTS = Limits()


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m proxy", description=__doc__)
    p.add_argument("--config", type=Path, help="static mode: a snapshot YAML file (docs/proxy.md)")
    p.add_argument("--watch-config", action="store_true",
                   help="static mode: reload --config when the file changes (checked every "
                        "second); SIGHUP reloads it either way")
    p.add_argument("--control-plane", help="control-plane mode: HOST:PORT of meshctl serve's gRPC")
    p.add_argument("--mode", choices=("sidecar", "gateway"), default="sidecar")
    p.add_argument("--service", help="the service this sidecar fronts (control-plane mode)")
    p.add_argument("--namespace", default="default")
    p.add_argument("--labels", default="", help="comma-separated k=v labels, e.g. version=v1")
    p.add_argument("--name", help="proxy name shown in proxy-status (default service-version-port)")
    p.add_argument("--outbound", help="outbound listener HOST:PORT (app -> mesh)")
    p.add_argument("--inbound", help="inbound listener HOST:PORT (mesh -> app)")
    p.add_argument("--admin", help="admin listener HOST:PORT (default 127.0.0.1:15000)")
    p.add_argument("--gateway-listen", help="gateway listener HOST:PORT (--mode gateway)")
    p.add_argument("--gateway-cert", type=Path, metavar="PEM", action="append",
                   help="--mode gateway: serve HTTPS with this certificate chain (leaf first); "
                        "reloaded when the file changes; repeat (each with its --gateway-key, "
                        "in the same order) to serve each name with its own certificate, "
                        "the first for clients naming no other")
    p.add_argument("--gateway-key", type=Path, metavar="PEM", action="append",
                   help="the private key of --gateway-cert (the n-th key for the n-th)")
    p.add_argument("--gateway-client-ca", type=Path, metavar="PEM",
                   help="with --gateway-cert: ask HTTPS clients for a certificate and verify "
                        "it against this CA bundle (Istio's tls.mode MUTUAL); the verified "
                        "client goes upstream in x-forwarded-client-cert; reloaded when the "
                        "file changes")
    p.add_argument("--trusted-proxies", type=int, default=0, metavar="N",
                   help="--mode gateway: the number of load balancers in front of the gateway "
                        "that append to x-forwarded-for; the client is the Nth address from "
                        "its right (per-source rate limits, sourceIp hashing, "
                        "remoteIpBlocks). Default 0: the connection's peer")
    p.add_argument("--proxy-protocol", action="store_true",
                   help="--mode gateway: every connection opens with a PROXY protocol header "
                        "(v1 or v2, as an L4 load balancer's send-proxy sends it) naming the "
                        "client, which is then the client's address everywhere; a connection "
                        "without a valid one is closed")
    p.add_argument("--gateway-client-cert", choices=("required", "optional"), default=None,
                   help="with --gateway-client-ca: refuse a handshake without a client "
                        "certificate (required, the default) or take it without one (optional)")
    p.add_argument("--app", help="the local app HOST:PORT the inbound listener forwards to")
    p.add_argument("--app-probe", default="tcp", metavar="tcp|none|/PATH",
                   help="control-plane mode: how to tell the app serves, so its endpoint is "
                        "published only then: a TCP connect to --app (default), an HTTP GET "
                        "of /PATH answering 2xx/3xx, or none")
    p.add_argument("--app-probe-interval", type=float, default=1.0, metavar="SECONDS",
                   help="seconds between app probes once it serves (default 1; 0.2 until then)")
    p.add_argument("--app-protocol", choices=APP_PROTOCOLS, default=None,
                   help="what the local app speaks: auto (the client's protocol; HTTP/1.1 "
                        "once the app answers HTTP/2 in HTTP/1.1), http1 (HTTP/2 requests "
                        "are sent as HTTP/1.1), http2 (h2c only: HTTP/1.1 requests are "
                        "refused), tcp (opaque bytes: a database, a cache; reached per "
                        "connection); default: the static config's appProtocol, else auto")
    p.add_argument("--tcp-upstream", action="append", default=[],
                   metavar="LOCAL_HOST:PORT=SERVICE[:PORT]",
                   help="listen on LOCAL_HOST:PORT and send each connection to the TCP "
                        "service SERVICE over mTLS (plaintext when the mesh's mTLS is off; "
                        "repeatable), e.g. "
                        "127.0.0.1:15432=postgres:5432")
    p.add_argument("--locality", metavar="REGION[/ZONE[/SUBZONE]]",
                   help="where this proxy runs (control-plane mode; static mode: node.locality): "
                        "locality load balancing prefers endpoints near it")
    p.add_argument("--advertise", metavar="HOST",
                   help="host name the mesh uses to reach this proxy's inbound and admin "
                        "listeners (default: their host; a wildcard becomes this hostname)")
    p.add_argument("--identity-dir", type=Path,
                   help="static mode: key.pem, cert.pem, chain.pem, bundle.pem for mTLS")
    p.add_argument("--token-file", type=Path, help="bootstrap credential for the control plane")
    p.add_argument("--ca-file", type=Path, help="CA bundle to verify the control plane's TLS")
    p.add_argument("--access-log", choices=("on", "off"), help="override mesh.accessLog")
    p.add_argument("--drain-timeout", type=float, default=20.0)
    p.add_argument("--header-timeout", type=float, default=_DEFAULTS.header_timeout)
    p.add_argument("--idle-timeout", type=float, default=_DEFAULTS.idle_timeout)
    p.add_argument("--stream-idle-timeout", type=float, default=_DEFAULTS.stream_idle_timeout,
                   help="reset a request when no byte moved either way for this long "
                        f"(default {_DEFAULTS.stream_idle_timeout:g} s; 0: never)")
    p.add_argument("--max-connections", type=int, default=None,
                   help=f"client connections per listener (default {_DEFAULTS.max_connections}, "
                        "or fewer if the open-file limit cannot hold that many)")
    p.add_argument("--max-header-bytes", type=int, default=_DEFAULTS.max_header_bytes)
    p.add_argument("--max-request-line", type=int, default=_DEFAULTS.max_request_line)
    p.add_argument("--log-level", default="INFO")
    p.add_argument("--otlp-endpoint", default=None,
                   help="OTLP/gRPC trace collector, e.g. http://jaeger:4317 "
                        "(default $OTEL_EXPORTER_OTLP_ENDPOINT; none: no tracing)")
    p.add_argument("--dry-run", action="store_true",
                   help="validate the arguments (and the static config) and exit")
    return p


def options_from_args(args: argparse.Namespace) -> ProxyOptions:
    listeners: dict[str, Address] = {}
    for kind, value in (("outbound", args.outbound), ("inbound", args.inbound),
                        ("admin", args.admin), ("gateway", args.gateway_listen)):
        if value:
            listeners[kind] = Address.parse(value, f"--{kind}")
    for flag in ("max_request_line", "max_header_bytes", "header_timeout", "idle_timeout",
                 "max_connections", "drain_timeout"):
        value = getattr(args, flag)
        if value is not None and not value > 0:  # `not >` also refuses nan
            raise ConfigError(f"--{flag.replace('_', '-')} must be greater than 0, not {value}")
    if not args.stream_idle_timeout >= 0:  # also refuses nan
        raise ConfigError("--stream-idle-timeout must be 0 (off) or more, "
                          f"not {args.stream_idle_timeout}")
    limits = Limits(max_request_line=args.max_request_line,
                    max_header_bytes=args.max_header_bytes, header_timeout=args.header_timeout,
                    idle_timeout=args.idle_timeout,
                    stream_idle_timeout=args.stream_idle_timeout,
                    max_connections=_DEFAULTS.max_connections if args.max_connections is None
                    else args.max_connections)
    if args.locality is not None:
        if not args.control_plane:
            raise ConfigError("--locality is for control-plane mode; a static config says "
                              "node.locality")
        try:
            Locality.parse(args.locality)
        except ValueError as exc:
            raise ConfigError(f"--locality: {exc}") from None
    access = None if args.access_log is None else args.access_log == "on"
    from proxy.tcpupstream import TcpUpstreamSpec

    tcp_upstreams = tuple(TcpUpstreamSpec.parse(text) for text in args.tcp_upstream)
    if args.trusted_proxies and args.mode != "gateway":
        raise ConfigError("--trusted-proxies is for --mode gateway: a sidecar's callers are "
                          "the mesh's, and the gateway's x-forwarded-for reaches it already")
    if args.proxy_protocol and args.mode != "gateway":
        raise ConfigError("--proxy-protocol is for --mode gateway: a sidecar's callers are "
                          "the mesh's own proxies, which send no PROXY header")
    if not 0 <= args.trusted_proxies <= 32:
        raise ConfigError(f"--trusted-proxies must be 0 to 32, not {args.trusted_proxies}")
    return ProxyOptions(mode=args.mode, listeners=listeners, limits=limits,
                        drain_timeout=args.drain_timeout, access_log=access,
                        gateway_tls=_gateway_tls(args), app_probe=_app_probe(args),
                        app_protocol=args.app_protocol, tcp_upstreams=tcp_upstreams,
                        trusted_proxies=args.trusted_proxies,
                        proxy_protocol=args.proxy_protocol)


def _app_probe(args: argparse.Namespace) -> ProbeSpec | None:
    """How to probe the local app, or None when there is none to probe (or no registry)."""
    try:
        spec = ProbeSpec.parse(args.app_probe, args.app_probe_interval)
    except ValueError as exc:
        raise ConfigError(str(exc)) from None
    if not (args.app and args.control_plane and args.mode == "sidecar") or spec.kind == "none":
        return None
    Address.parse(args.app, "--app")  # a bad --app stops the start with a clear error
    if spec.kind == "http" and args.app_protocol in ("http2", "tcp"):
        raise ConfigError("--app-probe /PATH sends an HTTP/1.1 GET, which an --app-protocol "
                          f"{args.app_protocol} app cannot answer: probe it with tcp")
    return spec


def _gateway_tls(args: argparse.Namespace) -> Any:
    """The gateway's HTTPS certificate, loaded (so a bad file stops the start), or None."""
    if args.gateway_client_cert is not None and args.gateway_client_ca is None:
        raise ConfigError("--gateway-client-cert needs --gateway-client-ca")
    if args.gateway_cert is None and args.gateway_key is None:
        if args.gateway_client_ca is not None:
            raise ConfigError("--gateway-client-ca needs --gateway-cert and --gateway-key")
        return None
    if args.mode != "gateway":
        raise ConfigError("--gateway-cert and --gateway-key need --mode gateway")
    certs, keys = args.gateway_cert or [], args.gateway_key or []
    if len(certs) != len(keys):
        raise ConfigError("--gateway-cert and --gateway-key go together (one key per "
                          f"certificate, in the same order): got {len(certs)} --gateway-cert "
                          f"and {len(keys)} --gateway-key")
    repeated = sorted({str(c) for c in certs if certs.count(c) > 1})
    if repeated:
        # a pair serving nothing the first does not, and its expiry series exposed twice (a
        # duplicate sample to Prometheus)
        raise ConfigError(f"--gateway-cert {repeated[0]} is given more than once")
    from proxy.servingcert import CertificateError, ServingCertificate, ServingCertificates

    pairs = []
    for cert, key in zip(certs, keys, strict=True):
        try:
            pairs.append(ServingCertificate(cert, key, client_ca=args.gateway_client_ca,
                                            client_cert=args.gateway_client_cert or "required"))
        except CertificateError as exc:
            raise ConfigError(f"gateway certificate: {exc}") from None
    return ServingCertificates(pairs)


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=args.log_level.upper(),
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    # The HTTP/2 codec logs every header it (de)compresses at DEBUG: noise that would cost
    # more than the request itself.
    for name in ("hpack", "h2"):
        logging.getLogger(name).setLevel(max(logging.INFO, logging.getLogger().level))
    if not args.config and not args.control_plane:
        print("error: give --config FILE (static mode) or --control-plane HOST:PORT",
              file=sys.stderr)
        return 2
    try:
        options = options_from_args(args)
        if args.config:
            from proxy.static import load_static

            load_static(args.config)
    except (ConfigError, OSError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    if args.watch_config and not args.config:
        print("error: --watch-config needs --config (static mode)", file=sys.stderr)
        return 2
    if args.dry_run:
        if args.config:
            from proxy.run import check_static

            try:
                asyncio.run(check_static(options, args.config))
            except (ConfigError, OSError) as exc:
                print(f"error: {exc}", file=sys.stderr)
                return 2
        print("ok")
        return 0
    from proxy.fdlimit import fit_connection_limit, raise_open_file_limit
    from proxy.malloctune import fix_mmap_threshold

    fix_mmap_threshold()
    # Two proxying listeners at most (outbound and inbound, or gateway and outbound).
    fitted = fit_connection_limit(options.limits.max_connections, listeners=2,
                                  open_files=raise_open_file_limit(),
                                  chosen=args.max_connections is not None)
    options = replace(options, limits=replace(options.limits, max_connections=fitted))
    try:
        import uvloop

        uvloop.install()
    except ImportError:  # pragma: no cover - uvloop is a dependency on supported platforms
        pass
    from proxy.run import run

    try:
        return asyncio.run(run(args, options))
    except ConfigError as exc:  # the static file, refused by the apply (proxy.run.apply_static)
        print(f"error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
