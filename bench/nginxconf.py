"""nginx config files for the backend and the nginx reference proxies (one worker each)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from bench.certs import SERVER_NAME, CertPaths
from bench.tools import binary

BODY_SIZE = 1024
# The fixed 1 KiB response body every path returns.
BODY = "x" * BODY_SIZE


@dataclass(frozen=True, slots=True)
class NginxTLS:
    """mTLS settings: as a server (verify clients) or towards an upstream (present a cert)."""

    certs: CertPaths


def _main_block(prefix: Path, name: str, http_body: str) -> str:
    # One worker, everything under the run dir, so a non-root run needs no system paths.
    temp = "\n".join(
        f"    {kind}_temp_path {prefix}/{name}-{kind}-tmp;"
        for kind in ("client_body", "proxy", "fastcgi", "uwsgi", "scgi")
    )
    return f"""worker_processes 1;
pid {prefix}/{name}.pid;
error_log {prefix}/{name}.error.log warn;
events {{ worker_connections 4096; multi_accept on; }}
http {{
    access_log off;
    keepalive_timeout 75s;
    keepalive_requests 1000000;
{temp}
{http_body}
}}
"""


def backend_conf(prefix: Path, port: int, h2_port: int | None = None) -> str:
    """The backend: a keep-alive server returning the fixed 1 KiB body.

    With `h2_port`, the same worker also serves the body over HTTP/2 cleartext (h2c, prior
    knowledge only: nginx 1.22 answers nothing else on a plaintext `http2` listener).
    """
    location = f"""        location / {{
            default_type text/plain;
            return 200 "{BODY}";
        }}"""
    body = f"""    server {{
        listen 127.0.0.1:{port} reuseport backlog=4096;
{location}
    }}"""
    if h2_port is not None:
        body += f"""
    server {{
        listen 127.0.0.1:{h2_port} http2 reuseport backlog=4096;
{location}
    }}"""
    return _main_block(prefix, "backend", body)


def proxy_conf(
    prefix: Path,
    name: str,
    listen_port: int,
    upstream_port: int,
    *,
    listen_tls: NginxTLS | None = None,
    upstream_tls: NginxTLS | None = None,
) -> str:
    """A reverse proxy with upstream keep-alive; optional mTLS on either side."""
    listen = f"listen 127.0.0.1:{listen_port} backlog=4096"
    if listen_tls is not None:
        listen += " ssl"
    server_tls = _server_tls(listen_tls, name)
    scheme = "https" if upstream_tls is not None else "http"
    upstream_ssl = _upstream_tls(upstream_tls, "proxy")
    body = f"""    upstream up {{
        server 127.0.0.1:{upstream_port};
        keepalive 64;
        keepalive_requests 1000000;
    }}
    server {{
        {listen};{server_tls}
        location / {{
            proxy_pass {scheme}://up;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
            proxy_buffering on;{upstream_ssl}
        }}
    }}"""
    return _main_block(prefix, name, body)


def grpc_proxy_conf(
    prefix: Path,
    name: str,
    listen_port: int,
    upstream_port: int,
    *,
    listen_tls: NginxTLS | None = None,
    upstream_tls: NginxTLS | None = None,
) -> str:
    """An HTTP/2 reverse proxy: `listen ... http2`, `grpc_pass` to an HTTP/2 upstream.

    `proxy_pass` speaks HTTP/1.x upstream only; nginx's one HTTP/2 client is the gRPC module,
    which forwards any request and response (it checks no gRPC framing), so a plain GET
    returning the 1 KiB body goes through it as HTTP/2 on both sides, with upstream keep-alive.
    With `listen_tls` the listener is TLS with ALPN h2 and verifies clients; with
    `upstream_tls` the upstream connection is `grpcs://` (TLS, ALPN h2) with a client cert.
    """
    listen = f"listen 127.0.0.1:{listen_port}"
    listen += " ssl http2 backlog=4096" if listen_tls is not None else " http2 backlog=4096"
    server_tls = _server_tls(listen_tls, name)
    scheme = "grpcs" if upstream_tls is not None else "grpc"
    upstream_ssl = _upstream_tls(upstream_tls, "grpc")
    body = f"""    upstream up {{
        server 127.0.0.1:{upstream_port};
        keepalive 64;
        keepalive_requests 1000000;
    }}
    server {{
        {listen};{server_tls}
        location / {{
            grpc_pass {scheme}://up;{upstream_ssl}
        }}
    }}"""
    return _main_block(prefix, name, body)


def _server_tls(listen_tls: NginxTLS | None, name: str) -> str:
    """A TLS listener's directives: TLS 1.3, client certificates verified."""
    if listen_tls is None:
        return ""
    c = listen_tls.certs
    return f"""
        ssl_certificate {c.server_cert};
        ssl_certificate_key {c.server_key};
        ssl_client_certificate {c.ca};
        ssl_verify_client on;
        ssl_protocols TLSv1.3;
        ssl_session_cache shared:{name}:1m;"""


def _upstream_tls(upstream_tls: NginxTLS | None, module: str) -> str:
    """mTLS to the upstream for `proxy_pass` (`module` "proxy") or `grpc_pass` ("grpc")."""
    if upstream_tls is None:
        return ""
    c = upstream_tls.certs
    return f"""
            {module}_ssl_certificate {c.client_cert};
            {module}_ssl_certificate_key {c.client_key};
            {module}_ssl_trusted_certificate {c.ca};
            {module}_ssl_verify on;
            {module}_ssl_name {SERVER_NAME};
            {module}_ssl_protocols TLSv1.3;
            {module}_ssl_session_reuse on;"""


def nginx_argv(prefix: Path, conf: Path) -> tuple[str, ...]:
    """Foreground nginx (master + one worker) on `conf`."""
    return (binary("nginx"), "-p", str(prefix), "-c", str(conf), "-g", "daemon off;")
