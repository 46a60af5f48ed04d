"""haproxy config for the haproxy reference proxy (one thread, HTTP mode, server keep-alive)."""

from __future__ import annotations

from pathlib import Path

from bench.tools import binary


def haproxy_conf(listen_port: int, upstream_port: int) -> str:
    """client -> haproxy -> backend with connection reuse towards the backend."""
    return f"""global
    nbthread 1
    maxconn 4096
defaults
    mode http
    option http-keep-alive
    http-reuse always
    timeout connect 5s
    timeout client 60s
    timeout server 60s
    timeout http-keep-alive 60s
frontend fe
    bind 127.0.0.1:{listen_port}
    default_backend be
backend be
    server backend 127.0.0.1:{upstream_port}
"""


def haproxy_argv(conf: Path) -> tuple[str, ...]:
    """Foreground haproxy (-db) on `conf`."""
    return (binary("haproxy"), "-db", "-f", str(conf))
