"""What listens at an address that did not answer as the control plane's API: its gRPC
config-stream port (HTTP/2 only, TLS or not), an HTTPS server asked in plain HTTP, or a
plain-HTTP one asked over TLS. Asked only after a request failed, to say what to use instead."""

from __future__ import annotations

import contextlib
import socket
import ssl
import urllib.parse

from meshctl.client import DEFAULT_CONTROL_PLANE

GRPC, TLS, PLAIN_HTTP = "grpc", "tls", "http"
# The HTTP/2 connection preface and an empty SETTINGS frame: an HTTP/2-only server (gRPC)
# answers with its own SETTINGS frame (type 4); an HTTP/1 server with "HTTP/1.x 400".
_H2_PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n" + b"\x00\x00\x00\x04\x00\x00\x00\x00\x00"


def listener_kind(host: str, port: int, timeout: float = 2.0) -> str | None:
    """GRPC, TLS (HTTPS, not HTTP/2 only), PLAIN_HTTP, or None when it cannot be told."""
    with contextlib.suppress(OSError, ValueError):
        if _selected_protocol(host, port, ["h2", "http/1.1"], timeout) != "h2":
            return TLS
        # h2 is also what an HTTPS reverse proxy in front of the API picks (nginx, an
        # ingress); only a server that will not speak HTTP/1.1 is gRPC
        with contextlib.suppress(OSError, ValueError):
            if _selected_protocol(host, port, ["http/1.1"], timeout) == "http/1.1":
                return TLS
        return GRPC
    with contextlib.suppress(OSError):
        with socket.create_connection((host, port), timeout) as raw:
            raw.sendall(_H2_PREFACE)
            head = raw.recv(9)
        if len(head) >= 4 and head[3] == 4:
            return GRPC
        if head.startswith(b"HTTP/"):
            return PLAIN_HTTP
    return None


def _selected_protocol(host: str, port: int, offered: list[str], timeout: float) -> str | None:
    """The ALPN protocol a TLS server picks of ``offered`` (None: none); OSError without TLS."""
    ctx = ssl.create_default_context()
    ctx.check_hostname, ctx.verify_mode = False, ssl.CERT_NONE  # only looking: no data sent
    ctx.set_alpn_protocols(offered)
    with socket.create_connection((host, port), timeout) as raw, \
            ctx.wrap_socket(raw, server_hostname=host) as tls:
        return tls.selected_alpn_protocol()


def address_hint(url: str) -> str:
    """``; <what is wrong and what to use>`` for the control plane URL ``url``, or ""."""
    parts = urllib.parse.urlsplit(url)
    if parts.hostname is None:
        return ""
    try:
        port = parts.port or (443 if parts.scheme == "https" else 80)
    except ValueError:
        return ""
    kind = listener_kind(parts.hostname, port)
    where = parts.netloc
    if kind == GRPC:
        return (f"; {where} looks like the control plane's gRPC config-stream port "
                "(--grpc-listen, HTTP/2 for the sidecars), not its API: the API is on its "
                f"--listen address (default {DEFAULT_CONTROL_PLANE})")
    if kind == TLS and parts.scheme == "http":
        return f"; the server at {where} speaks HTTPS (--api-tls): use https://{where}"
    if kind == PLAIN_HTTP and parts.scheme == "https":
        return f"; the server at {where} speaks plain HTTP, not HTTPS: use http://{where}"
    return ""
